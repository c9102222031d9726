"""Calibrators: DESIGN §3 formulas, parameter validation, serialisation, the factory."""

from __future__ import annotations

import doctest
import importlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.calibrators import (
    Calibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    calibrator_from_dict,
    is_monotone_increasing,
)
from worker.core.errors import ConfigError, InvalidInputError

SCORES = np.array(
    [0.0, 1e-12, 1e-6, 3e-6, 0.001, 0.05, 0.2, 0.5, 0.73, 0.999, 1 - 1e-6, 1 - 1e-9, 1.0]
)


def design_z(score: float) -> float:
    """DESIGN §3, written out independently: z = logit(clip(score, 1e-6, 1 - 1e-6))."""
    p = min(max(score, 1e-6), 1 - 1e-6)
    return math.log(p) - math.log(1 - p)


def design_sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


EXAMPLES: list[Calibrator] = [
    IdentityCalibrator(),
    TemperatureCalibrator(1.6),
    TemperatureCalibrator(0.4),
    PlattCalibrator(0.7, -0.3),
    PlattCalibrator(-0.2, 1.5),
    IsotonicCalibrator([0.0, 0.1, 0.4, 0.9], [0.01, 0.05, 0.3, 0.95]),
    IsotonicCalibrator([0.3], [0.2]),
]


def design_formula(cal: Calibrator, score: float) -> float:
    if isinstance(cal, IdentityCalibrator):
        return score
    if isinstance(cal, TemperatureCalibrator):
        return design_sigmoid(design_z(score) / cal.params()["temperature"])
    if isinstance(cal, PlattCalibrator):
        prm = cal.params()
        return design_sigmoid(prm["a"] * design_z(score) + prm["b"])
    assert isinstance(cal, IsotonicCalibrator)
    x, y = cal.params()["x"], cal.params()["y"]
    if score <= x[0]:
        return y[0]
    if score >= x[-1]:
        return y[-1]
    j = next(i for i in range(1, len(x)) if score <= x[i])
    t = (score - x[j - 1]) / (x[j] - x[j - 1])
    return y[j - 1] + t * (y[j] - y[j - 1])


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("cal", EXAMPLES, ids=repr)
def test_apply_matches_design_formula(cal):
    got = cal.apply(SCORES)
    assert isinstance(got, np.ndarray) and got.shape == SCORES.shape
    want = np.array([design_formula(cal, float(s)) for s in SCORES])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    for s in SCORES:
        one = cal.apply(float(s))
        assert isinstance(one, float)
        assert one == pytest.approx(design_formula(cal, float(s)), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("cal", EXAMPLES, ids=repr)
def test_apply_logit_is_apply_on_the_model_probability(cal):
    z = np.linspace(-10, 10, 41)
    got = cal.apply_logit(z)
    if isinstance(cal, TemperatureCalibrator):
        want = 1.0 / (1.0 + np.exp(-z / cal.temperature))
    elif isinstance(cal, PlattCalibrator):
        want = 1.0 / (1.0 + np.exp(-(cal.a * z + cal.b)))
    elif isinstance(cal, IdentityCalibrator):
        want = 1.0 / (1.0 + np.exp(-z))
    else:
        want = np.interp(1.0 / (1.0 + np.exp(-z)), cal.x, cal.y)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert isinstance(cal.apply_logit(0.25), float)
    # Inside the clip range, apply(score) == apply_logit(logit(score)).
    s = np.array([0.01, 0.3, 0.9])
    np.testing.assert_allclose(cal.apply(s), cal.apply_logit(np.log(s / (1 - s))), rtol=1e-12)


def test_identity_returns_unclipped_score_and_copies():
    s = np.array([0.0, 0.5, 1.0])
    out = IdentityCalibrator().apply(s)
    np.testing.assert_array_equal(out, s)
    out[0] = 9.0
    assert s[0] == 0.0


@settings(max_examples=50, deadline=None)
@given(
    t=st.floats(0.05, 20),
    a=st.floats(0.01, 5),
    b=st.floats(-5, 5),
    scores=st.lists(st.floats(0, 1), min_size=2, max_size=30),
)
def test_calibrators_are_monotone_in_the_score(t, a, b, scores):
    s = np.sort(np.array(scores))
    iso = IsotonicCalibrator([0.1, 0.5, 0.6], [0.0, 0.5, 0.5])
    for cal in (TemperatureCalibrator(t), PlattCalibrator(a, b), iso, IdentityCalibrator()):
        out = cal.apply(s)
        assert (np.diff(out) >= 0).all()
        assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("cal", EXAMPLES, ids=repr)
@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.0000001, float("inf")])
def test_bad_scores_are_invalid_input(cal, bad):
    with pytest.raises(InvalidInputError) as info:
        cal.apply(bad)
    assert info.value.reason == "score_range"
    with pytest.raises(InvalidInputError):
        cal.apply(np.array([0.5, bad]))


@pytest.mark.parametrize("cal", EXAMPLES, ids=repr)
def test_bad_logits_are_invalid_input(cal):
    with pytest.raises(InvalidInputError) as info:
        cal.apply_logit(float("nan"))
    assert info.value.reason == "score_range"
    with pytest.raises(InvalidInputError):
        cal.apply_logit(np.array([0.0, float("inf")]))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf"), True, "1.5", None])
def test_temperature_rejects_bad_values(t):
    with pytest.raises(ConfigError):
        TemperatureCalibrator(t)


@pytest.mark.parametrize(("a", "b"), [(float("nan"), 0.0), (1.0, float("inf")), ("1", 0.0)])
def test_platt_rejects_bad_values(a, b):
    with pytest.raises(ConfigError):
        PlattCalibrator(a, b)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([0.2, 0.1], [0.1, 0.2]),  # x decreasing
        ([0.1, 0.1], [0.1, 0.2]),  # x not strictly increasing
        ([0.1, 0.2], [0.3, 0.2]),  # y decreasing
        ([-0.1, 0.2], [0.1, 0.2]),  # x outside [0, 1]
        ([0.1, 1.2], [0.1, 0.2]),
        ([0.1, 0.2], [0.1, 1.5]),  # y outside [0, 1]
        ([0.1, 0.2], [0.1]),  # lengths differ
        ([], []),
        ([0.1, float("nan")], [0.1, 0.2]),
        ([[0.1, 0.2]], [[0.1, 0.2]]),
        (["a"], [0.1]),
    ],
)
def test_isotonic_rejects_bad_breakpoints(x, y):
    with pytest.raises(ConfigError):
        IsotonicCalibrator(x, y)


def test_isotonic_breakpoints_are_read_only():
    cal = IsotonicCalibrator([0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ValueError):
        cal.x[0] = 0.5


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("cal", EXAMPLES, ids=repr)
def test_to_dict_round_trips_through_json_and_factory(cal):
    d = cal.to_dict()
    assert set(d) == {"method", "params"}
    back = calibrator_from_dict(json.loads(json.dumps(d)))
    assert type(back) is type(cal)
    assert back == cal
    assert back.params() == cal.params()
    np.testing.assert_array_equal(back.apply(SCORES), cal.apply(SCORES))
    assert type(cal).from_params(d["params"]) == cal


def test_params_are_exactly_the_design_table():
    assert IdentityCalibrator().params() == {}
    assert TemperatureCalibrator(2).params() == {"temperature": 2.0}
    assert PlattCalibrator(1, -2).params() == {"a": 1.0, "b": -2.0}
    assert IsotonicCalibrator([0, 1], [0, 1]).params() == {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    for cal in EXAMPLES:
        json.dumps(cal.to_dict(), allow_nan=False)


def test_factory_accepts_a_whole_version_message():
    msg = {
        "model_id": "m",
        "scope": "global",
        "version": 3,
        "method": "temperature",
        "params": {"temperature": 1.25},
        "metrics": {},
    }
    assert calibrator_from_dict(msg) == TemperatureCalibrator(1.25)


@pytest.mark.parametrize(
    "data",
    [
        {"method": "beta", "params": {}},
        {"method": None, "params": {}},
        {"params": {}},
        {"method": "platt"},
        {"method": "platt", "params": {"a": 1.0}},
        {"method": "platt", "params": {"a": 1.0, "b": 0.0, "c": 1.0}},
        {"method": "platt", "params": [1.0, 0.0]},
        {"method": "temperature", "params": {"temperature": -1}},
        {"method": "identity", "params": {"x": 1}},
        {"method": "isotonic", "params": {"x": [0.5, 0.4], "y": [0.1, 0.2]}},
        {"method": "isotonic", "params": {"x": "0.5", "y": [0.1]}},
        ["platt"],
    ],
)
def test_factory_rejects_malformed_dicts_as_invalid_input(data):
    with pytest.raises(InvalidInputError) as info:
        calibrator_from_dict(data)
    assert info.value.reason == "schema"


def test_equality_and_hash():
    assert TemperatureCalibrator(2.0) == TemperatureCalibrator(2)
    assert TemperatureCalibrator(2.0) != PlattCalibrator(0.5, 0.0)
    assert len({TemperatureCalibrator(2.0), TemperatureCalibrator(2.0), IdentityCalibrator()}) == 2


@pytest.mark.parametrize(
    "name",
    [
        "calibrator",
        "identity",
        "temperature",
        "platt",
        "isotonic",
        "factory",
        "eligibility",
        "hierarchical_shrinkage",
        "monotone",
    ],
)
def test_doctests(name):
    module = importlib.import_module(f"worker.core.calibrators.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_is_monotone_increasing_is_the_design_rule():
    """DESIGN §3: T > 0, a > 0, isotonic non-decreasing; the constructors stay lenient."""
    ok = [
        IdentityCalibrator(),
        TemperatureCalibrator(0.01),
        TemperatureCalibrator(100.0),
        PlattCalibrator(1e-9, -3.0),
        PlattCalibrator(2.5, 0.4),
        IsotonicCalibrator([0.3], [0.2]),
        IsotonicCalibrator([0.0, 0.5, 1.0], [0.1, 0.1, 0.9]),
    ]
    bad = [PlattCalibrator(0.0, -1.0), PlattCalibrator(-0.029, -3.1), PlattCalibrator(-2, 0)]
    assert all(is_monotone_increasing(c) for c in ok)
    assert not any(is_monotone_increasing(c) for c in bad)
    # Old messages with a non-positive slope still load (serving must read them).
    assert calibrator_from_dict({"method": "platt", "params": {"a": -0.029, "b": -3.1}})


def test_is_monotone_increasing_refuses_unknown_methods():
    # A future method (e.g. contextual) is not published until the predicate knows it.
    class Other(Calibrator):
        method = "other"

        def params(self):
            return {}

        def apply_logit(self, z):
            return -z

        @classmethod
        def from_params(cls, params):
            return cls()

        @classmethod
        def fit(cls, z, y, weights=None):
            return cls()

    assert not is_monotone_increasing(Other())
