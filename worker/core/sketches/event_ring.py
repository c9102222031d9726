"""A bounded FIFO of labelled events: the policy's training and holdout windows, the
feedback stage's conformal buffers."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.calibrators.context_columns import ContextColumns
from worker.core.calibrators.context_features import category_of, real
from worker.core.errors import StateError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class EventRing:
    """The newest ``capacity`` events ``(z, y, ts, seq, seg)`` in arrival order.

    Storage is ``2 * capacity`` long and compacted when full, so ``append`` is O(1)
    amortised and every read is one contiguous slice (no wrap-around concatenation).
    ``seq`` is the model's feedback sequence number: arrival order, strictly increasing;
    ``seg`` the event's segment code (the global scope serves only some segments).
    Without an explicit ``seq`` an append takes the next number after the newest kept.

    >>> ring = EventRing(2)
    >>> for i in range(3):
    ...     ring.append(0.1 * i, i % 2, 1_000 * i, seg=i)
    >>> z, y, ts, seq, seg = ring.columns()
    >>> ts.tolist(), seq.tolist(), seg.tolist()
    ([1000, 2000], [1, 2], [1, 2])

    **Context** (``fields`` not None): the ring also keeps what a ``contextual`` map reads
    of each event besides its ``ts`` (the hour of day): the impression's ``position`` (-1
    when absent) and, for each of ``fields`` (the impression ``context`` fields the decoder
    keeps), its number (NaN when absent) or its category, as a code into the ring's own
    vocabulary of that field (-1 when absent; at most ``MAX_VOCABULARY`` values per field,
    later ones share one code that no map knows, "other"). ``context()`` gives them as
    ``ContextColumns``, so every candidate is scored on the same events in their context.

    >>> from types import SimpleNamespace as Imp
    >>> ring = EventRing(3, fields=("device",))
    >>> ring.append(-1.0, 0, 3_600_000, impression=Imp(position=2, context={"device": "tv"}))
    >>> ring.append(-2.0, 1, 7_200_000, impression=Imp(position=None, context=None))
    >>> EventRing.from_dict(ring.to_dict()).context(segment_vocab=["web"]).contexts(0)
    {'hour': 1.0, 'position': 2, 'device': 'tv', 'segment': 'web'}
    """

    __slots__ = ("_cap", "_cat", "_fields", "_hi", "_index", "_lo", "_num", "_pos", "_seg",
                 "_seq", "_ts", "_vocab", "_y", "_z")

    #: Category values remembered per field (an unbounded field must not grow the state).
    MAX_VOCABULARY = 256

    def __init__(self, capacity: int, fields: Sequence[str] | None = None) -> None:
        self._cap = int(capacity)
        size = 2 * self._cap
        self._z: FloatArray = np.empty(size)
        self._y: FloatArray = np.empty(size)
        self._ts: IntArray = np.empty(size, dtype=np.int64)
        self._seq: IntArray = np.empty(size, dtype=np.int64)
        self._seg: IntArray = np.empty(size, dtype=np.int64)
        self._fields: tuple[str, ...] | None = None if fields is None else tuple(fields)
        self._pos: IntArray | None = None
        self._num: dict[str, FloatArray] = {}
        self._cat: dict[str, IntArray] = {}
        self._vocab: dict[str, list[str]] = {}
        self._index: dict[str, dict[str, int]] = {}
        if self._fields is not None:
            self._pos = np.empty(size, dtype=np.int64)
            for f in self._fields:
                self._num[f] = np.empty(size)
                self._cat[f] = np.empty(size, dtype=np.int64)
                self._vocab[f] = []
                self._index[f] = {}
        self._lo = 0
        self._hi = 0

    @property
    def has_context(self) -> bool:
        """Whether the ring keeps the events' context (``fields`` was given)."""
        return self._pos is not None

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, z: float, y: int, ts: int, seq: int | None = None, seg: int = 0,
               impression: Any = None) -> None:
        """One event; ``impression`` (anything with ``position`` and ``context``) gives its
        context when the ring keeps it (None: every context field missing)."""
        if self._hi == self._z.size:
            self._compact()
        i = self._hi
        if seq is None:
            seq = int(self._seq[i - 1]) + 1 if i > self._lo else 0
        self._z[i] = z
        self._y[i] = y
        self._ts[i] = ts
        self._seq[i] = seq
        self._seg[i] = seg
        if self._pos is not None:
            self._put_context(i, impression)
        self._hi = i + 1
        if self._hi - self._lo > self._cap:
            self._lo += 1

    def _put_context(self, i: int, impression: Any) -> None:
        assert self._pos is not None
        pos = None if impression is None else impression.position
        self._pos[i] = pos if type(pos) is int and pos >= 0 else -1
        ctx = None if impression is None else impression.context
        for f, num in self._num.items():
            value = None if not ctx else ctx.get(f)
            cat = category_of(value)
            if cat is not None:
                num[i] = np.nan
                self._cat[f][i] = self._code(f, cat)
            else:
                v = real(value)
                num[i] = np.nan if v is None else v
                self._cat[f][i] = -1

    def _code(self, field: str, value: str) -> int:
        index = self._index[field]
        code = index.get(value)
        if code is None:
            vocab = self._vocab[field]
            if len(vocab) >= self.MAX_VOCABULARY:
                return self.MAX_VOCABULARY  # "other": past the vocabulary, no map knows it
            code = index[value] = len(vocab)
            vocab.append(value)
        return code

    def _all_columns(self) -> list[NDArray[Any]]:
        cols: list[NDArray[Any]] = [self._z, self._y, self._ts, self._seq, self._seg]
        if self._pos is not None:
            cols.append(self._pos)
            cols.extend(self._num.values())
            cols.extend(self._cat.values())
        return cols

    def _compact(self) -> None:
        n = self._hi - self._lo
        for arr in self._all_columns():
            arr[:n] = arr[self._lo : self._hi]
        self._lo, self._hi = 0, n

    def arrays(
        self, since_seq: int | None = None, segs: IntArray | None = None
    ) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
        """Copies of ``(z, y, ts, seq)``, oldest first, of the events with ``seq >= since_seq``
        (and a segment code in ``segs`` when given)."""
        lo = self._lo
        if since_seq is not None:
            lo += int(np.searchsorted(self._seq[self._lo : self._hi], since_seq, side="left"))
        sl = slice(lo, self._hi)
        if segs is None:
            return (self._z[sl].copy(), self._y[sl].copy(), self._ts[sl].copy(),
                    self._seq[sl].copy())
        keep = np.isin(self._seg[sl], segs)
        return self._z[sl][keep], self._y[sl][keep], self._ts[sl][keep], self._seq[sl][keep]

    def context(
        self,
        since_seq: int | None = None,
        segs: IntArray | None = None,
        segment_vocab: Sequence[str] | None = None,
    ) -> ContextColumns | None:
        """The context of exactly the events ``arrays(since_seq, segs)`` returns, or None
        when the ring keeps none; with ``segment_vocab`` (segment names by code) the
        ``segment`` category too."""
        if self._pos is None:
            return None
        lo = self._lo
        if since_seq is not None:
            lo += int(np.searchsorted(self._seq[self._lo : self._hi], since_seq, side="left"))
        sl = slice(lo, self._hi)
        keep: Any = slice(None) if segs is None else np.isin(self._seg[sl], segs)
        cats: dict[str, tuple[IntArray, Sequence[str]]] = {}
        for f, codes in self._cat.items():
            # The "other" code indexes one past the vocabulary: a value no map knows.
            cats[f] = (codes[sl][keep].copy(), [*self._vocab[f], ""])
        if segment_vocab is not None:
            cats["segment"] = (self._seg[sl][keep].copy(), list(segment_vocab))
        return ContextColumns.from_ts(
            self._ts[sl][keep], self._pos[sl][keep].copy(), cats,
            {f: num[sl][keep].copy() for f, num in self._num.items()},
        )

    def columns(self) -> tuple[FloatArray, FloatArray, IntArray, IntArray, IntArray]:
        """Copies of every kept ``(z, y, ts, seq, seg)``, oldest first."""
        sl = slice(self._lo, self._hi)
        return (self._z[sl].copy(), self._y[sl].copy(), self._ts[sl].copy(),
                self._seq[sl].copy(), self._seg[sl].copy())

    def count_since(self, since_seq: int) -> int:
        """How many kept events have ``seq >= since_seq``."""
        return self._hi - self._lo - int(
            np.searchsorted(self._seq[self._lo : self._hi], since_seq, side="left")
        )

    def nth_newest_seq(self, k: int) -> int | None:
        """The ``seq`` of the ``k``-th newest event (1 = newest), or None when fewer are kept."""
        if k < 1 or k > len(self):
            return None
        return int(self._seq[self._hi - k])

    def drop_before(self, seq: int) -> None:
        """Forget the events with ``seq`` below ``seq``."""
        self._lo += int(np.searchsorted(self._seq[self._lo : self._hi], seq, side="left"))

    def to_dict(self) -> dict[str, Any]:
        """The kept events as columns of little-endian bytes in base64 (``"packed": 1``):
        exact, and cheap to write: the Kafka worker exports the rings of a changed scope with
        every transaction, and a list of 5,000 floats per column cost milliseconds to build
        and serialise where the packed column costs microseconds. ``from_dict`` also reads
        the older form, plain lists.

        >>> ring = EventRing(3)
        >>> ring.append(-0.5, 1, 7, seg=2)
        >>> data = ring.to_dict()
        >>> data["packed"], EventRing.from_dict(data).columns()[0].tolist()
        (1, [-0.5])
        """
        sl = slice(self._lo, self._hi)
        out = {
            "capacity": self._cap,
            "packed": 1,
            **{name: _pack(column[sl], dtype) for name, column, dtype in (
                ("z", self._z, "<f8"), ("y", self._y, "<i1"), ("ts", self._ts, "<i8"),
                ("seq", self._seq, "<i8"), ("seg", self._seg, "<i8"))},
        }
        if self._pos is not None:
            # Only a ring that keeps context writes it: other rings' records are unchanged.
            out["context"] = {
                "position": _pack(self._pos[sl], "<i8"),
                "fields": [
                    {"field": f, "number": _pack(self._num[f][sl], "<f8"),
                     "code": _pack(self._cat[f][sl], "<i8"), "values": list(self._vocab[f])}
                    for f in self._num
                ],
            }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventRing:
        try:
            ring = cls(int(data["capacity"]))
            if data.get("packed") == 1:
                z = _unpack(data["z"], "<f8").astype(np.float64)
                y = _unpack(data["y"], "<i1").astype(np.float64)
                ts = _unpack(data["ts"], "<i8").astype(np.int64)
                seq = _unpack(data["seq"], "<i8").astype(np.int64)
                seg = _unpack(data["seg"], "<i8").astype(np.int64)
            else:
                z = np.asarray(data["z"], dtype=np.float64)
                y = np.asarray(data["y"], dtype=np.float64)
                ts = np.asarray(data["ts"], dtype=np.int64)
                seq = np.asarray(data["seq"], dtype=np.int64)
                seg = np.asarray(data["seg"], dtype=np.int64)
            n = z.size
            if not (y.size == ts.size == seq.size == seg.size == n) or n > ring._cap:
                raise ValueError("ring columns must have one length <= capacity")
            if n > 1 and (np.diff(seq) <= 0).any():
                raise ValueError("ring seq must be strictly increasing")
            context = data.get("context")
            if context is not None:
                ring._load_context(context, n)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise StateError(f"invalid event ring state: {exc}") from exc
        ring._z[:n], ring._y[:n], ring._ts[:n], ring._seq[:n], ring._seg[:n] = z, y, ts, seq, seg
        ring._hi = n
        return ring

    def _load_context(self, data: dict[str, Any], n: int) -> None:
        specs = data["fields"]
        fresh = EventRing(self._cap, [str(spec["field"]) for spec in specs])
        pos = _unpack(data["position"], "<i8")
        if pos.size != n:
            raise ValueError("ring context columns must have the ring's length")
        assert fresh._pos is not None
        fresh._pos[:n] = pos
        for spec in specs:
            f = str(spec["field"])
            num = _unpack(spec["number"], "<f8")
            code = _unpack(spec["code"], "<i8")
            values = [str(v) for v in spec["values"]]
            if num.size != n or code.size != n or len(values) > self.MAX_VOCABULARY or (
                code.size and (code.min() < -1 or (code.max() > max(len(values) - 1, 0)
                               and code.max() != self.MAX_VOCABULARY))
            ):
                raise ValueError(f"malformed ring context field {f!r}")
            fresh._num[f][:n] = num
            fresh._cat[f][:n] = code
            fresh._vocab[f] = values
            fresh._index[f] = {v: i for i, v in enumerate(values)}
        self._fields, self._pos = fresh._fields, fresh._pos
        self._num, self._cat = fresh._num, fresh._cat
        self._vocab, self._index = fresh._vocab, fresh._index


def _pack(column: NDArray[Any], dtype: str) -> str:
    return base64.b64encode(column.astype(dtype).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> NDArray[Any]:
    if not isinstance(text, str):
        raise TypeError(f"a packed ring column must be a base64 string; got {type(text).__name__}")
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
