"""Votes on events stamped far ahead of a partition's clock (DESIGN §4; issue 8 item 7)."""

from __future__ import annotations

from typing import Any

from worker.core.errors import ConfigError, StateError
from worker.core.join.watermark import _check_ms
from worker.core.records.click import Click
from worker.core.records.impression import Impression

# One held event: [event, ref, votes for, votes against]. A list, changed in place.
_EVENT = 0
_REF = 1
_FOR = 2
_AGAINST = 3


class ClockGuard:
    """Holds events too far ahead of the clock until later events confirm or refute them.

    Why: the watermark is ``max ts - L``, so one event stamped a day ahead would otherwise
    finalize every pending impression as a negative and make every on-time event late. The
    join asks the guard about any event more than ``max_jump_ms`` ahead of its clock; the
    guard keeps it aside (not applied) and lets every later event vote on it: a later event
    with ``ts >= held.ts - max_jump_ms`` says "time really got there" (for), an earlier one
    says "the stream is still behind" (against). ``confirmations`` votes for release the
    event to the join (a real jump, e.g. a stream resuming after an idle gap); as many votes
    against make it an outlier (``future_ts``). A vote per later event bounds the wait: a
    held event is decided within ``2 * confirmations - 1`` later events, so at most that
    many are held at once. Held events are decided in arrival order, so the outcome depends
    only on the input order (deterministic). Limit: the bound counts from the clock, so a
    partition's very first event (no clock yet) is never held; nor is anything after the
    Kafka runtime's idle advance has moved the clock to wall time, which is the point.

    >>> g = ClockGuard(max_jump_ms=1_000, confirmations=2)
    >>> def click(ts):
    ...     return Click("i", "u", ts, None)
    >>> g.hold(click(90_000), "far")
    >>> g.vote(5_000), g.vote(5_001)
    (([], []), ([], [(Click(impression_id='i', user_id='u', ts=90000, item_id=None), 'far')]))
    >>> g.hold(click(50_000), "gap")
    >>> g.vote(50_100)[0] == [] and g.vote(49_500)[0]
    [(Click(impression_id='i', user_id='u', ts=50000, item_id=None), 'gap')]
    >>> len(g)
    0
    """

    __slots__ = ("_confirmations", "_max_jump_ms", "held")

    def __init__(self, max_jump_ms: int, confirmations: int = 3) -> None:
        self._max_jump_ms = _check_ms("max_clock_jump_ms", max_jump_ms, 0)
        if isinstance(confirmations, bool) or not isinstance(confirmations, int) or (
            confirmations < 1
        ):
            raise ConfigError(
                f"clock_confirmations must be a positive integer; got {confirmations!r}"
            )
        self._confirmations = confirmations
        # The held events (read-only outside): a plain attribute, because the join tests
        # it after every event and a method call there is a measurable cost.
        self.held: list[list[Any]] = []

    @property
    def max_jump_ms(self) -> int:
        """How far ahead of the clock an event may be applied without confirmation."""
        return self._max_jump_ms

    @property
    def confirmations(self) -> int:
        """Votes needed to release a held event, or to reject it."""
        return self._confirmations

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, event: Impression | Click, ref: object) -> None:
        """Keep an event aside (call ``vote`` with its ts first: it votes on earlier ones)."""
        self.held.append([event, ref, 0, 0])

    def vote(
        self, ts: int
    ) -> tuple[list[tuple[Impression | Click, object]], list[tuple[Impression | Click, object]]]:
        """A later event's ts votes on every held event; returns (confirmed, rejected), each
        in arrival order, both removed from the guard."""
        confirmed: list[tuple[Impression | Click, object]] = []
        rejected: list[tuple[Impression | Click, object]] = []
        need = self._confirmations
        jump = self._max_jump_ms
        keep = []
        for held in self.held:
            if ts >= held[_EVENT].ts - jump:
                held[_FOR] += 1
                if held[_FOR] >= need:
                    confirmed.append((held[_EVENT], held[_REF]))
                    continue
            else:
                held[_AGAINST] += 1
                if held[_AGAINST] >= need:
                    rejected.append((held[_EVENT], held[_REF]))
                    continue
            keep.append(held)
        self.held = keep
        return confirmed, rejected

    def take_until(self, horizon: float) -> list[tuple[Impression | Click, object]]:
        """Remove and return, in arrival order, the first held events whose ts is at most
        ``horizon`` (stops at the first one beyond it, so arrival order is kept)."""
        held = self.held
        n = 0
        while n < len(held) and held[n][_EVENT].ts <= horizon:
            n += 1
        out = [(h[_EVENT], h[_REF]) for h in held[:n]]
        del held[:n]
        return out

    def drain(self) -> list[tuple[Impression | Click, object]]:
        """Remove and return every held event, in arrival order."""
        out = [(h[_EVENT], h[_REF]) for h in self.held]
        self.held = []
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        """The held events, JSON-ready when their refs are."""
        return [
            {
                "kind": "impression" if isinstance(event, Impression) else "click",
                "event": event.to_dict(),
                "ref": ref,
                "for": votes_for,
                "against": votes_against,
            }
            for event, ref, votes_for, votes_against in self.held
        ]

    def load(self, data: list[dict[str, Any]]) -> None:
        """Replace the held events by ``to_dict()`` output."""
        held: list[list[Any]] = []
        try:
            for item in data:
                kind = item["kind"]
                if kind == "impression":
                    event: Impression | Click = Impression.from_dict(item["event"])
                elif kind == "click":
                    event = Click.from_dict(item["event"])
                else:
                    raise ValueError(f"unknown held event kind {kind!r}")
                held.append([event, item["ref"], int(item["for"]), int(item["against"])])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed held events of the clock guard: {exc}") from exc
        self.held = held
