"""The per-partition pipeline after the join (DESIGN §5-§7): ``FeedbackMonitor`` runs the
recalibration policy, the drift detectors and their alert lifecycle, conformal thresholds and
the posteriors over the join's outputs; both runtimes drive it."""

from worker.core.pipeline.monitor import FeedbackMonitor
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.pipeline.monitor_outputs import MonitorOutputs

__all__ = ["FeedbackMonitor", "MonitorConfig", "MonitorOutputs"]
