"""The StreamRec generator: determinism, the true click model, miscalibration, drift, clicks."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import orjson
import pytest

from tests.unit.sim.helpers import classify, impressions, index_of
from worker.sim.scenario import Scenario
from worker.sim.streamrec import CHUNK, SimEvent, _Generator, generate


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _served_logit(obj: dict) -> float:
    if "logit" in obj:
        return float(obj["logit"])
    s = float(obj["score"])
    return math.log(s) - math.log1p(-s)


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    design = np.column_stack([x, np.ones_like(x)])
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(b)


@pytest.fixture(scope="module")
def default_events() -> list[SimEvent]:
    return list(generate(Scenario(n_events=30_000, n_users=2_000, n_items=500, seed=11)))


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    sc = Scenario(n_events=3_000, n_users=100, seed=5, duplicate_share=0.05,
                  reorder_within_ms=20_000, malformed_share=0.05, orphan_click_share=0.05,
                  score_field="mixed")
    first = [e.raw for e in generate(sc)]
    assert first == [e.raw for e in generate(sc)]
    other = [e.raw for e in generate(Scenario(n_events=3_000, n_users=100, seed=6))]
    assert first != other


def test_world_does_not_depend_on_stream_length() -> None:
    # Same seed, longer stream: the first chunk's lines are identical (users, items, draws).
    short = [e.raw for e in generate(Scenario(n_events=CHUNK, n_users=300, seed=2,
                                              new_user_share=0, skew_share=0))]
    long = [e.raw for e in generate(Scenario(n_events=3 * CHUNK, n_users=300, seed=2,
                                             new_user_share=0, skew_share=0))]
    imp_short = [r for r in short if b'"impression"' in r[:30]]
    imp_long = [r for r in long if b'"impression"' in r[:30]][: len(imp_short)]
    assert imp_short == imp_long


def test_every_line_is_valid_json_with_type_and_no_newline(default_events: list[SimEvent]) -> None:
    for e in default_events:
        assert b"\n" not in e.raw
        assert e.kind in ("impression", "click")
        assert orjson.loads(e.raw) == e.obj
        assert e.obj is not None and e.obj["type"] == e.kind == e.target
        assert e.key == e.obj["user_id"]
        assert e.expected_reason is None
        assert classify(e.raw) is None


def test_impression_fields_follow_the_contract(default_events: list[SimEvent]) -> None:
    imps = impressions(default_events)
    assert len(imps) == 30_000
    assert len({o["impression_id"] for o in imps}) == 30_000
    assert sorted(index_of(o["impression_id"]) for o in imps) == list(range(30_000))
    for o in imps[:2_000]:
        assert set(o) == {"type", "impression_id", "user_id", "item_id", "ts", "model_id",
                          "score", "segment", "arm", "position", "context"}
        assert 0.0 < o["score"] < 1.0 and 0.0 < o["context"]["true_p"] < 1.0
        assert o["segment"] in ("web", "app", "new")
        assert 0 <= o["position"] < 10
    ts = [o["ts"] for o in sorted(imps, key=lambda o: index_of(o["impression_id"]))]
    assert ts == sorted(ts)  # impressions never go back in event time
    assert ts[0] >= 1_767_225_600_000
    # ~200 impressions per second of event time.
    span_s = (ts[-1] - ts[0]) / 1000
    assert 30_000 / span_s == pytest.approx(200, rel=0.05)


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [(2.0, 8.0), (1.0, 24.0)],
)
def test_click_rate_matches_configured_mean(alpha: float, beta: float) -> None:
    # No arm/item/user-arm effects and equal activity: the true p of an impression is then
    # exactly a user's Beta draw, so the mean is alpha / (alpha + beta).
    n_users, n = 20_000, 60_000
    sc = Scenario(n_events=n, n_users=n_users, n_items=100, seed=3, ctr_alpha=alpha,
                  ctr_beta=beta, item_logit_sd=0, user_arm_logit_sd=0, arms=(),
                  user_activity_sigma=0, new_user_share=0)
    events = list(generate(sc))
    imps = impressions(events)
    p = np.array([o["context"]["true_p"] for o in imps])
    clicks = sum(1 for e in events if e.kind == "click" and not e.duplicate)
    # Clicks are Bernoulli(true p): the realised rate matches the mean true p.
    se_bern = math.sqrt(float(np.sum(p * (1 - p)))) / n
    assert abs(clicks / n - p.mean()) < 4 * se_bern
    # The mean true p matches the Beta mean, up to the sampling of users.
    mean = alpha / (alpha + beta)
    var_user = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    se = math.sqrt(var_user / n_users + var_user / n)
    assert abs(p.mean() - mean) < 4 * se
    assert abs(clicks / n - mean) < 4 * math.sqrt(se**2 + se_bern**2)


def test_default_click_rate_matches_expected_ctr(default_events: list[SimEvent]) -> None:
    sc = Scenario()
    imps = [o for o in impressions(default_events) if o["segment"] != "new"]
    p = np.array([o["context"]["true_p"] for o in imps])
    # Heavy-tailed activity concentrates impressions on few users: allow for that.
    assert p.mean() == pytest.approx(sc.expected_ctr(), abs=0.02)


@pytest.mark.parametrize("field", ["score", "logit", "both", "mixed"])
def test_temperature_is_the_slope_against_the_true_logit(field: str) -> None:
    sc = Scenario(n_events=8_000, n_users=500, seed=4, temperature=1.6, bias=-0.3,
                  model_noise_sd=0.3, score_field=field)
    imps = impressions(list(generate(sc)))
    z = _logit(np.array([o["context"]["true_p"] for o in imps]))
    s = np.array([_served_logit(o) for o in imps])
    slope, intercept = _slope(z, s)
    assert slope == pytest.approx(1.6, abs=0.03)
    assert intercept == pytest.approx(-0.3, abs=0.08)
    kinds = Counter(("score" in o, "logit" in o) for o in imps)
    expected = {
        "score": {(True, False)},
        "logit": {(False, True)},
        "both": {(True, True)},
        "mixed": {(True, False), (False, True), (True, True)},
    }[field]
    assert set(kinds) == expected


def test_both_fields_agree() -> None:
    imps = impressions(list(generate(Scenario(n_events=500, score_field="both", temperature=2))))
    for o in imps:
        assert o["score"] == pytest.approx(1 / (1 + math.exp(-o["logit"])), rel=1e-12)


def test_calibrated_model_is_exact_without_noise() -> None:
    imps = impressions(list(generate(Scenario(n_events=2_000, seed=9))))
    for o in imps:
        assert o["score"] == pytest.approx(o["context"]["true_p"], rel=1e-9)


def test_drift_switches_at_the_configured_index() -> None:
    at = 5_000
    sc = Scenario(n_events=10_000, n_users=500, seed=8, temperature=1.0, drift_at_event=at,
                  drift_temperature=2.0, drift_bias=0.5, new_user_share=0)
    imps = impressions(list(generate(sc)))
    idx = np.array([index_of(o["impression_id"]) for o in imps])
    z = _logit(np.array([o["context"]["true_p"] for o in imps]))
    s = np.array([_served_logit(o) for o in imps])
    before, after = idx < at, idx >= at
    assert np.allclose(s[before], z[before], atol=1e-6)
    assert np.allclose(s[after], 2.0 * z[after] + 0.5, atol=1e-6)
    assert before.sum() == at and after.sum() == 10_000 - at


def test_base_rate_shift_multiplies_true_odds() -> None:
    at = 4_000
    common = {"n_events": 8_000, "n_users": 300, "seed": 12, "new_user_share": 0}
    plain = impressions(list(generate(Scenario(**common))))
    shifted = impressions(
        list(generate(Scenario(**common, base_rate_shift_at=at, base_rate_shift_odds=3.0)))
    )
    for a, b in zip(plain, shifted, strict=True):
        assert a["impression_id"] == b["impression_id"]
        pa, pb = a["context"]["true_p"], b["context"]["true_p"]
        ratio = (pb / (1 - pb)) / (pa / (1 - pa))
        assert ratio == pytest.approx(3.0 if index_of(a["impression_id"]) >= at else 1.0)
        # The served model does not see the shift: that is the miscalibration to detect.
        assert a["score"] == b["score"]


def test_clicks_reference_earlier_impressions_of_the_same_user() -> None:
    sc = Scenario(n_events=20_000, n_users=1_000, seed=21, orphan_click_share=0.1,
                  duplicate_share=0.02, reorder_within_ms=30_000, late_click_share=0.05,
                  skew_share=0.05)
    events = list(generate(sc))
    by_id = {o["impression_id"]: o for o in impressions(events)}
    window = sc.attribution_window_ms
    tags: Counter[str] = Counter()
    for e in events:
        if e.kind != "click" or e.duplicate:
            continue
        assert e.obj is not None
        tags[e.tag] += 1
        imp = by_id.get(e.obj["impression_id"])
        if e.tag == "orphan_click":
            assert imp is None and e.obj["impression_id"].startswith("ghost-21-")
            continue
        assert imp is not None, e.raw
        assert imp["user_id"] == e.obj["user_id"] == e.key
        assert imp["item_id"] == e.obj["item_id"]
        delay = e.obj["ts"] - imp["ts"]
        expected_tag = "late_click" if delay > window else "skewed_click" if delay < 0 else "click"
        assert e.tag == expected_tag
        if delay < 0:
            assert delay >= -sc.skew_max_ms
    real = tags["click"] + tags["late_click"] + tags["skewed_click"]
    assert tags["orphan_click"] / (real + tags["orphan_click"]) == pytest.approx(0.1, abs=0.015)
    assert tags["late_click"] / real == pytest.approx(0.05, abs=0.012)
    assert tags["skewed_click"] / real == pytest.approx(0.05, abs=0.012)
    # At most one click per impression: the generator draws one Bernoulli per impression.
    click_ids = [e.obj["impression_id"] for e in events if e.kind == "click" and not e.duplicate]
    assert len(click_ids) == len(set(click_ids))


def test_click_delay_is_exponential_with_configured_mean() -> None:
    sc = Scenario(n_events=20_000, n_users=500, seed=31, late_click_share=0, skew_share=0,
                  click_delay_mean_ms=20_000)
    events = list(generate(sc))
    ts = {o["impression_id"]: o["ts"] for o in impressions(events)}
    delays = np.array(
        [e.obj["ts"] - ts[e.obj["impression_id"]] for e in events if e.kind == "click"]
    )
    assert delays.min() >= 0
    # floor() of an exponential: mean - 0.5 ms; sd of the mean is mean / sqrt(n).
    assert delays.mean() == pytest.approx(20_000, abs=4 * 20_000 / math.sqrt(len(delays)))


def test_new_users_arrive_late_with_few_events_each() -> None:
    sc = Scenario(n_events=40_000, n_users=2_000, seed=13, new_user_share=0.1,
                  new_users_from=0.5, new_user_mean_events=5)
    imps = impressions(list(generate(sc)))
    new = [o for o in imps if o["segment"] == "new"]
    assert new, "expected new-user impressions"
    assert min(index_of(o["impression_id"]) for o in new) >= 20_000
    per_user = Counter(o["user_id"] for o in new)
    established = {o["user_id"] for o in imps if o["segment"] != "new"}
    assert not established & set(per_user)  # a user's segment never changes
    assert len(per_user) <= sc.n_new_users
    assert len(per_user) >= 0.9 * sc.n_new_users
    assert np.mean(list(per_user.values())) == pytest.approx(5, rel=0.25)
    # Users are keyed consistently: one segment per user.
    seg_of: dict[str, set[str]] = defaultdict(set)
    for o in imps:
        seg_of[o["user_id"]].add(o["segment"])
    assert all(len(s) == 1 for s in seg_of.values())


def test_arms_and_segments() -> None:
    sc = Scenario(n_events=20_000, n_users=3_000, seed=14, new_user_share=0,
                  segments=(("a", 0.7), ("b", 0.3, 0.0, 1.0)),
                  arms=(("x", -1.0), ("y", 1.0)), item_logit_sd=0, user_arm_logit_sd=0)
    imps = impressions(list(generate(sc)))
    users_b = {o["user_id"] for o in imps if o["segment"] == "b"}
    users = {o["user_id"] for o in imps}
    assert len(users_b) / len(users) == pytest.approx(0.3, abs=0.04)
    # model_bias of segment b: served logit = true logit + 1 there, exact elsewhere.
    for o in imps[:3_000]:
        z = math.log(o["context"]["true_p"] / (1 - o["context"]["true_p"]))
        assert _served_logit(o) == pytest.approx(z + (1.0 if o["segment"] == "b" else 0.0),
                                                 abs=1e-6)
    p_x = np.mean([o["context"]["true_p"] for o in imps if o["arm"] == "x"])
    p_y = np.mean([o["context"]["true_p"] for o in imps if o["arm"] == "y"])
    assert p_y > p_x + 0.1
    no_arms = impressions(list(generate(Scenario(n_events=100, arms=()))))
    assert all("arm" not in o for o in no_arms)


def test_generation_is_streaming_with_a_small_buffer() -> None:
    sc = Scenario(n_events=8 * CHUNK, n_users=5_000, seed=15, reorder_within_ms=30_000,
                  duplicate_share=0.01)
    gen = _Generator(sc, keep_objects=False)
    peak = released = 0
    for batch in gen.batches():
        peak = max(peak, len(gen.buffer))
        released += len(batch[0])
    assert released > sc.n_events
    # In flight: about one chunk plus the clicks still waiting for their delay.
    assert peak < 3 * CHUNK


def test_empty_scenario() -> None:
    assert list(generate(Scenario(n_events=0))) == []
