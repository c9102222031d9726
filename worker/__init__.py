"""recal: streaming online recalibration of click-prediction scores."""

__version__ = "0.1.0"
