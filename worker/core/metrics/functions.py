"""Calibration metrics as functions of arrays or of per-bin aggregates (DESIGN §5).

Binning. ``n_bins`` equal-width bins on [0, 1] with edges exactly ``k / n_bins`` (Python's /,
so ``p == 1/15`` as typed lands on an edge), right-closed: bin ``b`` is
``(b / n_bins, (b + 1) / n_bins]`` and ``p == 0`` goes to bin 0. This is the convention of
scikit-learn's ``calibration_curve(strategy="uniform")``.

Everything is computed from a handful of per-bin sums (weight ``W_b``, weighted positives
``Y_b``, weighted score sum ``P_b``, ``sum w^2`` and ``sum w^2 p(1-p)``) plus four global sums,
so the batch function and the streaming ``OnlineCalibration`` share one implementation and
agree to rounding.

ECE point estimate and confidence interval (``ece_debiased``, ``ece_ci``). All analytic, so
exact, deterministic, cheap and computable from aggregates. Bin ``b`` has weight share
``pi_b = W_b / n``, observed gap ``d_b = Y_b / W_b - P_b / W_b`` and a standard error
``s_b = sqrt(r (1 - r) / n_eff_b)``, where ``n_eff_b = W_b^2 / sum w^2`` (Kish) and ``r`` is the
bin's positive rate shrunk by half an event toward 1/2 (so a bin without positives still has
sampling noise). The estimand is the ECE of the true click probabilities given these scores,
``sum_b pi_b |delta_b|``. With ``d_b ~ N(delta_b, s_b^2)``, ``|d_b|`` is folded normal, whose
bias ``B(delta, s) = E|N(delta, s^2)| - |delta|`` is closed-form and decreasing in ``|delta|``
(from ``0.80 s`` at 0 to ~0 beyond ``2 s``).

- ``ece_debiased = max(0, ece - sum_b pi_b B(d_b, s_b))``: the parametric-bootstrap bias
  correction ``2 ece - E*[ece*]`` under the observed per-bin rates (Kumar et al. 2019,
  ``normal_debiased_ce``), with ``E*`` evaluated exactly instead of by resampling.
- ``ece_ci``: the plug-in bias correction is too small when the true gaps are near 0 (the
  resulting interval covers a perfectly calibrated model's ECE of 0 only ~55% of the time), so
  the interval brackets the bias instead. ``lo = ece - sum_b pi_b B(d-_b, s_b) - z sd`` with
  ``d-_b = max(0, |d_b| - c s_b)`` and ``hi = ece - sum_b pi_b B(d+_b, s_b) + z sd`` with
  ``d+_b = |d_b| + c s_b``, both clipped at 0; ``z`` is the two-sided normal quantile of
  ``ci_level``, ``c`` the one-sided one, and ``sd = sqrt(sum_b pi_b^2 Var|N(d_b, s_b^2)|)``
  (reported as ``ece_se``, the standard error of the plug-in ``ece``).
  Since ``d-_b`` is a lower confidence bound on ``|delta_b|``, the subtracted bias is an upper
  bound on the true one with high probability, and vice versa for ``hi``. By simulation
  (scores ~ Beta(2, 8), n from 200 to 50,000, calibrated to strongly miscalibrated, one bin
  off) the 95% interval covers 93-100%, each side erring at most ~5%; it is wider than the
  plain bootstrap interval by about the noise floor when the model is nearly calibrated.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

from worker.core.errors import ConfigError, InvalidInputError
from worker.core.metrics.calibration_report import CalibrationReport
from worker.core.metrics.reliability_bin import ReliabilityBin

LOG_LOSS_EPS = 1e-15
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
# Sub-bins per ECE bin for the null simulation: replacing each p by its sub-bin mean keeps
# every bin's expected positives exact and inflates the variance by at most (1/960)^2 / 12 per
# event, far below Monte Carlo error, while costing O(n_bins * 64) draws per simulation.
_SIM_SUBBINS = 64
# Events per chunk of the vectorised sums (see _aggregate).
_CHUNK = 8192
# Beyond this many Bernoulli draws per chunk the weighted simulation is split up.
_SIM_CHUNK_DRAWS = 4_000_000

FloatArray = NDArray[np.float64]


class _Aggregates(NamedTuple):
    """The sufficient statistics of every metric (weights may be decayed)."""

    w: FloatArray  # per bin: sum w
    wy: FloatArray  # per bin: sum w y
    wp: FloatArray  # per bin: sum w p
    w2: FloatArray  # per bin: sum w^2
    w2pq: FloatArray  # per bin: sum w^2 p (1 - p)
    brier: float  # sum w (y - p)^2
    nll: float  # sum w * log loss
    sp_num: float  # sum w (y - p)(1 - 2p)
    sp_var: float  # sum w^2 (1 - 2p)^2 p (1 - p)


# --------------------------------------------------------------------------- validation


def check_n_bins(n_bins: int) -> int:
    """Validate the number of ECE bins (a hyper-parameter, hence ``ConfigError``)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    return int(n_bins)


def _check_level(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ConfigError(f"{name} must be a number in (0, 1); got {value!r}")
    return float(value)


def _as_1d(name: str, values: ArrayLike) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("schema", f"{name} must be an array of numbers; got {exc}") from exc
    if arr.ndim != 1:
        raise InvalidInputError("schema", f"{name} must be 1-dimensional; got shape {arr.shape}")
    return arr


def _check_inputs(
    p: ArrayLike, y: ArrayLike, weights: ArrayLike | None
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    pa = _as_1d("score", p)
    ya = _as_1d("label", y)
    if ya.shape != pa.shape:
        raise InvalidInputError(
            "schema", f"labels must match scores in length; got {ya.size} and {pa.size}"
        )
    bad = ~((pa >= 0.0) & (pa <= 1.0))  # also catches NaN
    if bad.any():
        raise InvalidInputError(
            "score_range", f"score must be a finite number in [0, 1]; got {float(pa[bad][0])!r}"
        )
    bad = (ya != 0.0) & (ya != 1.0)
    if bad.any():
        raise InvalidInputError("schema", f"label must be 0 or 1; got {float(ya[bad][0])!r}")
    if weights is None:
        return pa, ya, None
    wa = _as_1d("weight", weights)
    if wa.shape != pa.shape:
        raise InvalidInputError(
            "schema", f"weights must match scores in length; got {wa.size} and {pa.size}"
        )
    bad = ~((wa >= 0.0) & (wa < math.inf))
    if bad.any():
        raise InvalidInputError(
            "schema", f"weight must be a finite number >= 0; got {float(wa[bad][0])!r}"
        )
    return pa, ya, wa


# --------------------------------------------------------------------------- binning


def ece_bin_edges(n_bins: int = 15) -> FloatArray:
    """The bin edges ``k / n_bins`` for ``k = 0..n_bins``.

    >>> ece_bin_edges(3).tolist() == [0.0, 1 / 3, 2 / 3, 1.0]
    True
    """
    n_bins = check_n_bins(n_bins)
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def ece_bin_index(p: ArrayLike, n_bins: int = 15) -> NDArray[np.intp]:
    """The ECE bin of each score: right-closed bins, ``p == 0`` in bin 0.

    Scores are not validated here; values outside [0, 1] are clamped to the end bins.

    >>> ece_bin_index([0.0, 1 / 15, 0.07, 14 / 15, 1.0]).tolist()
    [0, 0, 1, 13, 14]
    """
    edges = ece_bin_edges(n_bins)
    pa = np.asarray(p, dtype=np.float64)
    scaled = pa * n_bins
    idx = np.ceil(scaled).astype(np.intp)
    idx -= 1
    np.clip(idx, 0, n_bins - 1, out=idx)
    # ceil(p * n_bins) can be off by one when p * n_bins rounds onto or off an integer; those
    # few scores are re-binned by searchsorted against the exact edges (edges[i-1] < p <=
    # edges[i]), which alone would be exact but 3-4x slower on 10^6 scores.
    near = np.flatnonzero(np.abs(scaled - np.rint(scaled)) < 1e-9)
    if near.size:
        exact = np.searchsorted(edges, pa[near], side="left") - 1
        idx[near] = np.clip(exact, 0, n_bins - 1)
    return idx


def _bsum(idx: NDArray[np.intp], values: FloatArray | None, n: int) -> FloatArray:
    """Per-bin sums (``np.bincount``, typed as float)."""
    return np.asarray(np.bincount(idx, values, minlength=n), dtype=np.float64)


def _aggregate_chunk(
    pa: FloatArray, ya: FloatArray, wa: FloatArray | None, n_bins: int
) -> _Aggregates:
    idx = ece_bin_index(pa, n_bins)
    pq = pa * (1.0 - pa)
    one_minus_2p = 1.0 - 2.0 * pa
    resid = ya - pa
    # For 0/1 labels the log loss is -log of the probability given to the observed label:
    # |(1 - y) - p| is p when y = 1 and 1 - p when y = 0 (cheaper than np.where). Flooring
    # that probability (rather than clipping p to [eps, 1 - eps], whose upper end is not
    # exactly representable) makes p = 0, y = 1 and p = 1, y = 0 both cost -log(1e-15), the
    # same as the scalar path of OnlineCalibration.
    loss = -np.log(np.maximum(np.abs((1.0 - ya) - pa), LOG_LOSS_EPS))
    if wa is None:
        w = _bsum(idx, None, n_bins)
        return _Aggregates(
            w=w,
            wy=_bsum(idx, ya, n_bins),
            wp=_bsum(idx, pa, n_bins),
            w2=w.copy(),
            w2pq=_bsum(idx, pq, n_bins),
            brier=float(resid @ resid),
            nll=float(loss.sum()),
            sp_num=float(resid @ one_minus_2p),
            sp_var=float(pq @ (one_minus_2p * one_minus_2p)),
        )
    w2 = wa * wa
    return _Aggregates(
        w=_bsum(idx, wa, n_bins),
        wy=_bsum(idx, wa * ya, n_bins),
        wp=_bsum(idx, wa * pa, n_bins),
        w2=_bsum(idx, w2, n_bins),
        w2pq=_bsum(idx, w2 * pq, n_bins),
        brier=float(wa @ (resid * resid)),
        nll=float(wa @ loss),
        sp_num=float(wa @ (resid * one_minus_2p)),
        sp_var=float(w2 @ (pq * one_minus_2p * one_minus_2p)),
    )


def _aggregate(pa: FloatArray, ya: FloatArray, wa: FloatArray | None, n_bins: int) -> _Aggregates:
    """The sums of ``_Aggregates`` over all events, in cache-sized chunks.

    Chunking is 2-3x faster than whole-array numpy on 10^6 events: ~64 KB temporaries stay in
    cache and below malloc's mmap threshold (no page faults), and BLAS dot products stay
    single-threaded, which matters on a busy machine.
    """
    if pa.size <= _CHUNK:
        return _aggregate_chunk(pa, ya, wa, n_bins)
    arrays = [np.zeros(n_bins) for _ in range(5)]
    scalars = [0.0] * 4
    for start in range(0, pa.size, _CHUNK):
        stop = start + _CHUNK
        part = _aggregate_chunk(
            pa[start:stop], ya[start:stop], None if wa is None else wa[start:stop], n_bins
        )
        for acc, arr in zip(arrays, part[:5], strict=True):
            acc += arr
        for k, v in enumerate(part[5:]):
            scalars[k] += v
    w, wy, wp, w2, w2pq = arrays
    brier, nll, sp_num, sp_var = scalars
    return _Aggregates(w, wy, wp, w2, w2pq, brier, nll, sp_num, sp_var)


# --------------------------------------------------------------------------- metrics


def _folded_normal_moments(mu: FloatArray, sigma: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Mean and variance of ``|X|`` for ``X ~ N(mu, sigma^2)``, ``sigma > 0``."""
    r = mu / sigma
    mean = sigma * SQRT_2_OVER_PI * np.exp(-0.5 * r * r) + mu * (1.0 - 2.0 * ndtr(-r))
    var = np.maximum(mu * mu + sigma * sigma - mean * mean, 0.0)
    return mean, var


def _fold_bias(delta: FloatArray, sigma: FloatArray) -> FloatArray:
    """``E|N(delta, sigma^2)| - |delta|``: the upward bias of an observed absolute gap."""
    return _folded_normal_moments(delta, sigma)[0] - np.abs(delta)


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _report(agg: _Aggregates, ci_level: float = 0.95) -> CalibrationReport:
    n_bins = agg.w.size
    edges = ece_bin_edges(n_bins)
    total = float(agg.w.sum())
    positives = float(agg.wy.sum())
    expected = float(agg.wp.sum())
    nonempty = agg.w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(nonempty, agg.wp / agg.w, np.nan)
        frac_pos = np.where(nonempty, agg.wy / agg.w, np.nan)
        # (sum w)^2 / sum w^2 >= 1 always; the floor only matters when decayed weights are
        # so small that their squares underflow to 0.
        n_eff = np.where(nonempty, agg.w * agg.w / agg.w2, 0.0)
        n_eff = np.where(nonempty & ~(n_eff >= 1.0), 1.0, n_eff)
    reliability = tuple(
        ReliabilityBin(
            float(edges[b]),
            float(edges[b + 1]),
            float(agg.w[b]),
            float(agg.wy[b]),
            float(mean_p[b]),
            float(frac_pos[b]),
        )
        for b in range(n_bins)
    )
    if not total > 0:
        nan = math.nan
        return CalibrationReport(
            n=total,
            positives=positives,
            expected=expected,
            n_bins=n_bins,
            ece=nan,
            ece_debiased=nan,
            ece_floor=nan,
            ece_ci=(nan, nan),
            ece_se=nan,
            ci_level=ci_level,
            mce=nan,
            brier=nan,
            nll=nan,
            debiased_l2_ece=nan,
            l2_ece_debiased=nan,
            citl_ratio=nan,
            citl_z=nan,
            spiegelhalter_z=nan,
            reliability=reliability,
        )

    w = agg.w[nonempty]
    share = w / total
    rate = frac_pos[nonempty]
    gap = rate - mean_p[nonempty]
    ne = n_eff[nonempty]
    # |Y_b - P_b| / total rather than share * |gap| keeps the sum exact for tiny bins.
    ece = float(np.abs(agg.wy - agg.wp).sum() / total)
    mce = float(np.abs(gap).max())
    floor = SQRT_2_OVER_PI * float(np.sqrt(np.maximum(agg.w2pq, 0.0)).sum()) / total

    # Bias-corrected estimate and interval (module docstring).
    shrunk = (rate * ne + 0.5) / (ne + 1.0)
    sigma = np.sqrt(shrunk * (1.0 - shrunk) / ne)
    absgap = np.abs(gap)
    fvar = _folded_normal_moments(absgap, sigma)[1]
    sd = math.sqrt(float((share * share) @ fvar))
    z = NormalDist().inv_cdf(0.5 + ci_level / 2.0)
    c = NormalDist().inv_cdf(ci_level)
    # B(delta, s) falls with |delta|: the smallest plausible gap gives the largest bias.
    bias_max = _fold_bias(np.maximum(absgap - c * sigma, 0.0), sigma)
    bias_min = _fold_bias(absgap + c * sigma, sigma)
    ece_debiased = max(ece - float(share @ _fold_bias(absgap, sigma)), 0.0)
    ci = (
        max(ece - float(share @ bias_max) - z * sd, 0.0),
        max(ece - float(share @ bias_min) + z * sd, 0.0),
    )

    # Kumar et al. (2019): subtract the unbiased estimate of Var(frac_pos) per bin; a bin
    # with fewer than 2 effective events cannot estimate it and contributes 0, as in their
    # reference code. The 1e-9 keeps integer-weighted n_eff == 2 in.
    ok = ne >= 2.0 - 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = np.where(ok, gap * gap - rate * (1.0 - rate) / (ne - 1.0), 0.0)
    l2_sq = float(share @ per_bin)

    citl_var = float(agg.w2pq.sum())
    return CalibrationReport(
        n=total,
        positives=positives,
        expected=expected,
        n_bins=n_bins,
        ece=ece,
        ece_debiased=ece_debiased,
        ece_floor=floor,
        ece_ci=ci,
        ece_se=sd,
        ci_level=ci_level,
        mce=mce,
        brier=agg.brier / total,
        nll=agg.nll / total,
        debiased_l2_ece=l2_sq,
        l2_ece_debiased=math.sqrt(max(l2_sq, 0.0)),
        citl_ratio=_safe_div(positives, expected),
        citl_z=_safe_div(positives - expected, math.sqrt(max(citl_var, 0.0))),
        spiegelhalter_z=_safe_div(agg.sp_num, math.sqrt(max(agg.sp_var, 0.0))),
        reliability=reliability,
    )


def calibration_metrics(
    p: ArrayLike,
    y: ArrayLike,
    weights: ArrayLike | None = None,
    n_bins: int = 15,
    ci_level: float = 0.95,
) -> CalibrationReport:
    """All calibration metrics of scores ``p`` against 0/1 labels ``y`` (DESIGN §5).

    ``weights`` (finite, >= 0) make every sum weighted; ``n`` is then their sum. Raises
    ``InvalidInputError`` for scores outside [0, 1], labels other than 0/1, bad weights or
    mismatched lengths, and ``ConfigError`` for a bad ``n_bins`` or ``ci_level``. Empty input
    gives a report with ``n == 0`` and NaN metrics. Vectorised: about 50 ms for 10^6 events.

    >>> r = calibration_metrics([0.2, 0.2, 0.2, 0.2, 0.2], [0, 0, 0, 0, 1])
    >>> round(r.ece, 12), round(r.citl_ratio, 12), round(r.brier, 4)
    (0.0, 1.0, 0.16)
    """
    n_bins = check_n_bins(n_bins)
    ci_level = _check_level("ci_level", ci_level)
    pa, ya, wa = _check_inputs(p, y, weights)
    return _report(_aggregate(pa, ya, wa, n_bins), ci_level)


def ece_floor(p: ArrayLike, weights: ArrayLike | None = None, n_bins: int = 15) -> float:
    """Analytic E[ECE] of a perfectly calibrated predictor with these scores (DESIGN §5).

    ``sqrt(2/pi) / n * sum_b sqrt(sum_{i in b} w_i^2 p_i (1 - p_i))``: each bin's
    ``Y_b - P_b`` is approximately ``N(0, sum w^2 p(1-p))`` and ``E|N(0, v)| = sqrt(2 v / pi)``.

    >>> round(ece_floor([0.2] * 200), 4)
    0.0226
    """
    n_bins = check_n_bins(n_bins)
    pa, _, wa = _check_inputs(p, np.zeros(np.shape(p)), weights)
    agg = _aggregate(pa, np.zeros_like(pa), wa, n_bins)
    total = float(agg.w.sum())
    if not total > 0:
        return math.nan
    return SQRT_2_OVER_PI * float(np.sqrt(agg.w2pq).sum()) / total


def simulate_null_ece(
    p: ArrayLike,
    n_sims: int = 2000,
    seed: int | None = 0,
    weights: ArrayLike | None = None,
    n_bins: int = 15,
) -> FloatArray:
    """ECEs of ``n_sims`` label draws ``y ~ Bernoulli(p)``: the null distribution of ECE.

    Unweighted: each ECE bin is split into 64 equal-width sub-bins and each sub-bin's positives
    drawn as ``Binomial(count, mean p)`` — exact in expectation, O(n_bins * 64 * n_sims) work
    whatever ``n``. Weighted: exact Bernoulli draws, O(n * n_sims) work. Deterministic for a
    given ``seed`` (numpy's default generator).

    >>> sims = simulate_null_ece([0.2] * 200, n_sims=100, seed=1)
    >>> sims.shape, bool(0.0 < sims.mean() < 0.05)
    ((100,), True)
    """
    n_bins = check_n_bins(n_bins)
    if isinstance(n_sims, bool) or not isinstance(n_sims, (int, np.integer)) or n_sims < 1:
        raise ConfigError(f"n_sims must be an integer >= 1; got {n_sims!r}")
    pa, _, wa = _check_inputs(p, np.zeros(np.shape(p)), weights)
    rng = np.random.default_rng(seed)
    total = float(pa.size) if wa is None else float(wa.sum())
    if not total > 0:
        return np.full(n_sims, math.nan)
    bins = ece_bin_index(pa, n_bins)
    if wa is None:
        fine_n = n_bins * _SIM_SUBBINS
        fine = ece_bin_index(pa, fine_n)  # sub-bin edges coincide with the ECE edges
        counts = np.bincount(fine, minlength=fine_n)
        sums = np.bincount(fine, pa, minlength=fine_n)
        used = np.flatnonzero(counts)
        mean = np.clip(sums[used] / counts[used], 0.0, 1.0)
        draws = rng.binomial(counts[used], mean, size=(n_sims, used.size)).astype(np.float64)
        # ``used`` is sorted, so each ECE bin's sub-bins are one contiguous run of columns.
        owner = used // _SIM_SUBBINS
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        sim_y = np.add.reduceat(draws, starts, axis=1)
        expected = _bsum(bins, pa, n_bins)[owner[starts]]
        return np.abs(sim_y - expected).sum(axis=1) / total

    expected = _bsum(bins, wa * pa, n_bins)
    out = np.empty(n_sims)
    chunk = max(1, _SIM_CHUNK_DRAWS // max(pa.size, 1))
    members = [np.flatnonzero(bins == b) for b in range(n_bins)]
    for start in range(0, n_sims, chunk):
        k = min(chunk, n_sims - start)
        hits = rng.random((k, pa.size)) < pa
        sim_y = np.column_stack([hits[:, m] @ wa[m] for m in members])
        out[start : start + k] = np.abs(sim_y - expected).sum(axis=1) / total
    return out


def ece_floor_quantile(
    p: ArrayLike,
    q: float = 0.95,
    n_sims: int = 2000,
    seed: int | None = 0,
    weights: ArrayLike | None = None,
    n_bins: int = 15,
) -> float:
    """The ``q``-quantile of the ECE of a perfectly calibrated predictor with these scores.

    By simulation (``simulate_null_ece``); "ECE <= ece_floor_quantile(p)" is the test for
    "calibrated up to noise" at level ``1 - q``.

    >>> f = ece_floor_quantile([0.2] * 200, q=0.95, n_sims=500, seed=0)
    >>> bool(ece_floor([0.2] * 200) < f < 0.1)
    True
    """
    if not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
        raise ConfigError(f"q must be a number in [0, 1]; got {q!r}")
    return float(np.quantile(simulate_null_ece(p, n_sims, seed, weights, n_bins), q))


# --------------------------------------------------------------------------- other histograms


def rebin_to_ece_bins(
    counts: ArrayLike, positives: ArrayLike, sum_p: ArrayLike, n_bins: int = 15
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Fold a histogram with arbitrary bins (e.g. logit bins) into the ECE bins.

    Each non-empty fine bin goes, whole, to the ECE bin that contains its mean score
    ``sum_p / counts``. Exact when no fine bin straddles an ECE edge; otherwise the straddling
    bins' events are attributed to one side, a small error when the fine bins are narrow.
    ``counts`` may be decayed weights. Returns per-ECE-bin ``(counts, positives, sum_p)``.

    >>> c, y, s = rebin_to_ece_bins([2, 0, 3], [1, 0, 3], [0.1, 0.0, 2.85])
    >>> c.tolist()[0], c.tolist()[14], y.tolist()[14]
    (2.0, 3.0, 3.0)
    """
    n_bins = check_n_bins(n_bins)
    c = _as_1d("counts", counts)
    yv = _as_1d("positives", positives)
    s = _as_1d("sum_p", sum_p)
    if not (c.shape == yv.shape == s.shape):
        raise InvalidInputError(
            "schema", f"histogram arrays must have one length; got {c.size}, {yv.size}, {s.size}"
        )
    if not (np.isfinite(c).all() and np.isfinite(yv).all() and np.isfinite(s).all()):
        raise InvalidInputError("schema", "histogram sums must be finite")
    if (c < 0).any():
        raise InvalidInputError("schema", f"counts must be >= 0; got {float(c[c < 0][0])!r}")
    used = c > 0
    mean = np.clip(s[used] / c[used], 0.0, 1.0)
    idx = ece_bin_index(mean, n_bins)
    return (
        _bsum(idx, c[used], n_bins),
        _bsum(idx, yv[used], n_bins),
        _bsum(idx, s[used], n_bins),
    )


def ece_from_bins(
    counts: ArrayLike, positives: ArrayLike, sum_p: ArrayLike, n_bins: int = 15
) -> float:
    """ECE from a histogram's per-bin counts, positives and score sums (any binning).

    The histogram is first folded into the ECE bins with ``rebin_to_ece_bins``; then
    ``ECE = sum_b |positives_b - sum_p_b| / sum(counts)``. NaN for an empty histogram.

    >>> ece_from_bins([2, 2], [0, 1], [0.2, 1.8])
    0.25
    """
    c, yv, s = rebin_to_ece_bins(counts, positives, sum_p, n_bins)
    total = float(c.sum())
    return float(np.abs(yv - s).sum() / total) if total > 0 else math.nan
