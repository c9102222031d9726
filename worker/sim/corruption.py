"""Corruption of the simulated stream: duplicates, bounded reordering, orphans, malformed lines.

What each knob of ``Scenario`` means, exactly:

- ``duplicate_share`` d: every impression line and every click line (orphans included) is
  followed, with probability d, by one byte-identical copy (a producer retry). The copy gets its
  own arrival jitter, so under reordering it need not be adjacent.
- ``reorder_within_ms`` R: each line's *arrival key* is ``ts + U(0, R)`` and lines are written
  in key order. Hence no line arrives more than R ms of event time behind the largest ``ts``
  seen before it: ``ts >= max(ts so far) - R`` holds for every well-formed line. With R below
  the join's allowed lateness (60 s by default) nothing is late.
- ``orphan_click_share`` s: extra clicks whose impression is never sent, a share s of all
  (non-duplicate) clicks. Each real click brings one orphan with probability s / (1 - s).
  Orphans leave the sent impressions' click rate untouched, so calibration truth stays exact.
- ``malformed_share`` m: a share m of all lines is invalid. Each malformed line is a fresh
  record (own ids, so the valid stream is unaffected) broken in exactly one way, recorded with
  the dead-letter reason the decoder must give it (``MALFORMED_KINDS``).

>>> [k.name for k in MALFORMED_KINDS][:3]
['broken_json', 'missing_user_id', 'score_out_of_range']
>>> sorted({k.reason for k in MALFORMED_KINDS})
['invalid_json', 'schema', 'score_range', 'too_large']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.core.codec.output_encoder import dumps_sized

#: Inputs larger than this many bytes are rejected with ``too_large`` (64 KiB).
TOO_LARGE_BYTES = 65_536
#: Size of the generated oversize lines: clearly above the limit, whatever rounding.
OVERSIZE_LINE_BYTES = 70_000


@dataclass(frozen=True)
class MalformedKind:
    """One way a line can be broken, the dead-letter ``reason`` it must get, and its weight.

    ``targets`` are the record types it is drawn for; ``weight`` its relative frequency.
    """

    name: str
    reason: str
    targets: tuple[str, ...]
    weight: float


MALFORMED_KINDS: tuple[MalformedKind, ...] = (
    MalformedKind("broken_json", "invalid_json", ("impression", "click"), 1.0),
    MalformedKind("missing_user_id", "schema", ("impression", "click"), 1.0),
    MalformedKind("score_out_of_range", "score_range", ("impression",), 1.0),
    MalformedKind("score_as_string", "schema", ("impression",), 1.0),
    MalformedKind("logit_nan_literal", "invalid_json", ("impression",), 1.0),
    MalformedKind("negative_ts", "schema", ("impression", "click"), 1.0),
    # Rare on purpose: each one is > 64 KiB, and a 1 % malformed share of a million lines
    # would otherwise add ~100 MB of padding to the file.
    MalformedKind("oversize", "too_large", ("impression",), 0.1),
)
MALFORMED_BY_NAME: dict[str, MalformedKind] = {k.name: k for k in MALFORMED_KINDS}
MALFORMED_WEIGHTS = np.array([k.weight for k in MALFORMED_KINDS]) / sum(
    k.weight for k in MALFORMED_KINDS
)


@dataclass(frozen=True)
class MalformedLine:
    """A broken line: raw bytes, the parsed object when it is valid JSON, key and reason."""

    raw: bytes
    obj: dict[str, Any] | None
    key: str | None
    reason: str
    kind: str


def _without(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in names}


def _score_only(obj: dict[str, Any], score: Any) -> dict[str, Any]:
    # The decoder lets logit win when both are present; drop it so the score is what is judged.
    out = _without(obj, "score", "logit")
    out["score"] = score
    return out


def _dumps(obj: dict[str, Any]) -> bytes:
    return dumps_sized(obj)  # the line is kept with the stream


def make_malformed(kind: str, template: dict[str, Any], rng: np.random.Generator) -> MalformedLine:
    """Break a valid record ``template`` (with ``"type"``) in the way named by ``kind``.

    Exactly one thing is wrong with the result, so its dead-letter reason is unambiguous.

    >>> rng = np.random.default_rng(0)
    >>> imp = {"type": "impression", "impression_id": "b1", "user_id": "u1", "item_id": "it1",
    ...        "ts": 5, "model_id": "default", "score": 0.3}
    >>> make_malformed("score_out_of_range", imp, rng).raw
    b'{"type":"impression","impression_id":"b1","user_id":"u1","item_id":"it1","ts":5,"model_id":"default","score":1.7}'
    >>> make_malformed("logit_nan_literal", imp, rng).raw.endswith(b'"logit":NaN}')
    True
    """
    spec = MALFORMED_BY_NAME[kind]
    user = template.get("user_id")
    obj: dict[str, Any] | None
    if kind == "broken_json":
        full = _dumps(template)
        # A proper prefix of a JSON object always lacks its closing brace, so it never parses.
        cut = int(rng.integers(len(full) // 3, len(full) - 1))
        return MalformedLine(full[:cut], None, user, spec.reason, kind)
    if kind == "missing_user_id":
        obj = _without(template, "user_id")
        return MalformedLine(_dumps(obj), obj, None, spec.reason, kind)
    if kind == "score_out_of_range":
        obj = _score_only(template, 1.7)
    elif kind == "score_as_string":
        obj = _score_only(template, f"{float(template.get('score', 0.5)):.4f}")
    elif kind == "logit_nan_literal":
        # Strict JSON has no NaN; Python's json module would accept it, orjson (and the
        # decoder) must not. Written by hand because no strict encoder can produce it.
        body = _dumps(_without(template, "score", "logit"))
        return MalformedLine(body[:-1] + b',"logit":NaN}', None, user, spec.reason, kind)
    elif kind == "negative_ts":
        obj = dict(template)
        obj["ts"] = -int(template["ts"])
    elif kind == "oversize":
        obj = dict(template)
        obj["context"] = {"padding": "x" * OVERSIZE_LINE_BYTES}
    else:  # pragma: no cover - MALFORMED_BY_NAME lookup above already rejected unknown kinds
        raise AssertionError(kind)
    return MalformedLine(_dumps(obj), obj, user, spec.reason, kind)


class ReorderBuffer:
    """Holds lines until no future line can sort before them; releases them in key order.

    Lines are stored column-wise in numpy arrays (``dtype=object`` for bytes, strings and
    dicts), so sorting and releasing cost a few vectorised operations per chunk rather than
    Python work per line. Each line has an arrival ``key`` (a float, ``ts + jitter``) and a
    ``seq`` that breaks ties in creation order. ``pop_before(t)`` releases, sorted by
    ``(key, seq)``, every held line with ``key < t``; the caller promises that all later pushes
    have ``key >= t``. Memory is bounded by the lines in flight (the click delay and the
    reorder window), not by the stream length.

    >>> buf = ReorderBuffer(2)
    >>> names = np.array(["c", "a", "b"], dtype=object)
    >>> buf.push(np.array([3.0, 1.0, 2.0]), np.array([0, 1, 2]), [np.array([30, 10, 20]), names])
    >>> codes, names = buf.pop_before(2.5)
    >>> codes.tolist(), names.tolist(), len(buf)
    ([10, 20], ['a', 'b'], 1)
    >>> buf.flush()[1].tolist()
    ['c']
    """

    def __init__(self, n_columns: int) -> None:
        self._keys = np.empty(0, dtype=np.float64)
        self._seqs = np.empty(0, dtype=np.int64)
        self._columns: list[np.ndarray] | None = None
        self._n_columns = n_columns

    def __len__(self) -> int:
        return len(self._keys)

    def push(self, keys: np.ndarray, seqs: np.ndarray, columns: list[np.ndarray]) -> None:
        """Add lines: ``keys``, ``seqs`` and every column are parallel arrays."""
        if len(columns) != self._n_columns:
            raise ValueError(f"expected {self._n_columns} columns; got {len(columns)}")
        lengths = {len(keys), len(seqs), *(len(c) for c in columns)}
        if len(lengths) != 1:
            raise ValueError(f"keys, seqs and columns must have one length; got {sorted(lengths)}")
        self._keys = np.concatenate([self._keys, keys])
        self._seqs = np.concatenate([self._seqs, seqs])
        if self._columns is None:
            self._columns = list(columns)
        else:
            pairs = zip(self._columns, columns, strict=True)
            self._columns = [np.concatenate([a, b]) for a, b in pairs]

    def pop_before(self, threshold: float) -> list[np.ndarray]:
        """Release every held line with ``key < threshold``, columns in ``(key, seq)`` order.

        Before the first push there are no columns to release: the result is then ``[]``.
        """
        if self._columns is None:
            return []
        order = np.lexsort((self._seqs, self._keys))
        keys = self._keys[order]
        cut = int(np.searchsorted(keys, threshold, side="left"))
        out_idx, rest_idx = order[:cut], order[cut:]
        released = [col[out_idx] for col in self._columns]
        self._columns = [col[rest_idx] for col in self._columns]
        self._keys = keys[cut:]
        self._seqs = self._seqs[rest_idx]
        return released

    def flush(self) -> list[np.ndarray]:
        """Release everything (end of stream)."""
        return self.pop_before(np.inf)


def jitter(rng: np.random.Generator, ts: np.ndarray, reorder_within_ms: int) -> np.ndarray:
    """Arrival keys ``ts + U(0, R)``; exactly ``ts`` (no draw) when R is 0.

    >>> jitter(np.random.default_rng(0), np.array([5, 7]), 0).tolist()
    [5.0, 7.0]
    """
    keys = ts.astype(np.float64)
    if reorder_within_ms > 0:
        keys += rng.random(len(ts)) * reorder_within_ms
    return keys

