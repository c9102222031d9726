"""Per-model state of the feedback monitor (private to the pipeline)."""

from __future__ import annotations

from typing import Any

from worker.core.drift import FeedbackStall
from worker.core.errors import StateError
from worker.core.join.cohort_gate import CohortGate
from worker.core.pipeline._scope_detectors import ScopeDetectors
from worker.core.pipeline._served import ServeFn, calibrator_key, serve_fn
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.records.scope import GLOBAL

_IDENTITY_KEY = calibrator_key(None)
_IDENTITY = serve_fn(None)


class ModelState:
    """Scopes, published global/segment versions and stall counters of one ``model_id``.

    ``versions`` holds the newest global and segment version messages (with their
    ``conformal`` block) as published; ``serve``, ``qhat`` and ``covered`` are derived from
    them (rebuilt on load). ``covered`` are the segments served by a calibrator of their own:
    a segment without a version, or whose version has the global's map (a mirror), is
    served by the global calibrator, and only those segments' events feed the global
    scope's detectors (the global calibrator is neither fitted on nor served to the
    others, so testing it there would raise alarms about nothing anyone sees).

    ``gate`` holds positives until their impression cohort is complete (``CohortGate``);
    what it releases feeds both the detectors and the policy.

    ``matured`` counts impressions (with their served probability) when their label
    matures and clicks (positive labels) at their event time; ``arrivals`` counts impressions
    when they arrive, for the "impressions still flow" guard of ``feedback_stall``.
    """

    __slots__ = (
        "arrivals",
        "covered",
        "gate",
        "keys",
        "matured",
        "qhat",
        "scopes",
        "seg_codes",
        "serve",
        "versions",
    )

    def __init__(self, config: MonitorConfig) -> None:
        self.scopes: dict[str, ScopeDetectors] = {GLOBAL: ScopeDetectors(config)}
        self.versions: dict[str, dict[str, Any]] = {}
        self.serve: dict[str, ServeFn] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.qhat: dict[str, float] = {}
        self.covered: set[str] = set()
        self.seg_codes: dict[str, int] = {}
        self.matured = FeedbackStall(**config.stall)
        self.arrivals = FeedbackStall(**config.stall)
        self.gate = CohortGate()

    # ------------------------------------------------------------------ lookups

    def scope(self, key: str, config: MonitorConfig) -> ScopeDetectors | None:
        """The segment scope's state, created on first sight (None beyond the cap)."""
        state = self.scopes.get(key)
        if state is None and config.segment_scopes and len(self.scopes) <= config.max_segments:
            state = self.scopes[key] = ScopeDetectors(config)
        return state

    def code(self, key: str) -> int:
        """A segment's code (first-seen order), tagging the global ring's events."""
        c = self.seg_codes.get(key)
        if c is None:
            c = self.seg_codes[key] = len(self.seg_codes)
        return c

    def served_scope(self, seg_key: str) -> str | None:
        """The scope whose version serving uses for the segment (None: identity)."""
        if seg_key in self.versions:
            return seg_key
        return GLOBAL if GLOBAL in self.versions else None

    def serve_for(self, served: str | None) -> ServeFn:
        return _IDENTITY if served is None else self.serve[served]

    def served_id(self, key: str) -> tuple[str, int] | None:
        """``(version scope, version)`` of what a scope's detectors test."""
        served = GLOBAL if key == GLOBAL else self.served_scope(key)
        if served is None or served not in self.versions:
            return None
        return (served, int(self.versions[served]["version"]))

    # ------------------------------------------------------------------ publication

    def set_version(self, msg: dict[str, Any]) -> None:
        scope = msg["scope"]
        self.versions[scope] = msg
        self.serve[scope] = serve_fn(msg)
        self.keys[scope] = calibrator_key(msg)
        conformal = msg.get("conformal")
        if conformal is not None:
            self.qhat[scope] = float(conformal["qhat"])
        else:
            self.qhat.pop(scope, None)

    def refresh_covered(self) -> None:
        g = self.keys.get(GLOBAL, _IDENTITY_KEY)
        self.covered = {k for k, key in self.keys.items() if k != GLOBAL and key != g}

    def served_codes(self) -> list[int]:
        """Codes of the segments the global calibrator serves."""
        return [c for k, c in self.seg_codes.items() if k not in self.covered]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "scopes": [[k, s.to_dict()] for k, s in self.scopes.items()],
            "versions": [self.versions[k] for k in self.versions],
            "seg_codes": [[k, c] for k, c in self.seg_codes.items()],
            "matured": self.matured.to_dict(),
            "arrivals": self.arrivals.to_dict(),
            "gate": self.gate.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: MonitorConfig) -> ModelState:
        model = cls(config)
        try:
            model.scopes = {str(k): ScopeDetectors.from_dict(s, config) for k, s in data["scopes"]}
            if GLOBAL not in model.scopes:
                raise ValueError("a model needs a global scope")
            for msg in data["versions"]:
                model.set_version(dict(msg))
            model.refresh_covered()
            model.seg_codes = {str(k): int(c) for k, c in data["seg_codes"]}
            model.matured = FeedbackStall.from_dict(data["matured"])
            model.arrivals = FeedbackStall.from_dict(data["arrivals"])
            model.gate = CohortGate.from_dict(data["gate"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed monitor model state: {exc}") from exc
        return model
