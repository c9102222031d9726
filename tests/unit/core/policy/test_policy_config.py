"""PolicyConfig: every knob validated at construction, JSON round trip."""

from __future__ import annotations

import json

import pytest

from worker.core.errors import ConfigError
from worker.core.policy import PolicyConfig


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("recalibrate_every", 0),
        ("recalibrate_every", 1.5),
        ("recalibrate_every", True),
        ("holdout_fraction", 0.0),
        ("holdout_fraction", 1.0),
        ("holdout_fraction", float("nan")),
        ("half_life_ms", 0),
        ("half_life_ms", float("inf")),
        ("recent_window", 0),
        ("train_buffer", 10),  # < recent_window
        ("z", -1.0),
        ("user_z", 0),
        ("min_improvement", -1e-3),
        ("refine_factor", 1.0),
        ("change_alpha", 0.0),
        ("drift_alpha", 1.0),
        ("methods", ("temperature", "beta")),
        ("methods", ("platt", "platt")),
        ("isotonic_floor", 0.5),
        ("gate_min_days", -1),
        ("max_users", 0),
        ("holdout_salt", 3),
    ],
)
def test_invalid_knobs_raise_config_error(knob: str, value: object) -> None:
    with pytest.raises(ConfigError, match=knob):
        PolicyConfig(**{knob: value})


def test_defaults_follow_the_design() -> None:
    cfg = PolicyConfig()
    assert cfg.recalibrate_every == 1000  # DESIGN §5
    assert cfg.holdout_fraction == 0.2
    assert cfg.z == 2.0
    assert cfg.methods == ("temperature", "platt", "isotonic")


def test_round_trip_through_json() -> None:
    cfg = PolicyConfig(recalibrate_every=250, half_life_ms=None, refine_factor=None,
                       methods=("platt",))
    again = PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown"):
        PolicyConfig.from_dict({**cfg.to_dict(), "recalibrate_evry": 5})
