"""Alert lifecycle: detector signals to firing/resolved alert records (DESIGN §3, §7)."""

from worker.core.alerts.alert_lifecycle import (
    KINDS,
    SEVERITIES,
    AlertLifecycle,
    fingerprint,
)

__all__ = ["KINDS", "SEVERITIES", "AlertLifecycle", "fingerprint"]
