"""One partition's core (DESIGN §2): ``Pipeline`` runs the attribution join and, after it,
``FeedbackStage`` (the recalibration policy, the drift detectors and their alert lifecycle,
conformal thresholds and the posteriors) over ``InputBatch`` es; both runtimes drive it and
publish its ``Outputs``."""

from worker.core.pipeline.feedback_stage import FeedbackStage
from worker.core.pipeline.input_batch import InputBatch
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.pipeline.outputs import Outputs, Rejection
from worker.core.pipeline.pipeline import Pipeline, PipelineConfig

__all__ = [
    "FeedbackStage",
    "InputBatch",
    "MonitorConfig",
    "Outputs",
    "Pipeline",
    "PipelineConfig",
    "Rejection",
]
