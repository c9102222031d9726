"""Alert records with Prometheus-like hysteresis from detector signals (DESIGN §3, §7)."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from worker.core.checks import timestamp
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.records.timefmt import iso_utc_ms

KINDS = (
    "calibration_drift",
    "ece_high",
    "base_rate_shift",
    "score_shift",
    "feedback_stall",
    "late_clicks_high",
)
SEVERITIES = ("warning", "critical")
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_PARAMS = ("for_events", "for_ms", "resolve_events", "resolve_ms")
_SCOPE = re.compile(r"^(global|segment:.+|user:.+)$", re.DOTALL)
_ISO_UTC = re.compile(
    r"^([0-9]{4}|[+-][0-9]{6,})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|\+00:00)$"
)
# The key of the lifecycle facts this class adds to ``details``; callers may not use it.
LIFECYCLE_KEY = "lifecycle"

_SUMMARIES = {
    "calibration_drift": "Calibration drift",
    "ece_high": "ECE significantly above its threshold",
    "base_rate_shift": "Click base rate shifted",
    "score_shift": "Score distribution shifted",
    "feedback_stall": "Feedback stalled: impressions flow but no labels arrive",
    "late_clicks_high": "Late clicks above threshold: attribution window too short",
}


def fingerprint(kind: str, model_id: str, scope: str) -> str:
    """Stable id of an alert series: the first 16 hex digits of sha256("kind|model_id|scope").

    >>> fingerprint("ece_high", "default", "global")
    '8e0c00a47b2f89b4'
    """
    return hashlib.sha256(f"{kind}|{model_id}|{scope}".encode()).hexdigest()[:16]


class _Series:
    """Lifecycle state of one fingerprint."""

    __slots__ = (
        "active_since",
        "active_streak",
        "clear_since",
        "clear_streak",
        "fired_ts",
        "kind",
        "last_ts",
        "model_id",
        "observations",
        "peak_severity",
        "record",
        "scope",
        "seq",
    )

    def __init__(self, kind: str, model_id: str, scope: str) -> None:
        self.kind = kind
        self.model_id = model_id
        self.scope = scope
        self.active_streak = 0
        self.active_since: int | None = None
        self.clear_streak = 0
        self.clear_since: int | None = None
        self.fired_ts: int | None = None  # of the current or last episode
        self.seq = 0  # episodes fired at the same fired_ts, for unique alert ids
        self.record: dict[str, Any] | None = None  # the live firing record
        self.peak_severity: str | None = None
        self.observations = 0  # observations in the current episode
        self.last_ts = 0

    @property
    def firing(self) -> bool:
        return self.record is not None

    def to_dict(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Series:
        s = cls(data["kind"], data["model_id"], data["scope"])
        for name in cls.__slots__:
            setattr(s, name, copy.deepcopy(data[name]))
        return s


class AlertLifecycle:
    """Turns detector signals into DESIGN §3 alert events, once per episode, with hysteresis.

    Every evaluation of a detector calls ``observe`` with whether its condition holds. Like a
    Prometheus rule with ``for:``, a condition must hold for ``for_events`` consecutive
    observations **and** span ``for_ms`` of event time (from its first active observation)
    before the alert fires; a pending condition that clears starts over. A firing alert
    resolves once the condition has been clear for ``resolve_events`` consecutive
    observations **and** ``resolve_ms`` of event time (an active observation in between
    restarts that count). Exactly one ``firing`` event starts an episode and one ``resolved``
    event ends it; re-signals during an episode emit nothing (they refresh what ``firing()``
    shows). ``per_kind`` overrides the four parameters per kind, e.g.
    ``{"feedback_stall": {"for_ms": 300_000}}``.

    Identity: ``fingerprint`` = sha256 prefix of "kind|model_id|scope" (the topic key);
    ``alert_id`` = ``<fingerprint>-<fired event ts>`` (plus ``-<k>`` in the corner case of
    several episodes firing at one event time). Every field is a function of the observed
    arguments, so a replay yields the same events. ``starts_at``/``ends_at`` are the event
    times of firing and resolution as ISO 8601 UTC; ``created_at`` is the caller's wall clock
    (core code reads no clock). Times run forward per fingerprint: an ``event_ts`` older than
    one already observed counts as that newer time.

    ``severity`` and the labels are fixed for an episode at firing, because Alertmanager
    identifies an alert by its labels (a label change mid-episode would orphan the first
    alert); a stronger re-signal is kept as ``details.lifecycle.peak_severity``. ``details``
    are the caller's, plus a ``lifecycle`` entry (``active_since_ts``, ``fired_ts``,
    ``resolved_ts``, ``observations``, ``peak_severity``).

    State holds only pending and firing series (one small entry each): bounded by the number
    of conditions currently holding. There is no ``merge``: each series is evaluated by the
    one worker that owns its scope.

    >>> lc = AlertLifecycle(for_events=2, resolve_events=2)
    >>> t0 = "2024-01-01T00:00:00Z"
    >>> def obs(active, ts):
    ...     out = lc.observe("ece_high", "m", "global", active, 0.09, 0.05, ts, t0)
    ...     return [(e["status"], e["event_ts"]) for e in out]
    >>> [obs(a, ts) for a, ts in [(True, 1), (False, 2), (True, 3), (True, 4), (True, 5)]]
    [[], [], [], [('firing', 4)], []]
    >>> lc.firing()[0]["alert_id"]
    '41edc5d5271e8641-4'
    >>> [obs(a, ts) for a, ts in [(False, 6), (True, 7), (False, 8), (False, 9)]]
    [[], [], [], [('resolved', 9)]]
    >>> lc.firing()
    []
    """

    def __init__(
        self,
        *,
        for_events: int = 1,
        for_ms: int = 0,
        resolve_events: int = 3,
        resolve_ms: int = 0,
        per_kind: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        defaults = {
            "for_events": for_events,
            "for_ms": for_ms,
            "resolve_events": resolve_events,
            "resolve_ms": resolve_ms,
        }
        self._defaults = _check_params(defaults, "")
        self._per_kind: dict[str, dict[str, int]] = {}
        for kind, params in (per_kind or {}).items():
            if kind not in KINDS:
                raise ConfigError(f"per_kind: unknown alert kind {kind!r}; kinds are {KINDS}")
            if not isinstance(params, Mapping):
                raise ConfigError(f"per_kind[{kind!r}] must be a mapping; got {params!r}")
            unknown = set(params) - set(_PARAMS)
            if unknown:
                raise ConfigError(
                    f"per_kind[{kind!r}]: unknown parameters {sorted(unknown)}; "
                    f"allowed {list(_PARAMS)}"
                )
            self._per_kind[kind] = _check_params(
                {**self._defaults, **params}, f"per_kind[{kind!r}]."
            )
        self._series: dict[str, _Series] = {}

    @property
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as keyword arguments of the constructor."""
        return {
            **self._defaults,
            "per_kind": {
                k: {p: v for p, v in params.items() if v != self._defaults[p]}
                for k, params in self._per_kind.items()
            },
        }

    def params(self, kind: str) -> dict[str, int]:
        """The hysteresis parameters in force for ``kind``."""
        return dict(self._per_kind.get(kind, self._defaults))

    # ------------------------------------------------------------------ the state machine

    def observe(
        self,
        kind: str,
        model_id: str,
        scope: str,
        active: bool,
        value: float | None,
        threshold: float | None,
        event_ts: int,
        created_at: str,
        severity: str = "warning",
        details: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One evaluation of a condition; return the alert events to emit (0 or 1)."""
        _check_observation(
            kind, model_id, scope, active, value, threshold, event_ts, created_at, severity
        )
        if details is not None and not isinstance(details, Mapping):
            raise InvalidInputError("schema", f"details must be a mapping; got {details!r}")
        if details is not None and LIFECYCLE_KEY in details:
            raise InvalidInputError("schema", f"details key {LIFECYCLE_KEY!r} is reserved")
        fp = fingerprint(kind, model_id, scope)
        series = self._series.get(fp)
        if series is None:
            if not active:
                return []
            series = self._series[fp] = _Series(kind, model_id, scope)
        ts = max(int(event_ts), series.last_ts)
        series.last_ts = ts
        params = self._per_kind.get(kind, self._defaults)
        obs = _Observation(value, threshold, ts, created_at, severity, details)

        if not series.firing:
            if not active:
                series.active_streak, series.active_since = 0, None
                self._prune(fp, series)
                return []
            series.active_streak += 1
            if series.active_since is None:
                series.active_since = ts
            if (
                series.active_streak >= params["for_events"]
                and ts - series.active_since >= params["for_ms"]
            ):
                return [self._fire(fp, series, obs)]
            return []

        series.observations += 1
        if active:
            series.clear_streak, series.clear_since = 0, None
            if _SEVERITY_RANK[severity] > _SEVERITY_RANK[series.peak_severity or "warning"]:
                series.peak_severity = severity
            self._refresh(series, obs)
            return []
        series.clear_streak += 1
        if series.clear_since is None:
            series.clear_since = ts
        if (
            series.clear_streak >= params["resolve_events"]
            and ts - series.clear_since >= params["resolve_ms"]
        ):
            return [self._resolve(fp, series, obs)]
        return []

    def _fire(self, fp: str, series: _Series, obs: _Observation) -> dict[str, Any]:
        series.seq = series.seq + 1 if series.fired_ts == obs.ts else 0
        series.fired_ts = obs.ts
        series.peak_severity = obs.severity
        series.observations = 1
        series.clear_streak, series.clear_since = 0, None
        alert_id = f"{fp}-{obs.ts}" + (f"-{series.seq}" if series.seq else "")
        labels = {
            "alertname": series.kind,
            "kind": series.kind,
            "model_id": series.model_id,
            "scope": series.scope,
            "severity": obs.severity,
        }
        record: dict[str, Any] = {
            "alert_id": alert_id,
            "fingerprint": fp,
            "status": "firing",
            "kind": series.kind,
            "severity": obs.severity,
            "model_id": series.model_id,
            "scope": series.scope,
            "event_ts": obs.ts,
            "starts_at": iso_utc_ms(obs.ts),
            "ends_at": None,
            "created_at": obs.created_at,
            "value": obs.value,
            "threshold": obs.threshold,
            "labels": labels,
            "annotations": {},
            "details": {},
        }
        series.record = record
        self._refresh(series, obs, created=True)
        return copy.deepcopy(record)

    def _refresh(self, series: _Series, obs: _Observation, created: bool = False) -> None:
        """Bring the live firing record up to the latest observation (for ``firing()``)."""
        rec = series.record
        assert rec is not None
        rec["event_ts"] = obs.ts
        rec["value"] = obs.value
        rec["threshold"] = obs.threshold
        if created:
            rec["created_at"] = obs.created_at
        rec["annotations"] = _annotations(rec, obs, resolved_ts=None)
        rec["details"] = {
            **copy.deepcopy(dict(obs.details or {})),
            LIFECYCLE_KEY: self._lifecycle(series, resolved_ts=None),
        }

    def _resolve(self, fp: str, series: _Series, obs: _Observation) -> dict[str, Any]:
        rec = series.record
        assert rec is not None
        out = copy.deepcopy(rec)
        out.update(
            status="resolved",
            event_ts=obs.ts,
            ends_at=iso_utc_ms(obs.ts),
            created_at=obs.created_at,
            value=obs.value,
            threshold=obs.threshold,
            annotations=_annotations(rec, obs, resolved_ts=obs.ts),
            details={
                **copy.deepcopy(dict(obs.details or {})),
                LIFECYCLE_KEY: self._lifecycle(series, resolved_ts=obs.ts),
            },
        )
        series.record = None
        series.active_streak, series.active_since = 0, None
        series.clear_streak, series.clear_since = 0, None
        series.observations = 0
        self._prune(fp, series)
        return out

    @staticmethod
    def _lifecycle(series: _Series, resolved_ts: int | None) -> dict[str, Any]:
        return {
            "active_since_ts": series.active_since,
            "fired_ts": series.fired_ts,
            "resolved_ts": resolved_ts,
            "observations": series.observations,
            "peak_severity": series.peak_severity,
        }

    def _prune(self, fp: str, series: _Series) -> None:
        # An idle series carries nothing but the alert-id collision guard, which only matters
        # while a new episode could fire at the event time the last one fired.
        if not series.firing and series.active_streak == 0 and series.last_ts != series.fired_ts:
            del self._series[fp]

    # ------------------------------------------------------------------ reads

    def firing(self) -> list[dict[str, Any]]:
        """The live firing alerts (refreshed with their latest observation), oldest first."""
        live = [(s.fired_ts or 0, fp, s.record) for fp, s in self._series.items() if s.record]
        live.sort(key=lambda t: (t[0], t[1]))
        return [copy.deepcopy(rec) for _, _, rec in live]

    def state(self, kind: str, model_id: str, scope: str) -> str:
        """``inactive``, ``pending`` (active, not yet fired) or ``firing``."""
        series = self._series.get(fingerprint(kind, model_id, scope))
        if series is None:
            return "inactive"
        if series.firing:
            return "firing"
        return "pending" if series.active_streak else "inactive"

    @property
    def n_series(self) -> int:
        """Series held (pending or firing, plus rare collision guards)."""
        return len(self._series)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with version field ``"v": 1``."""
        return {
            "v": 1,
            "config": self.config,
            "series": [[fp, s.to_dict()] for fp, s in self._series.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertLifecycle:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported alert state version {data.get('v')!r}")
            out = cls(**data["config"])
            for fp, s in data["series"]:
                series = _Series.from_dict(s)
                if fingerprint(series.kind, series.model_id, series.scope) != fp:
                    raise ValueError(f"fingerprint {fp!r} does not match its series")
                out._series[fp] = series
            return out
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed alert state: {exc}") from exc

    def __repr__(self) -> str:
        return f"AlertLifecycle(series={len(self._series)}, firing={len(self.firing())})"


class _Observation:
    __slots__ = ("created_at", "details", "severity", "threshold", "ts", "value")

    def __init__(
        self,
        value: float | None,
        threshold: float | None,
        ts: int,
        created_at: str,
        severity: str,
        details: Mapping[str, Any] | None,
    ) -> None:
        self.value = None if value is None else float(value)
        self.threshold = None if threshold is None else float(threshold)
        self.ts = ts
        self.created_at = created_at
        self.severity = severity
        self.details = details


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _annotations(
    rec: Mapping[str, Any], obs: _Observation, resolved_ts: int | None
) -> dict[str, str]:
    what = f"{_SUMMARIES[rec['kind']]} on model {rec['model_id']} ({rec['scope']})"
    if resolved_ts is None:
        desc = (
            f"{rec['kind']} firing since {rec['starts_at']} (event time): "
            f"value {_fmt(obs.value)}, threshold {_fmt(obs.threshold)}."
        )
    else:
        desc = (
            f"{rec['kind']} resolved at {iso_utc_ms(resolved_ts)} (event time) after firing "
            f"since {rec['starts_at']}: value {_fmt(obs.value)}, threshold "
            f"{_fmt(obs.threshold)}."
        )
    return {"summary": what, "description": desc}


def _check_params(params: Mapping[str, Any], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in _PARAMS:
        v = params[name]
        low = 1 if name.endswith("_events") else 0
        if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
            raise ConfigError(f"{prefix}{name} must be an integer >= {low}; got {v!r}")
        out[name] = int(v)
    return out


def _check_observation(
    kind: object,
    model_id: object,
    scope: object,
    active: object,
    value: object,
    threshold: object,
    event_ts: object,
    created_at: object,
    severity: object,
) -> None:
    if kind not in KINDS:
        raise InvalidInputError("schema", f"kind must be one of {KINDS}; got {kind!r}")
    if not isinstance(model_id, str) or not 1 <= len(model_id) <= 128:
        raise InvalidInputError(
            "schema", f"model_id must be a string of 1-128 characters; got {model_id!r}"
        )
    if not isinstance(scope, str) or not _SCOPE.match(scope):
        raise InvalidInputError(
            "schema", f"scope must be 'global', 'segment:<name>' or 'user:<id>'; got {scope!r}"
        )
    if not isinstance(active, bool):
        raise InvalidInputError("schema", f"active must be a bool; got {active!r}")
    for name, x in (("value", value), ("threshold", threshold)):
        if x is not None and not (
            isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))
        ):
            raise InvalidInputError("schema", f"{name} must be a finite number or None; got {x!r}")
    timestamp("event_ts", event_ts)
    if not isinstance(created_at, str) or not _ISO_UTC.match(created_at):
        raise InvalidInputError(
            "schema", f"created_at must be an ISO 8601 UTC time string; got {created_at!r}"
        )
    if severity not in SEVERITIES:
        raise InvalidInputError(
            "schema", f"severity must be one of {SEVERITIES}; got {severity!r}"
        )
