"""Logit-affine calibrator algebra (worker/core/policy/_affine.py) against applying the maps."""

from __future__ import annotations

import numpy as np
import pytest

from worker.core.calibrators import calibrator_from_dict
from worker.core.policy._affine import affine_of, compose, residual_of

Z = np.linspace(-6.0, 4.0, 41)
PLATT = {"method": "platt", "params": {"a": 0.8, "b": -0.6}}
TEMP = {"method": "temperature", "params": {"temperature": 1.6}}
IDENT = {"method": "identity", "params": {}}


def apply(cal: dict, z: np.ndarray) -> np.ndarray:
    return np.asarray(calibrator_from_dict(cal).apply_logit(z))


@pytest.mark.parametrize("child", [PLATT, TEMP, IDENT])
@pytest.mark.parametrize("parent", [PLATT, TEMP, IDENT])
def test_parent_composed_with_the_residual_is_the_child(child: dict, parent: dict) -> None:
    r = residual_of(child, parent)
    assert r is not None
    back = compose(parent, r)
    assert back is not None
    np.testing.assert_allclose(apply(back, Z), apply(child, Z), rtol=1e-12, atol=1e-15)


def test_residual_is_applied_to_the_logit_before_the_parent() -> None:
    # A segment whose model logits are offset by +0.6: its calibrator removes the offset.
    seg = {"method": "platt", "params": {"a": 1.0, "b": -0.6}}
    r = residual_of(seg, IDENT)
    assert r == pytest.approx((1.0, -0.6))
    # The model turns over-confident (logit = 1.6 * true + 0.6): the new global is T = 1.6,
    # and the carried-over segment map is (z - 0.6) / 1.6 exactly.
    carried = compose(TEMP, r)
    assert carried is not None and carried["method"] == "platt"
    np.testing.assert_allclose(apply(carried, Z), 1 / (1 + np.exp(-(Z - 0.6) / 1.6)), rtol=1e-12)


def test_identity_residual_gives_back_the_parent_itself() -> None:
    assert compose(TEMP, (1.0, 0.0)) == TEMP
    assert compose(TEMP, residual_of(TEMP, TEMP)) == {  # type: ignore[arg-type]
        "method": "temperature", "params": {"temperature": 1.6}
    }


def test_non_affine_maps_have_no_residual() -> None:
    iso = {"method": "isotonic", "params": {"x": [-1.0, 1.0], "y": [0.1, 0.9]}}
    assert affine_of(iso) is None
    assert residual_of(iso, TEMP) is None and residual_of(PLATT, iso) is None
    assert compose(iso, (1.0, 0.0)) is None
    # A parent that flattens every score carries nothing, nor does a reversing residual.
    flat = {"method": "platt", "params": {"a": 0.0, "b": -1.0}}
    assert residual_of(PLATT, flat) is None
    assert residual_of({"method": "platt", "params": {"a": -1.0, "b": 0.0}}, IDENT) is None
