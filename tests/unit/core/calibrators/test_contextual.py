"""The ``contextual`` method: its formula, serving fallback, params, schema, monotonicity, and
its online learner (``OnlineContextual``): convergence, equivalence with ``OnlinePlatt``,
determinism and state."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.codec.schema_support import validator
from worker.core.calibrators import (
    ContextualCalibrator,
    OnlineContextual,
    OnlinePlatt,
    PlattCalibrator,
    calibrator_from_dict,
    is_monotone_increasing,
)
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.mathfn import sigmoid_array

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

FEATURES = [
    {"kind": "hour", "harmonics": 2, "w_a": [0.1, -0.4, 0.05, 0.0],
     "w_b": [0.0, 0.2, -0.1, 0.03], "mean": [0.01, -0.02, 0.0, 0.1]},
    {"kind": "position", "edges": [0, 2], "w_a": [0.2, 0.0, -0.2], "w_b": [0.3, 0.0, -0.3]},
    {"kind": "category", "field": "segment", "values": ["web", "app"],
     "w_a": [0.0, 0.1, -0.5], "w_b": [0.1, -0.1, 0.4], "mean": [0.6, 0.4, 0.0]},
    {"kind": "category", "field": "device", "values": ["mobile"], "w_a": [0.05, -0.05],
     "w_b": [0.2, -0.2]},
    {"kind": "number", "field": "depth", "w_a": [-0.1], "w_b": [0.05], "mean": [1.0]},
]
CAL = ContextualCalibrator(0.8, -0.3, FEATURES)


def by_hand(score: float, ctx: dict) -> float:
    """The DESIGN §3 formula written out for ``CAL``: a(x) = a exp(w_a.(x - m)), b(x)."""
    z = math.log(score / (1 - score))
    s, b = 0.0, -0.3
    h = ctx["hour"] if "hour" in ctx else (ctx["ts"] % DAY) / 3_600_000
    x = [math.sin(2 * math.pi * h / 24), math.cos(2 * math.pi * h / 24),
         math.sin(4 * math.pi * h / 24), math.cos(4 * math.pi * h / 24)]
    f = FEATURES[0]
    s += sum(w * (xi - m) for w, xi, m in zip(f["w_a"], x, f["mean"], strict=True))
    b += sum(w * (xi - m) for w, xi, m in zip(f["w_b"], x, f["mean"], strict=True))
    pos = 0 if ctx["position"] <= 0 else (1 if ctx["position"] <= 2 else 2)
    s += FEATURES[1]["w_a"][pos]
    b += FEATURES[1]["w_b"][pos]
    seg = {"web": 0, "app": 1}.get(ctx["segment"], 2)
    m = FEATURES[2]["mean"]
    s += FEATURES[2]["w_a"][seg] - sum(w * mi for w, mi in zip(FEATURES[2]["w_a"], m,
                                                                 strict=True))
    b += FEATURES[2]["w_b"][seg] - sum(w * mi for w, mi in zip(FEATURES[2]["w_b"], m,
                                                                 strict=True))
    dev = 0 if ctx["device"] == "mobile" else 1
    s += FEATURES[3]["w_a"][dev]
    b += FEATURES[3]["w_b"][dev]
    d = math.copysign(math.log1p(abs(ctx["depth"])), ctx["depth"])
    s += -0.1 * (d - 1.0)
    b += 0.05 * (d - 1.0)
    return 1 / (1 + math.exp(-(0.8 * math.exp(s) * z + b)))


@pytest.mark.parametrize("ctx", [
    {"hour": 6.5, "position": 0, "segment": "web", "device": "mobile", "depth": 3},
    {"ts": T0 + 20 * 3_600_000 + 17, "position": 7, "segment": "new", "device": "tv",
     "depth": -2.5},
    {"hour": 0, "position": 2, "segment": "app", "device": "mobile", "depth": 0},
])
@pytest.mark.parametrize("score", [0.001, 0.04, 0.5, 0.97])
def test_apply_is_the_formula(ctx: dict, score: float) -> None:
    assert CAL.apply(score, ctx) == pytest.approx(by_hand(score, ctx), rel=1e-12)
    assert CAL.apply_logit(math.log(score / (1 - score)), ctx) == pytest.approx(
        by_hand(score, ctx), rel=1e-12)


@pytest.mark.parametrize("ctx", [
    None, {},
    # every feature's input absent or of the wrong type: all missing
    {"ts": "noon", "hour": 25, "position": -1, "segment": 3, "device": None,
     "depth": "deep"},
    {"hour": True, "position": True, "segment": "", "device": ["mobile"], "depth": math.nan},
])
def test_missing_context_is_the_context_free_platt_map(ctx: dict | None) -> None:
    scores = np.linspace(0.0, 1.0, 41)
    platt = PlattCalibrator(0.8, -0.3)
    assert CAL.context_free() == platt
    assert np.array_equal(CAL.apply(scores, ctx), platt.apply(scores))
    assert CAL.slope_intercept(ctx) == (0.8, -0.3)
    # The inherited paths (no context at all) agree too.
    assert np.array_equal(CAL.apply(scores), platt.apply(scores))


def test_per_score_contexts_match_one_by_one() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    ctxs = [{"ts": T0 + int(t), "position": int(p), "segment": s}
            for t, p, s in zip(rng.integers(0, DAY, 50), rng.integers(0, 12, 50),
                               rng.choice(["web", "app", "x"], 50), strict=True)]
    many = CAL.apply(scores, ctxs)
    assert np.allclose(many, [CAL.apply(float(s), c) for s, c in zip(scores, ctxs,
                                                                        strict=True)],
                       rtol=1e-14, atol=0)
    with pytest.raises(ConfigError, match="one context per score"):
        CAL.apply(scores, ctxs[:3])


def test_slope_is_positive_for_every_context_even_with_extreme_weights() -> None:
    cal = ContextualCalibrator(1e-3, 0.0, [
        {"kind": "number", "field": "v", "w_a": [-1e6], "w_b": [0.0]},
        {"kind": "hour", "harmonics": 1, "w_a": [1e6, 1e6], "w_b": [0.0, 0.0]},
    ])
    for ctx in ({"v": 1e300}, {"v": -1e300, "hour": 3}, {"hour": 9}, {"v": 5, "hour": 21}):
        a, _ = cal.slope_intercept(ctx)
        assert a > 0.0 and math.isfinite(a)
        p = cal.apply(np.array([0.0, 0.2, 0.5, 0.8, 1.0]), ctx)
        assert (np.diff(p) >= 0.0).all()
    assert is_monotone_increasing(cal)


contexts = st.fixed_dictionaries({}, optional={
    "ts": st.integers(0, 2**53 - 1),
    "hour": st.one_of(st.floats(-5, 30), st.integers(0, 23), st.text(max_size=3)),
    "position": st.one_of(st.integers(-3, 1000), st.floats(allow_nan=True), st.booleans()),
    "segment": st.one_of(st.sampled_from(["web", "app", "new", ""]), st.integers()),
    "device": st.one_of(st.sampled_from(["mobile", "tv"]), st.none(), st.floats()),
    "depth": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-10**30, 10**30)),
})
weights = st.lists(st.floats(-20, 20), min_size=1, max_size=1)


@settings(max_examples=300, deadline=None)
@given(
    ctx=contexts,
    a=st.floats(1e-3, 1e3),
    b=st.floats(-20, 20),
    w=st.lists(st.floats(-5, 5), min_size=13, max_size=13),
    scores=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30),
)
def test_map_is_non_decreasing_in_the_score_for_any_context(
    ctx: dict, a: float, b: float, w: list[float], scores: list[float]
) -> None:
    cal = ContextualCalibrator(a, b, [
        {"kind": "hour", "harmonics": 1, "w_a": w[0:2], "w_b": w[2:4]},
        {"kind": "position", "edges": [1], "w_a": w[4:6], "w_b": w[6:8]},
        {"kind": "category", "field": "device", "values": ["mobile"], "w_a": w[8:10],
         "w_b": w[10:12]},
        {"kind": "number", "field": "depth", "w_a": w[12:13], "w_b": [0.1]},
    ])
    s = np.sort(np.array(scores))
    p = cal.apply(s, ctx)
    assert np.isfinite(p).all()
    assert (np.diff(p) >= 0.0).all()


def test_round_trips_through_the_factory_and_json() -> None:
    d = CAL.to_dict()
    assert d["method"] == "contextual"
    back = calibrator_from_dict(orjson.loads(orjson.dumps(d)))
    assert isinstance(back, ContextualCalibrator)
    assert back == CAL
    ctx = {"hour": 7, "position": 1, "segment": "app", "device": "x", "depth": 2}
    assert back.apply(0.3, ctx) == CAL.apply(0.3, ctx)


def test_a_version_message_with_contextual_params_is_schema_valid() -> None:
    learner = OnlineContextual(fields=("device", "depth"))
    rng = np.random.default_rng(1)
    for i in range(300):
        learner.update(float(rng.normal(-3, 1)), float(rng.random() < 0.1),
                       {"ts": T0 + i * 60_000, "position": i % 12, "segment": "web",
                        "device": ["mobile", "tv"][i % 2], "depth": i % 5})
    msg = {
        "model_id": "m", "scope": "global", "version": 1, **learner.calibrator().to_dict(),
        "event_ts": T0, "created_at": "2026-01-01T00:00:00.000Z", "reason": "scheduled",
        "training": {"n": 300, "positives": 30, "from_ts": T0, "to_ts": T0},
        "metrics": {"ece_before": 0.01, "ece_after": 0.005, "nll_before": 0.3,
                    "nll_after": 0.29, "n_eval": 100, "ece_floor": 0.01},
    }
    assert list(validator("calibrator_version").iter_errors(msg)) == []
    kinds = [f["kind"] for f in msg["params"]["features"]]
    assert kinds == ["hour", "position", "category", "category", "number"]


@pytest.mark.parametrize(("params", "match"), [
    ({"a": 0.0, "b": 0.0, "features": []}, "a must be a finite number > 0"),
    ({"a": 1.0, "b": math.inf, "features": []}, "b must be a finite number"),
    ({"a": 1.0, "b": 0.0}, "params must be"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "weekday", "w_a": [0], "w_b": [0]}]}, "kind"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "hour", "harmonics": 2, "w_a": [0, 0],
                                        "w_b": [0, 0]}]}, "list of 4 numbers"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "position", "edges": [3, 1],
                                        "w_a": [0] * 3, "w_b": [0] * 3}]}, "increasing"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "category", "field": "d",
                                        "values": ["x", "x"], "w_a": [0] * 3,
                                        "w_b": [0] * 3}]}, "distinct"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "number", "field": "ts", "w_a": [0],
                                        "w_b": [0]}]}, "reserved"),
    ({"a": 1.0, "b": 0.0, "features": [{"kind": "number", "field": "d", "w_a": [0],
                                        "w_b": [0]}] * 2}, "repeats"),
])
def test_invalid_params_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ContextualCalibrator.from_params(params)
    with pytest.raises(InvalidInputError, match=match):
        calibrator_from_dict({"method": "contextual", "params": params})


# -- the online learner -------------------------------------------------------------------


def test_without_features_the_learner_is_online_platt_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-2.5, 1.5, 5_000)
    y = (rng.random(5_000) < sigmoid_array(0.6 * z - 0.2)).astype(float)
    ctx = OnlineContextual(hour_harmonics=0, position_edges=(), segment=False)
    platt = OnlinePlatt()
    ctx.update_many(z, y, [{"ts": T0, "position": 3, "segment": "web"}] * z.size)
    platt.update_many(z, y)
    assert ctx.params == platt.params and ctx.n == platt.n
    assert ctx.calibrator().params() == {"a": platt.params[0], "b": platt.params[1],
                                         "features": []}


def hour_stream(n: int, seed: int, amplitude: float) -> tuple[np.ndarray, ...]:
    """Served logit = T(h) x the true logit with T(h) = exp(amplitude cos(2 pi h / 24)): the
    right map's slope is a(h) = exp(-amplitude cos(2 pi h / 24)), intercept 0."""
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0.0, 24.0, n)
    true_z = rng.normal(-2.5, 1.0, n)
    y = (rng.random(n) < sigmoid_array(true_z)).astype(float)
    served = np.exp(amplitude * np.cos(2 * np.pi * hours / 24)) * true_z
    return hours, served, y


def test_learner_recovers_an_hour_dependent_temperature() -> None:
    amplitude = 0.4
    hours, z, y = hour_stream(100_000, 11, amplitude)
    learner = OnlineContextual(hour_harmonics=1, position_edges=(), segment=False)
    learner.update_many(z, y, [{"hour": h} for h in hours.tolist()])
    cal = learner.calibrator()
    # Bounds from the Fisher information at the truth, parameters (log a, b, w_a, w_b):
    # d eta = (a(x) z, 1, a(x) z x, x) with x = (sin, cos) - their means.
    x = np.stack([np.sin(2 * np.pi * hours / 24), np.cos(2 * np.pi * hours / 24)], axis=1)
    xc = x - x.mean(axis=0)
    a_true = np.exp(-amplitude * x[:, 1])
    p = sigmoid_array(a_true * z)
    az = (a_true * z)[:, None]
    d = np.hstack([az, np.ones((z.size, 1)), az * xc, xc])
    info = (d * (p * (1 - p))[:, None]).T @ d
    cov = np.linalg.inv(info)
    # The prior w_rho on the weights shrinks them by w_rho / (info + w_rho): a bias.
    w_rho = learner.config()["w_rho"]
    shrink = w_rho / (np.diag(info)[2:4] + w_rho)
    for h in (0.0, 4.0, 6.0, 12.0, 15.0, 20.0):
        xh = np.array([math.sin(2 * math.pi * h / 24), math.cos(2 * math.pi * h / 24)])
        c = np.concatenate([[1.0, 0.0], xh - x.mean(axis=0), [0.0, 0.0]])
        se = math.sqrt(c @ cov @ c)
        bias = float(np.abs(shrink * amplitude * (xh - x.mean(axis=0))).sum())
        # The (a, b) block tracks (gamma = 0.1): ~1 / (2 gamma) = 5 x the batch variance.
        bound = 4.0 * math.sqrt(5.0) * se + bias
        a, b = cal.slope_intercept({"hour": h})
        assert abs(math.log(a) - (-amplitude * xh[1])) <= bound, (h, a, bound)
        assert abs(b) <= 4.0 * math.sqrt(5.0) * math.sqrt(cov[1, 1]) + 0.05
    # The pattern itself: slopes lowest at midnight (T largest), highest at noon.
    assert cal.slope_intercept({"hour": 0})[0] < 0.8 < 1.2 < cal.slope_intercept({"hour": 12})[0]


def test_learner_beats_context_free_online_platt_on_fresh_events() -> None:
    hours, z, y = hour_stream(60_000, 12, 0.5)
    learner = OnlineContextual(hour_harmonics=1, position_edges=(), segment=False)
    learner.update_many(z, y, [{"hour": h} for h in hours.tolist()])
    platt = OnlinePlatt()
    platt.update_many(z, y)
    th, tz, ty = hour_stream(40_000, 13, 0.5)
    pc = learner.calibrator().apply_logit(tz, [{"hour": h} for h in th.tolist()])
    pp = platt.calibrator().apply_logit(tz)

    def nll(p: np.ndarray) -> float:
        return float(-np.mean(ty * np.log(p) + (1 - ty) * np.log1p(-p)))

    # The difference is ~100 x its standard error here; a strict inequality suffices.
    assert nll(pc) < nll(pp)


def test_shrinkage_keeps_useless_features_near_zero() -> None:
    rng = np.random.default_rng(4)
    n = 30_000
    z = rng.normal(-2.5, 1.0, n)
    y = (rng.random(n) < sigmoid_array(z)).astype(float)
    ctxs = [{"ts": T0 + int(t), "position": int(p), "segment": "web",
             "device": str(dv)} for t, p, dv in zip(rng.integers(0, DAY, n),
                                                    rng.integers(0, 12, n),
                                                    rng.choice(["m", "d", "t"], n),
                                                    strict=True)]
    learner = OnlineContextual(fields=("device",))
    learner.update_many(z, y, ctxs)
    cal = learner.calibrator()
    slopes = [cal.slope_intercept(c)[0] for c in ctxs[:500]]
    # Calibrated input: every context's map stays near identity.
    assert max(abs(math.log(a)) for a in slopes) < 0.15


def test_categories_overflow_into_other_and_unseen_values_use_it() -> None:
    learner = OnlineContextual(hour_harmonics=0, position_edges=(), segment=False,
                               fields=("city",), max_categories=2)
    rng = np.random.default_rng(6)
    for i in range(2_000):
        city = ["a", "b", "c", "d"][i % 4]
        # Cities c and d (the overflow) click far more often than the score says.
        y = float(rng.random() < (0.5 if city in "cd" else 0.05))
        learner.update(-3.0, y, {"city": city})
    feature = learner.calibrator().features[0]
    assert feature["field"] == "city" and feature["values"] == ["a", "b"]
    assert len(feature["w_b"]) == 3 and feature["w_b"][2] > feature["w_b"][0]
    cal = learner.calibrator()
    assert cal.apply_logit(-3.0, {"city": "zzz"}) == cal.apply_logit(-3.0, {"city": "c"})
    assert cal.apply_logit(-3.0, {"city": "c"}) > cal.apply_logit(-3.0, {"city": "a"})


def learner_stream(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    z = rng.normal(-3.0, 1.2, n)
    y = (rng.random(n) < sigmoid_array(0.8 * z)).astype(float)
    ctxs = [{"ts": T0 + 30_000 * i, "position": int(rng.integers(0, 15)),
             "segment": str(rng.choice(["web", "app"])),
             "device": str(rng.choice(["m", "d"])), "depth": float(rng.integers(0, 9))}
            for i in range(n)]
    return z, y, ctxs


def test_deterministic_and_a_restored_learner_continues_bit_for_bit() -> None:
    z, y, ctxs = learner_stream(8, 3_000)
    one = OnlineContextual(fields=("device", "depth"))
    two = OnlineContextual(fields=("device", "depth"))
    one.update_many(z, y, ctxs)
    two.update_many(z[:1_234], y[:1_234], ctxs[:1_234])
    restored = OnlineContextual.from_dict(orjson.loads(orjson.dumps(two.to_dict())))
    assert restored == two
    restored.update_many(z[1_234:], y[1_234:], ctxs[1_234:])
    assert restored == one
    assert restored.calibrator() == one.calibrator()
    again = OnlineContextual(fields=("device", "depth"))
    for zi, yi, ci in zip(z.tolist(), y.tolist(), ctxs, strict=True):
        again.update(zi, yi, ci)
    assert again.to_dict() == one.to_dict()


def test_a_bad_batch_leaves_the_state_unchanged() -> None:
    z, y, ctxs = learner_stream(9, 100)
    learner = OnlineContextual()
    before = learner.to_dict()
    with pytest.raises(InvalidInputError):
        learner.update_many(np.append(z, math.nan), np.append(y, 0.0), [*ctxs, {}])
    with pytest.raises(InvalidInputError):
        learner.update_many(z, y, ctxs[:-1])
    with pytest.raises(InvalidInputError):
        learner.update(0.0, 2.0, {})
    assert learner.to_dict() == before


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(v=2),
    lambda d: d.update(w=d["w"][:-1]),
    lambda d: d.update(A_w_inv=[[-x for x in row] for row in d["A_w_inv"]]),
    lambda d: d["platt"].update(a=-1.0),
    lambda d: d.update(gamma=0.2),
    lambda d: d.update(sums=d["sums"][:-1]),
    lambda d: d["categories"]["device"].update(values=["m"]),
])
def test_malformed_state_is_refused(mutate) -> None:
    z, y, ctxs = learner_stream(10, 200)
    learner = OnlineContextual(fields=("device",))
    learner.update_many(z, y, ctxs)
    data = orjson.loads(orjson.dumps(learner.to_dict()))
    mutate(data)
    with pytest.raises(StateError):
        OnlineContextual.from_dict(data)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"shrinkage": -1.0}, "shrinkage"),
    ({"hour_harmonics": 13}, "hour_harmonics"),
    ({"position_edges": (3, 3)}, "position_edges"),
    ({"fields": ("position",)}, "reserved"),
    ({"fields": ("d", "d")}, "repeat"),
    ({"max_categories": 0}, "max_categories"),
    ({"a_min": 2.0, "a_max": 1.0}, "a_min"),
    ({"w_gamma": 0.0}, "w_gamma"),
])
def test_invalid_config_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OnlineContextual(**kwargs)
