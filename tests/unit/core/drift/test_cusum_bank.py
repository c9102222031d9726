"""`CusumBank.step2` and `step4` are `step` for a bank of two and of four, float for float."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.drift._cusum import CusumBank

increments = st.lists(
    st.tuples(st.floats(-3.0, 3.0), st.floats(-3.0, 3.0)), min_size=1, max_size=300
)


@settings(max_examples=200, deadline=None)
@given(increments, st.floats(0.5, 8.0))
def test_step2_equals_step(incs: list[tuple[float, float]], threshold: float) -> None:
    generic = CusumBank(("up", "down"), threshold)
    unrolled = CusumBank(("up", "down"), threshold)
    for a, b in incs:
        assert generic.step((a, b)) == unrolled.step2(a, b)
        assert generic.state() == unrolled.state()
    assert generic.alarms == unrolled.alarms


def test_ties_fire_the_first_direction_like_step() -> None:
    generic = CusumBank(("up", "down"), 1.0)
    unrolled = CusumBank(("up", "down"), 1.0)
    assert generic.step((2.0, 2.0)) and unrolled.step2(2.0, 2.0)
    assert generic.direction == unrolled.direction == "up"


four = st.lists(st.tuples(*[st.floats(-3.0, 3.0)] * 4), min_size=1, max_size=300)
DIRECTIONS4 = ("mean_up", "mean_down", "spread_up", "spread_down")


@settings(max_examples=200, deadline=None)
@given(four, st.floats(0.5, 8.0))
def test_step4_equals_step(incs: list[tuple[float, float, float, float]], threshold: float) -> None:
    generic = CusumBank(DIRECTIONS4, threshold)
    unrolled = CusumBank(DIRECTIONS4, threshold)
    for row in incs:
        assert generic.step(row) == unrolled.step4(*row)
        assert generic.state() == unrolled.state()
        assert generic.direction == unrolled.direction
    assert generic.alarms == unrolled.alarms


def test_step4_ties_fire_the_first_largest_direction_like_step() -> None:
    generic = CusumBank(DIRECTIONS4, 1.0)
    unrolled = CusumBank(DIRECTIONS4, 1.0)
    assert generic.step((0.5, 2.0, 2.0, 1.0)) and unrolled.step4(0.5, 2.0, 2.0, 1.0)
    assert generic.direction == unrolled.direction == "mean_down"
