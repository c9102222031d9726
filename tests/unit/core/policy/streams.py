"""Feedback streams for the policy tests: numpy draws turned into ``Feedback`` records.

The model logit of an event is ``temperature * true_logit + bias`` (per segment, per user and
before/after a change point); labels are Bernoulli(true p). Feedback is emitted in impression
order with ``label_ts = ts`` (already mature), which is all the policy assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator, FormatChecker

from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CREATED_AT = "2026-01-01T00:00:00Z"
SCHEMA_PATH = "schemas/calibrator_version.schema.json"


@dataclass
class Events:
    """Columns of one simulated stream."""

    true_z: np.ndarray
    z: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    segment: list[str]
    user: list[str]
    ids: list[str] = field(default_factory=list)

    def feedback(self, model_id: str = "m") -> Iterator[Feedback]:
        for i in range(self.z.size):
            z = float(self.z[i])
            imp = Impression(self.ids[i], self.user[i], "it", int(self.ts[i]), model_id,
                             1.0 / (1.0 + math.exp(-z)), z, self.segment[i], None, None)
            yield Feedback(imp, int(self.y[i]), int(self.ts[i]), None, None)


def make_events(
    n: int,
    seed: int,
    *,
    temperature: float = 1.0,
    bias: float = 0.0,
    change_at: int | None = None,
    temperature_after: float = 1.0,
    segments: Sequence[tuple[str, float, float]] = (("web", 1.0, 0.0),),
    n_users: int = 500,
    special_users: dict[str, tuple[float, float]] | None = None,
    special_share: float = 0.0,
    gap_ms: int = 60_000,
    id_prefix: str = "i",
) -> Events:
    """``segments``: (name, share, extra model bias). ``special_users``: user id ->
    (temperature, bias) of the model for that user, who gets ``special_share`` of events."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.0, 8.0, n)
    true_z = np.log(p / (1.0 - p))
    y = (rng.random(n) < p).astype(np.int64)
    names = [s[0] for s in segments]
    shares = np.array([s[1] for s in segments])
    seg_idx = rng.choice(len(segments), n, p=shares / shares.sum())
    seg_bias = np.array([s[2] for s in segments])[seg_idx]
    temp = np.full(n, temperature)
    if change_at is not None:
        temp[change_at:] = temperature_after
    z = temp * true_z + bias + seg_bias
    users = [f"u{k}" for k in rng.integers(0, n_users, n)]
    if special_users:
        specials = list(special_users)
        pick = np.flatnonzero(rng.random(n) < special_share)
        for i, k in zip(pick, rng.integers(0, len(specials), pick.size), strict=True):
            uid = specials[int(k)]
            t_u, b_u = special_users[uid]
            users[i] = uid
            z[i] = t_u * true_z[i] + b_u + seg_bias[i]
    ts = START_MS + np.arange(n, dtype=np.int64) * gap_ms
    return Events(true_z, z, y, ts, [names[i] for i in seg_idx], users,
                  [f"{id_prefix}{k}" for k in range(n)])


def run(policy: Any, events: Events, model_id: str = "m") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for fb in events.feedback(model_id):
        out += policy.update(fb, created_at=CREATED_AT)
    return out


def schema_validator() -> Draft202012Validator:
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[4]
    schema = json.loads((root / SCHEMA_PATH).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())
