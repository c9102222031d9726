"""Scenario: validation with clear messages, derived values, round trip."""

from __future__ import annotations

import math

import pytest

from worker.core.errors import ConfigError
from worker.sim.scenario import Arm, Scenario, Segment


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_events": -1}, "n_events must be an integer >= 0; got -1"),
        ({"n_users": 0}, "n_users must be an integer >= 1; got 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0; got 1.5"),
        ({"temperature": 0}, "temperature must be a finite number > 0; got 0"),
        ({"temperature": math.nan}, "temperature must be a finite number > 0; got nan"),
        ({"temperature": True}, "temperature must be a finite number > 0; got True"),
        ({"ctr_alpha": -2}, "ctr_alpha must be a finite number > 0; got -2"),
        ({"duplicate_share": 1.5}, "duplicate_share must be a number in [0, 1]; got 1.5"),
        ({"orphan_click_share": 0.6}, "orphan_click_share must be a number in [0, 0.5]"),
        ({"score_field": "prob"}, "score_field must be one of"),
        ({"drift_at_event": 20, "n_events": 10}, "drift_at_event must be <= n_events (10)"),
        ({"drift_temperature": 2.0}, "need drift_at_event"),
        ({"segments": (("a", 0.5), ("b", 0.4))}, "segment shares must sum to 1; got 0.9"),
        ({"segments": (("new", 1.0),)}, "segment name 'new' is reserved"),
        ({"arms": ("x", "x")}, "arm names must be unique"),
        ({"late_click_share": 0.6, "skew_share": 0.5}, "late_click_share + skew_share"),
        ({"new_user_share": 1.0}, "new_user_share must be a number in [0, 1)"),
        ({"n_users": 1, "new_user_share": 0.9}, "leaves no established user"),
        ({"reorder_within_ms": -5}, "reorder_within_ms must be an integer >= 0; got -5"),
    ],
)
def test_invalid_values_fail_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_arms_and_segments_accept_plain_tuples() -> None:
    sc = Scenario(arms=(("x", 0.5), "y"), segments=(("a", 0.25), ("b", 0.75, 0.1, -0.2)))
    assert sc.arms == (Arm("x", 0.5), Arm("y", 0.0))
    assert sc.segments == (Segment("a", 0.25), Segment("b", 0.75, 0.1, -0.2))


def test_round_trip_through_json_dict() -> None:
    sc = Scenario(n_events=123, drift_at_event=50, drift_temperature=0.7, score_field="both")
    assert Scenario.from_dict(sc.to_dict()) == sc
    with pytest.raises(ConfigError, match="unknown scenario keys"):
        Scenario.from_dict({**sc.to_dict(), "temprature": 2})


def test_derived_values() -> None:
    sc = Scenario(ctr_alpha=1, ctr_beta=24, n_users=1_000, new_user_share=0.1)
    assert sc.nominal_ctr == pytest.approx(0.04)
    assert sc.n_new_users == 100
    # Logit-normal effects pull a low CTR up a little, never by much at these spreads.
    assert sc.nominal_ctr < sc.expected_ctr() < sc.nominal_ctr * 1.15
    drift = Scenario(n_events=10, temperature=1.6, bias=0.1, drift_at_event=4, drift_bias=-1)
    assert drift.temperature_bias_at(3) == (1.6, 0.1)
    assert drift.temperature_bias_at(4) == (1.6, -1.0)
