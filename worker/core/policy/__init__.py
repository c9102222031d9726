"""The recalibration policy (DESIGN §5 "Policy"): when to refit and what to publish."""

from worker.core.policy.policy_config import PolicyConfig
from worker.core.policy.recalibration_policy import RecalibrationPolicy

__all__ = ["PolicyConfig", "RecalibrationPolicy"]
