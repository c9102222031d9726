"""EventRing state: the packed columns round-trip exactly, the older list form still loads,
and damaged state is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.errors import StateError
from worker.core.sketches.event_ring import EventRing


def _ring(values: list[tuple[float, int, int, int]], capacity: int) -> EventRing:
    ring = EventRing(capacity)
    for z, y, ts, seg in values:
        ring.append(z, y, ts, seg=seg)
    return ring


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.floats(min_value=-40.0, max_value=40.0, allow_nan=False),
            st.integers(0, 1),
            st.integers(0, 2**53),
            st.integers(0, 1000),
        ),
        max_size=80,
    ),
    capacity=st.integers(1, 50),
)
def test_packed_state_round_trips_every_bit(
    values: list[tuple[float, int, int, int]], capacity: int
) -> None:
    ring = _ring(values, capacity)
    back = EventRing.from_dict(ring.to_dict())
    for mine, theirs in zip(ring.columns(), back.columns(), strict=True):
        assert mine.dtype == theirs.dtype
        assert mine.tobytes() == theirs.tobytes()
    # It goes on appending where the original would.
    ring.append(0.25, 1, 9, seg=3)
    back.append(0.25, 1, 9, seg=3)
    assert ring.columns()[3].tolist() == back.columns()[3].tolist()


def test_the_older_list_form_still_loads() -> None:
    ring = _ring([(0.5, 1, 10, 2), (-1.25, 0, 20, 0)], 4)
    z, y, ts, seq, seg = ring.columns()
    legacy = {"capacity": 4, "z": z.tolist(), "y": y.astype(int).tolist(), "ts": ts.tolist(),
              "seq": seq.tolist(), "seg": seg.tolist()}
    restored = EventRing.from_dict(legacy)
    assert [c.tolist() for c in restored.columns()] == [c.tolist() for c in ring.columns()]


@pytest.mark.parametrize("damage", [
    lambda d: d.update(z="not base64!"),
    lambda d: d.update(ts=[1, 2]),
    lambda d: d.update(y=d["y"][:-4]),
    lambda d: d.pop("seq"),
])
def test_damaged_packed_state_is_refused(damage: object) -> None:
    data = _ring([(0.5, 1, 10, 2), (-1.25, 0, 20, 0)], 4).to_dict()
    damage(data)  # type: ignore[operator]
    with pytest.raises(StateError):
        EventRing.from_dict(data)


def test_a_full_ring_packs_each_column_into_one_string() -> None:
    """The reason for the packed form: a full 5,000-event ring is one string per column."""
    rng = np.random.default_rng(1)
    ring = _ring([(float(z), int(z > 0), 1_767_225_600_000 + i, i % 3)
                  for i, z in enumerate(rng.normal(size=5_000))], 5_000)
    data = ring.to_dict()
    assert all(isinstance(data[c], str) for c in ("z", "y", "ts", "seq", "seg"))
    assert len(EventRing.from_dict(data)) == 5_000
