"""Per-(model, scope) detector state of the feedback stage (private to the pipeline; the
policy's per-scope fitting state is `policy._scope_state.ScopeState`)."""

from __future__ import annotations

from typing import Any

from worker.core.conformal import CoverageTracker
from worker.core.drift import BaseRateShift, CalibrationCusum, ScoreShift
from worker.core.errors import StateError
from worker.core.metrics import OnlineCalibration
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.sketches.event_ring import EventRing

# Coverage is counted in batches: CoverageTracker.update goes through numpy (tens of
# microseconds for one event), update_many on a batch costs about the same.
COVERAGE_BATCH = 256


class ScopeDetectors:
    """The detectors, accumulators and buffers of one (model, scope).

    ``served`` identifies the version whose probabilities the detectors are testing
    (``(scope of the version, version)``, or None for identity): when it changes the
    change detectors are reset, since their null hypothesis is about that calibrator.
    ``*_alarm_n`` are the scope's event counts at the latest alarm of each change detector
    (feedback events for calibration and base rate, impressions for score shift), from
    which the monitor decides whether the alert condition still holds.
    """

    __slots__ = (
        "base_alarm_n",
        "base_rate",
        "calib",
        "cov_batch",
        "coverage",
        "cusum",
        "cusum_alarm_n",
        "directions",
        "n_fb",
        "n_imp",
        "ring",
        "served",
        "shift",
        "shift_alarm_n",
    )

    def __init__(self, config: MonitorConfig) -> None:
        self.cusum = CalibrationCusum(**config.calibration_cusum)
        self.base_rate = BaseRateShift(**config.base_rate)
        self.shift = ScoreShift(**config.score_shift)
        self.calib = OnlineCalibration(half_life_ms=config.ece_half_life_ms)
        self.coverage = CoverageTracker(config.coverage_half_life_ms)
        # Pending coverage events: (p, y, qhat, ts).
        self.cov_batch: list[tuple[float, int, float, int]] = []
        # Recent holdout events for the conformal qhat of new versions.
        self.ring = EventRing(config.conformal_buffer)
        self.served: tuple[str, int] | None = None
        self.n_fb = 0
        self.n_imp = 0
        self.cusum_alarm_n: int | None = None
        self.base_alarm_n: int | None = None
        self.shift_alarm_n: int | None = None
        # Alert kind -> direction of the latest alarm (the detectors forget it on reset).
        self.directions: dict[str, str | None] = {}

    # ------------------------------------------------------------------ updates

    def add_coverage(self, p: float, y: int, qhat: float, ts: int) -> None:
        self.cov_batch.append((p, y, qhat, ts))
        if len(self.cov_batch) >= COVERAGE_BATCH:
            self.flush_coverage(self.coverage)

    def flush_coverage(self, tracker: CoverageTracker) -> None:
        """Move the pending coverage events into ``tracker`` (values the stage computed
        itself: no re-validation)."""
        if not self.cov_batch:
            return
        p, y, q, ts = zip(*self.cov_batch, strict=True)
        tracker.count_trusted(list(p), list(y), list(q), list(ts))
        if tracker is self.coverage:
            self.cov_batch = []

    def coverage_view(self) -> CoverageTracker:
        """The tracker with the pending events counted, without changing the state."""
        if not self.cov_batch:
            return self.coverage
        view = CoverageTracker.from_dict(self.coverage.to_dict())
        self.flush_coverage(view)
        return view

    def reset_change_detectors(self) -> None:
        """The served calibrator changed: test the new one from scratch."""
        self.cusum.reset()
        self.base_rate.reset()

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "cusum": self.cusum.to_dict(),
            "base_rate": self.base_rate.to_dict(),
            "shift": self.shift.to_dict(),
            "calib": self.calib.to_dict(),
            "coverage": self.coverage.to_dict(),
            "cov_batch": [list(e) for e in self.cov_batch],
            "ring": self.ring.to_dict(),
            "served": None if self.served is None else list(self.served),
            "n_fb": self.n_fb,
            "n_imp": self.n_imp,
            "cusum_alarm_n": self.cusum_alarm_n,
            "base_alarm_n": self.base_alarm_n,
            "shift_alarm_n": self.shift_alarm_n,
            "directions": dict(self.directions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: MonitorConfig) -> ScopeDetectors:
        state = cls(config)
        try:
            state.cusum = CalibrationCusum.from_dict(data["cusum"])
            state.base_rate = BaseRateShift.from_dict(data["base_rate"])
            state.shift = ScoreShift.from_dict(data["shift"])
            state.calib = OnlineCalibration.from_dict(data["calib"])
            state.coverage = CoverageTracker.from_dict(data["coverage"])
            state.cov_batch = [
                (float(p), int(y), float(q), int(t)) for p, y, q, t in data["cov_batch"]
            ]
            state.ring = EventRing.from_dict(data["ring"])
            served = data["served"]
            state.served = None if served is None else (str(served[0]), int(served[1]))
            state.n_fb = int(data["n_fb"])
            state.n_imp = int(data["n_imp"])
            for name in ("cusum_alarm_n", "base_alarm_n", "shift_alarm_n"):
                v = data[name]
                setattr(state, name, None if v is None else int(v))
            state.directions = {str(k): v for k, v in data["directions"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed monitor scope state: {exc}") from exc
        return state
