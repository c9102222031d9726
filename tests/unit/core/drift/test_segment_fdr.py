"""SegmentFdr: BH / BY / e-BH against references, and FDR control by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from tests.unit.core.drift.streams import calibrated, overconfident
from worker.core.drift import CalibrationCusum, SegmentFdr
from worker.core.errors import ConfigError, InvalidInputError


@pytest.mark.parametrize("arbitrary", [False, True])
def test_adjusted_p_values_match_scipy(arbitrary: bool) -> None:
    rng = np.random.default_rng(60)
    fdr = SegmentFdr(q=0.1, arbitrary_dependence=arbitrary)
    for _ in range(50):
        k = int(rng.integers(1, 40))
        p = np.where(rng.random(k) < 0.3, rng.random(k) ** 6, rng.random(k))
        names = {f"s{i}": float(v) for i, v in enumerate(p)}
        ref = false_discovery_control(p, method="by" if arbitrary else "bh")
        adj = fdr.adjusted(names)
        np.testing.assert_allclose([adj[f"s{i}"] for i in range(k)], ref, rtol=1e-12)
        assert set(fdr.select(names)) == {f"s{i}" for i in range(k) if ref[i] <= 0.1}


def test_e_bh_matches_definition() -> None:
    rng = np.random.default_rng(61)
    fdr = SegmentFdr(q=0.2)
    for _ in range(50):
        k = int(rng.integers(1, 30))
        e = rng.exponential(1.0, k) * np.where(rng.random(k) < 0.3, 50.0, 1.0)
        chosen = fdr.select_e({f"s{i}": float(v) for i, v in enumerate(e)})
        # e-BH = BH on p = 1/e (Wang and Ramdas, 2022).
        ref = false_discovery_control(np.minimum(1.0, 1.0 / e), method="bh")
        assert set(chosen) == {f"s{i}" for i in range(k) if ref[i] <= 0.2}


def test_bh_controls_fdr_on_exact_p_values() -> None:
    rng = np.random.default_rng(62)
    fdr = SegmentFdr(q=0.1)
    fdps = []
    for _ in range(2_000):
        null = rng.random(40)
        alt = rng.beta(0.05, 1.0, 10)
        chosen = fdr.select(
            {
                **{f"n{i}": v for i, v in enumerate(null.tolist())},
                **{f"a{i}": v for i, v in enumerate(alt.tolist())},
            }
        )
        fdps.append(sum(c.startswith("n") for c in chosen) / max(1, len(chosen)))
    # Theory: FDR = q * 40 / 50 = 0.08.
    assert np.mean(fdps) == pytest.approx(0.08, abs=0.015)


def test_fdr_across_segments_with_cusum_detectors() -> None:
    # 90 calibrated segments and 10 that turn overconfident at event 1,500 of 3,000, per rep.
    fdr = SegmentFdr(q=0.1)
    fdps, power, e_fdps, e_power = [], [], [], []
    # Measured: realised FDR ~0.005 (the union-bound p-values are conservative), power 1.0.
    for rep in range(10):
        p_values, e_values = {}, {}
        for seg in range(100):
            seed = 70_000 + rep * 100 + seg
            drifted = seg < 10
            if drifted:
                p, y = overconfident(seed, 3_000, "ctr20", 1_500, temperature=1.6)
            else:
                p, y = calibrated(seed, 3_000, "ctr20")
            det = CalibrationCusum()
            det.update_many(p, y)
            p_values[f"s{seg}"] = det.cusum_p_value
            # e-values: evidence since the last refit, i.e. since the change here.
            det_e = CalibrationCusum()
            det_e.update_many(p[1_500:], y[1_500:])
            e_values[f"s{seg}"] = det_e.e_value
        for chosen, fd, pw in (
            (fdr.select(p_values), fdps, power),
            (fdr.select_e(e_values), e_fdps, e_power),
        ):
            false = sum(int(c[1:]) >= 10 for c in chosen)
            fd.append(false / max(1, len(chosen)))
            pw.append((len(chosen) - false) / 10)
    assert np.mean(fdps) <= 0.1 and np.mean(e_fdps) <= 0.1
    assert np.mean(power) >= 0.8 and np.mean(e_power) >= 0.8, (np.mean(power), np.mean(e_power))


def test_static_helpers() -> None:
    assert SegmentFdr.cusum_p_value(0.0, 100, 2) == 1.0
    assert SegmentFdr.cusum_p_value(20.0, 0, 2) == 1.0
    assert SegmentFdr.cusum_p_value(20.0, 1_000, 2) == pytest.approx(2_000 * math.exp(-20))
    assert SegmentFdr.ville_p_value(10.0, 2) == pytest.approx(2 * math.exp(-10))
    assert SegmentFdr.ville_p_value(-3.0) == 1.0
    assert SegmentFdr().select({}) == [] and SegmentFdr().select_e({}) == []


def test_validation() -> None:
    for q in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ConfigError):
            SegmentFdr(q=q)
    with pytest.raises(InvalidInputError):
        SegmentFdr().select({"a": 1.5})
    with pytest.raises(InvalidInputError):
        SegmentFdr().select({"a": math.nan})
    with pytest.raises(InvalidInputError):
        SegmentFdr().select_e({"a": -1.0})
    assert SegmentFdr().select_e({"a": math.inf}) == ["a"]
