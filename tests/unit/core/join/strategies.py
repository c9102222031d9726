"""Hypothesis strategies: event streams that arrive out of order only within the lateness."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from tests.unit.core.join.support import click, imp
from worker.core.records.click import Click
from worker.core.records.impression import Impression

# 100 ms: one-ms calendar buckets; 5 s: 4-ms buckets, so several deadlines share one.
WINDOWS = (100, 5_000)
# 150 > 100: a click with delay W may then arrive before its impression.
LATENESSES = (0, 20, 150)

Event = Impression | Click


@dataclass(frozen=True)
class Stream:
    """Events in arrival order, with the refs given to clicks."""

    events: list[Event]
    refs: list[object]
    window: int
    lateness: int


@st.composite
def streams(draw: st.DrawFn, max_impressions: int = 20) -> Stream:
    """Impressions of a few users (ids reused across users, so the user is part of the
    key), each with at most one distinct click whose delay covers skew down to -W, the
    window edges and late clicks up to 2W + L (still within the tombstone retention);
    repeats of impressions and clicks; clicks without impression (one distinct click per
    key too); arrival by ``ts + jitter`` with jitter in [0, L], which makes every event
    arrive at most L behind the max ts seen before it. W and L are drawn from ``WINDOWS``
    and ``LATENESSES``; timestamps cluster around a few anchors so that deadlines tie
    and share calendar buckets."""
    W = draw(st.sampled_from(WINDOWS))  # the window, named as in DESIGN §4
    lateness = draw(st.sampled_from(LATENESSES))
    anchors = st.integers(0, 16).map(lambda k: k * W // 2)
    n_users = draw(st.integers(1, 3))
    n_imps = draw(st.integers(0, max_impressions))
    keys: set[tuple[str, str]] = set()
    events: list[Event] = []
    for _ in range(n_imps):
        user = f"u{draw(st.integers(0, n_users - 1))}"
        iid = f"i{draw(st.integers(0, 9))}"
        if (user, iid) in keys:
            continue
        keys.add((user, iid))
        ts = draw(anchors) + draw(st.integers(0, 6))
        events.extend([imp(iid, ts, user=user)] * draw(st.integers(1, 2)))
        delay = draw(
            st.none()
            | st.sampled_from([-W, -1, 0, 1, W - 1, W, W + 1, W + lateness, 2 * W + lateness])
            | st.integers(-W, 2 * W + lateness)
            | st.integers(-3, 3)
        )
        if delay is not None:
            events.extend([click(iid, ts + delay, user=user)] * draw(st.integers(1, 3)))
    for n in range(draw(st.integers(0, 3))):
        user = f"u{draw(st.integers(0, n_users - 1))}"
        iid = f"x{n}"  # never an impression id
        cts = draw(anchors) + draw(st.integers(0, 6))
        events.extend([click(iid, cts, user=user)] * draw(st.integers(1, 2)))
    jitter = [draw(st.integers(0, lateness)) for _ in events]
    tiebreak = draw(st.permutations(range(len(events))))
    order = sorted(range(len(events)), key=lambda k: (events[k].ts + jitter[k], tiebreak[k]))
    arrived = [events[k] for k in order]
    top = None
    for event in arrived:  # the premise of the oracle agreement, checked, not assumed
        assert top is None or event.ts >= top - lateness
        top = event.ts if top is None else max(top, event.ts)
    refs: list[object] = [[0, n] for n in range(len(arrived))]  # JSON-native, like offsets
    return Stream(arrived, refs, W, lateness)
