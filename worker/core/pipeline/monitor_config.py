"""The hyper-parameters of ``FeedbackStage``, validated once at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from worker.core.alerts import KINDS, SEVERITIES, AlertLifecycle
from worker.core.checks import check_int
from worker.core.drift import (
    BaseRateShift,
    CalibrationCusum,
    EceHigh,
    FeedbackStall,
    LateClickRate,
    ScoreShift,
)
from worker.core.errors import ConfigError
from worker.core.posteriors import PosteriorStore

# Every event of a model feeds two scopes (its segment and, when the global calibrator serves
# it, the global scope): twice the per-detector ARL0 keeps each alert kind at <= 1 false alarm
# per 10^6 events of the model (DESIGN §7).
_SCOPE_ARL0 = 2e6

#: The component behind each keyword-argument knob of ``MonitorConfig``: the constructor that
#: validates it here, and whose signature ``worker.settings`` flattens into one setting per
#: argument, so a new detector parameter is configurable with no second declaration.
COMPONENTS: tuple[tuple[str, type], ...] = (
    ("calibration_cusum", CalibrationCusum),
    ("base_rate", BaseRateShift),
    ("score_shift", ScoreShift),
    ("ece_high", EceHigh),
    ("stall", FeedbackStall),
    ("late_clicks", LateClickRate),
    ("alerts", AlertLifecycle),
    ("posteriors", PosteriorStore),
)
#: Component arguments the monitor fixes (clicks are always tested against the served
#: probability); they are not settings.
PINNED: dict[str, dict[str, Any]] = {"base_rate": {"reference": "expected"}}


def _kwargs(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name} must be a mapping of keyword arguments; got {value!r}")
    return dict(value)


def _half_life(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(float(value)) and float(value) > 0
    ):
        raise ConfigError(f"{name} must be a finite number > 0 or None; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MonitorConfig:
    """Every knob of ``FeedbackStage``; invalid values raise ``ConfigError`` at once.

    Cadence:

    - ``check_every``: alert conditions of a scope are evaluated every that many of its
      feedback events (calibration_drift, base_rate_shift, ece_high), impressions
      (score_shift) or clicks (late_clicks_high); a detector alarm is reported at once.
    - ``quiet_events``: a change detector's condition (calibration_drift, base_rate_shift,
      score_shift, late_clicks_high) holds while its latest alarm is less than that many
      of the scope's events old; the alert resolves after the lifecycle's
      ``resolve_events`` clear evaluations after that.

    Scopes: ``segment_scopes`` turns the per-segment detectors on; at most ``max_segments``
    segments per model get their own (later ones are watched through the global scope only,
    so state stays bounded).

    Detector and component keyword arguments (validated by building each once):
    ``calibration_cusum`` (``CalibrationCusum``), ``base_rate`` (``BaseRateShift``; its
    ``reference`` is always ``"expected"``: clicks against the served probability),
    ``score_shift`` (``ScoreShift``), ``ece_high`` (``EceHigh``), ``stall``
    (``FeedbackStall``), ``late_clicks`` (``LateClickRate``), ``alerts``
    (``AlertLifecycle``), ``posteriors`` (``PosteriorStore``). The CUSUM-type detectors
    default to ``arl0 = 2e6`` per scope (every event feeds up to two scopes).

    Others: ``ece_half_life_ms`` (event-time decay of the ECE accumulators),
    ``coverage_half_life_ms`` (of the conformal coverage trackers), ``conformal_alpha``,
    ``conformal_buffer`` (recent holdout events kept per scope for ``qhat``),
    ``conformal_min_n`` (events since a version's training start needed to fit its ``qhat``
    on them alone), ``stall_min_arrival_share`` (a stall also needs impressions still
    *arriving*: their expected clicks in the window at least this share of the matured
    ones), ``pipeline_model_id`` (the ``model_id`` of ``late_clicks_high``: clicks carry no
    model), ``severity`` (per alert kind).

    >>> MonitorConfig(check_every=500).check_every
    500
    >>> MonitorConfig(calibration_cusum={"arl0": 0})
    Traceback (most recent call last):
    ...
    worker.core.errors.ConfigError: arl0 must be a finite number in (1.0, inf); got 0
    >>> MonitorConfig.from_dict(MonitorConfig().to_dict()) == MonitorConfig()
    True
    """

    check_every: int = 1000
    quiet_events: int = 2000
    segment_scopes: bool = True
    max_segments: int = 1000
    calibration_cusum: Mapping[str, Any] = field(default_factory=lambda: {"arl0": _SCOPE_ARL0})
    base_rate: Mapping[str, Any] = field(default_factory=lambda: {"arl0": _SCOPE_ARL0})
    score_shift: Mapping[str, Any] = field(default_factory=lambda: {"arl0": _SCOPE_ARL0})
    ece_high: Mapping[str, Any] = field(default_factory=dict)
    ece_half_life_ms: float | None = 3_600_000.0
    stall: Mapping[str, Any] = field(default_factory=dict)
    stall_min_arrival_share: float = 0.5
    late_clicks: Mapping[str, Any] = field(default_factory=dict)
    alerts: Mapping[str, Any] = field(default_factory=dict)
    posteriors: Mapping[str, Any] = field(default_factory=dict)
    conformal_alpha: float = 0.1
    conformal_buffer: int = 2000
    conformal_min_n: int = 200
    coverage_half_life_ms: float | None = 3_600_000.0
    pipeline_model_id: str = "*"
    severity: Mapping[str, str] = field(
        default_factory=lambda: {"feedback_stall": "critical"}
    )

    def __post_init__(self) -> None:
        check_int("check_every", self.check_every, 1)
        check_int("quiet_events", self.quiet_events, 1)
        check_int("max_segments", self.max_segments, 0)
        check_int("conformal_buffer", self.conformal_buffer, 1)
        check_int("conformal_min_n", self.conformal_min_n, 1)
        if not isinstance(self.segment_scopes, bool):
            raise ConfigError(f"segment_scopes must be a bool; got {self.segment_scopes!r}")
        for name, cls in COMPONENTS:
            kwargs = _kwargs(name, getattr(self, name))
            for key, pinned in PINNED.get(name, {}).items():
                if kwargs.get(key, pinned) != pinned:
                    raise ConfigError(f"{name} {key} must be {pinned!r} in the monitor")
            try:
                cls(**kwargs)
            except TypeError as exc:
                raise ConfigError(f"{name}: {exc}") from exc
            object.__setattr__(self, name, kwargs)
        object.__setattr__(
            self, "ece_half_life_ms", _half_life("ece_half_life_ms", self.ece_half_life_ms)
        )
        object.__setattr__(
            self,
            "coverage_half_life_ms",
            _half_life("coverage_half_life_ms", self.coverage_half_life_ms),
        )
        share = self.stall_min_arrival_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not (
            0.0 <= float(share) <= 1.0
        ):
            raise ConfigError(f"stall_min_arrival_share must be in [0, 1]; got {share!r}")
        alpha = self.conformal_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            0.0 < float(alpha) < 1.0
        ):
            raise ConfigError(f"conformal_alpha must be a number in (0, 1); got {alpha!r}")
        pid = self.pipeline_model_id
        if not isinstance(pid, str) or not 1 <= len(pid) <= 128:
            raise ConfigError(f"pipeline_model_id must be a string of 1-128 chars; got {pid!r}")
        sev = _kwargs("severity", self.severity)
        for kind, level in sev.items():
            if kind not in KINDS or level not in SEVERITIES:
                raise ConfigError(
                    f"severity must map alert kinds {KINDS} to {SEVERITIES}; got {kind!r}: "
                    f"{level!r}"
                )
        object.__setattr__(self, "severity", sev)

    def severity_of(self, kind: str) -> str:
        """The severity of alerts of ``kind`` (``warning`` unless configured)."""
        return self.severity.get(kind, "warning")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready knobs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = dict(v) if isinstance(v, Mapping) else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown monitor settings: {unknown}")
        return cls(**data)
