"""The one sigmoid and logit clamp of the core: scalar and array forms agree to the bit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from worker.core.mathfn import (
    P_EPS,
    Z_MAX,
    clamp_logit,
    clamp_logit_array,
    sigmoid,
    sigmoid_array,
)

FINITE = st.floats(allow_nan=False, allow_infinity=False)
EXTREMES = [0.0, -0.0, 1e-300, -1e-300, 36.0, -36.0, 709.0, -709.0, 709.79, -709.79, 745.2,
            -745.2, 1e308, -1e308, Z_MAX, -Z_MAX]


def test_scalar_and_array_sigmoid_agree_bitwise_with_expit() -> None:
    z = np.concatenate([np.random.default_rng(0).normal(0.0, 6.0, 20_000), EXTREMES])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings anywhere
        arr = sigmoid_array(z)
        scalars = np.array([sigmoid(float(v)) for v in z])
    assert np.array_equal(arr, scalars)
    assert np.array_equal(arr, scipy.special.expit(z))


@given(FINITE)
def test_sigmoid_is_a_probability_and_matches_the_array_form(x: float) -> None:
    p = sigmoid(x)
    assert 0.0 <= p <= 1.0
    assert p == float(sigmoid_array(x))


def test_sigmoid_array_keeps_the_shape_of_a_scalar() -> None:
    assert sigmoid_array(0.0).shape == ()
    assert sigmoid_array([[0.0, 1.0]]).shape == (1, 2)


def test_z_max_is_the_design_clip() -> None:
    assert Z_MAX == math.log((1.0 - P_EPS) / P_EPS) == math.log(1e6 - 1.0)
    assert sigmoid(-Z_MAX) == pytest.approx(P_EPS, rel=1e-9)


@given(FINITE)
def test_clamp_scalar_and_array_agree(z: float) -> None:
    c = clamp_logit(z)
    assert -Z_MAX <= c <= Z_MAX
    assert c == float(clamp_logit_array(z))
    assert c == (z if abs(z) <= Z_MAX else math.copysign(Z_MAX, z))


def test_clamp_passes_nan_through() -> None:
    assert math.isnan(clamp_logit(math.nan))
    assert math.isnan(float(clamp_logit_array(math.nan)))
