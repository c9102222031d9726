"""PosteriorStore: segment-rate priors, tiers, snapshots, bounds, persistence, determinism."""

from __future__ import annotations

import doctest
import json
import math
import pathlib

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.core.posteriors.posterior_store as module
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.posteriors import POPULATION, TIERS, BetaPosterior, PosteriorStore

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCHEMA = json.loads(
    (pathlib.Path(__file__).parents[4] / "schemas" / "posterior_snapshot.schema.json").read_text()
)

event_st = st.tuples(
    st.sampled_from(["u1", "u2", "u3", "u4"]),
    st.sampled_from(["a", "b", None]),
    st.sampled_from(["s1", "s2"]),
    st.integers(0, 1),
    st.integers(0, 10_000),
    st.sampled_from([None, True, False]),
)
stream_st = st.lists(event_st, max_size=60)


def run(store: PosteriorStore, stream) -> list[dict]:
    out = []
    for uid, arm, seg, y, ts, flag in stream:
        out.extend(store.update(uid, arm, seg, y, ts, flag))
    return out


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


def test_priors_come_from_the_segment_rate_not_beta_1_1() -> None:
    store = PosteriorStore(prior_strength=10, default_rate=0.04, segment_prior_strength=100)
    fresh = store.posterior("new", "a", segment="s")
    assert (fresh.alpha, fresh.beta) == pytest.approx((0.4, 9.6))
    rng = np.random.default_rng(0)
    # Segment "hi" clicks 20 % on arm a, segment "lo" 2 %.
    for i in range(5_000):
        store.update(f"h{i % 50}", "a", "hi", int(rng.uniform() < 0.20), i)
        store.update(f"l{i % 50}", "a", "lo", int(rng.uniform() < 0.02), i)
    hi = store.posterior("brand_new", "a", segment="hi")
    lo = store.posterior("brand_new", "a", segment="lo")
    assert hi.mean == pytest.approx(0.20, abs=0.02)
    assert lo.mean == pytest.approx(0.02, abs=0.01)
    assert hi.alpha + hi.beta == pytest.approx(10.0)
    # The prior a new user actually gets on its first update is that one.
    store.update("brand_new", "a", "hi", 0, 6_000)
    got = store.posterior("brand_new", "a")
    assert got.prior_alpha == pytest.approx(hi.alpha)
    assert got.prior_beta == pytest.approx(hi.beta)


@SETTINGS
@given(stream_st)
def test_rates_agree_with_batch_reference_at_every_step(stream) -> None:
    c, m0 = 100.0, 0.05
    store = PosteriorStore(default_rate=m0, segment_prior_strength=c)
    ys, segs, arms = [], [], []
    for uid, arm, seg, y, ts, flag in stream:
        store.update(uid, arm, seg, y, ts, flag)
        ys.append(y)
        segs.append(seg)
        arms.append(arm)
        y_arr, s_arr = np.array(ys), np.array(segs)
        a_arr = np.array(arms, dtype=object)
        m_global = (y_arr.sum() + c * m0) / (len(y_arr) + c)
        assert store.global_rate() == pytest.approx(m_global, rel=1e-12)
        for g in ("s1", "s2"):
            sel = s_arr == g
            m_seg = (y_arr[sel].sum() + c * m_global) / (sel.sum() + c)
            assert store.segment_rate(g) == pytest.approx(m_seg, rel=1e-12)
            for a in ("a", "b"):
                sel_a = sel & (a_arr == a)
                m_sa = (y_arr[sel_a].sum() + c * m_seg) / (sel_a.sum() + c)
                assert store.segment_rate(g, a) == pytest.approx(m_sa, rel=1e-12)


@SETTINGS
@given(stream_st)
def test_pair_and_population_posteriors_agree_with_direct_counts(stream) -> None:
    store = PosteriorStore()
    counts: dict[tuple[str, str], list[int]] = {}
    for uid, arm, seg, y, ts, flag in stream:
        # A new pair's prior: the rate of the event's segment on the arm, *before* the event.
        expected = None if arm is None else store.segment_rate(seg, arm)
        store.update(uid, arm, seg, y, ts, flag)
        if arm is None:
            continue
        if (uid, arm) not in counts:
            post = store.posterior(uid, arm)
            assert post.prior_alpha / (post.prior_alpha + post.prior_beta) == pytest.approx(
                expected
            )
            assert post.prior_alpha + post.prior_beta == pytest.approx(10.0)
        counts.setdefault((uid, arm), []).append(y)
    for (uid, arm), ys in counts.items():
        post = store.posterior(uid, arm)
        assert post.alpha - post.prior_alpha == pytest.approx(sum(ys))
        assert post.beta - post.prior_beta == pytest.approx(len(ys) - sum(ys))
        assert post.n == len(ys)
    for arm in ("a", "b"):
        ys = [y for (_, a), v in counts.items() if a == arm for y in v]
        pop = store.population(arm)
        if not ys:
            assert pop is None
            continue
        assert pop is not None
        assert pop.successes == pytest.approx(sum(ys))
        assert pop.n == len(ys)
        assert pop.prior_alpha == pytest.approx(0.05 * 10)


def test_population_posteriors_merge_across_partitions() -> None:
    rng = np.random.default_rng(2)
    parts = [PosteriorStore(), PosteriorStore()]
    whole = PosteriorStore()
    for i in range(300):
        # Different histories per partition before the arm first appears.
        part = parts[i % 2]
        y = int(rng.uniform() < (0.3 if i % 2 else 0.01))
        part.update(f"u{i}", "x" if i > 100 else None, "s", y, i)
        whole.update(f"u{i}", "x" if i > 100 else None, "s", y, i)
    a, b = (p.population("x") for p in parts)
    assert a is not None and b is not None
    merged = a.merge(b)
    assert merged == whole.population("x")


def test_snapshot_format_matches_schema() -> None:
    store = PosteriorStore()
    store.update("u1", "news", "default", 1, 1_000, conformal_uncertain=False)
    snaps = list(store.snapshots(2_000))
    assert {(s["user_id"], s["arm"]) for s in snaps} == {("u1", "news"), (POPULATION, "news")}
    for snap in [*snaps, store.snapshot("nobody", "other", 5, segment="x")]:
        jsonschema.validate(snap, SCHEMA)
        assert set(snap) == set(SCHEMA["required"])
        post = BetaPosterior(snap["alpha"], snap["beta"])
        assert snap["mean"] == pytest.approx(post.mean)
        assert snap["std"] == pytest.approx(post.std)
    unknown = store.snapshot("nobody", "other", 5)
    assert unknown["n"] == 0 and unknown["tier"] == "high_epistemic"


def test_tiers_follow_spread_and_conformal_share() -> None:
    store = PosteriorStore(default_rate=0.2)
    events = store.update("u", "a", "s", 0, 0)
    assert [(e["from_tier"], e["to_tier"]) for e in events] == [(None, "high_epistemic")]
    assert store.tier("u") == "high_epistemic"
    seen = ["high_epistemic"]
    for i in range(1, 2_000):
        for e in store.update("u", "a", "s", int(i % 5 == 0), i, conformal_uncertain=False):
            assert e["from_tier"] == seen[-1]
            assert set(e) == {
                "user_id", "segment", "from_tier", "to_tier", "event_ts", "cv",
                "uncertain_share", "n",
            }
            seen.append(e["to_tier"])
    assert seen == ["high_epistemic", "moderate_uncertain", "confident"]
    # A confident rate with conformal sets that are mostly {0, 1} is not confident.
    for i in range(2_000, 2_100):
        store.update("u", "a", "s", int(i % 5 == 0), i, conformal_uncertain=True)
    assert store.tier("u") == "high_epistemic"
    assert store.uncertain_share("u") > 0.5
    assert store.snapshot("u", "a", 2_100)["tier"] == "high_epistemic"


def test_tiers_measure_the_users_own_evidence() -> None:
    # A strong exploration prior is not knowledge about the user.
    strong = PosteriorStore(prior_strength=500, default_rate=0.04)
    assert strong.update("u", "a", "s", 0, 0)[0]["to_tier"] == "high_epistemic"
    assert strong.snapshot("v", "a", 0, segment="s")["tier"] == "high_epistemic"
    # A lucky run of clicks does not look precise.
    lucky = PosteriorStore(default_rate=0.04)
    for i in range(2):
        lucky.update("u", "a", "s", 1, i)
    assert lucky.tier("u") == "high_epistemic"
    # cv ≈ 1/sqrt(clicks): 8 clicks are moderate, 24 confident, whatever the rate.
    for rate in (0.01, 0.05, 0.3):
        store = PosteriorStore(default_rate=rate)
        clicks = 0
        for i in range(10**6):
            y = int(math.floor((i + 1) * rate) > math.floor(i * rate))
            store.update("u", "a", "s", y, i)
            clicks += y
            if clicks == 8 and y:
                assert store.tier("u") == "moderate_uncertain", rate
            if clicks == 24:
                assert store.tier("u") == "confident", rate
                break


def test_tier_margin_prevents_flapping() -> None:
    def count(margin: float) -> int:
        store = PosteriorStore(default_rate=0.2, tier_margin=margin, uncertain_memory=50)
        n = 0
        for i in range(3_000):
            # A rate that is well known; the conformal share hovers around share_confident.
            flag = bool(i % 10 == 0)
            n += len(store.update("u", "a", "s", int(i % 5 == 0), i, conformal_uncertain=flag))
        return n

    assert count(0.0) > 20
    assert count(0.3) <= 3


def test_discounting_makes_idle_users_uncertain_again() -> None:
    store = PosteriorStore(default_rate=0.2, half_life_ms=10_000)
    for i in range(3_000):
        store.update("u", "a", "s", int(i % 5 == 0), i)
    assert store.tier("u") == "confident"
    later = 3_000 + 1_000_000
    # The stored tier changes only on the user's next update.
    post = store.posterior("u", "a", event_ts=later)
    assert post.alpha == pytest.approx(post.prior_alpha, abs=1e-9)
    events = store.update("u", "a", "s", 0, later)
    assert events and events[0]["to_tier"] == "high_epistemic"


def test_dirty_drain_and_batching() -> None:
    store = PosteriorStore()
    store.update("u1", "a", "s", 0, 1)
    store.update("u1", "a", "s", 1, 2)
    store.update("u2", "b", "s", 0, 3)
    store.update("u2", None, "s", 0, 4)
    snaps = store.drain_dirty(10)
    assert [(s["user_id"], s["arm"]) for s in snaps] == [
        ("u1", "a"), (POPULATION, "a"), ("u2", "b"), (POPULATION, "b"),
    ]
    assert all(s["event_ts"] == 10 for s in snaps)
    assert store.drain_dirty(11) == []


@SETTINGS
@given(stream=stream_st, half_life=st.sampled_from([None, 5_000.0]),
       read=st.integers(0, 20_000))
def test_snapshots_equal_the_posterior_read_at_their_time(stream, half_life, read) -> None:
    # Snapshots are computed from the stored counts without copying the posterior; they
    # must be exactly what ``posterior(...).at(ts)`` reads (decayed when discounting).
    store = PosteriorStore(half_life_ms=half_life)
    run(store, stream)
    ts = max([read] + [e[4] for e in stream])
    snaps = list(store.snapshots(ts))
    assert len(snaps) == len(store.arms()) + store.n_pairs
    for snap in snaps:
        post = store.posterior(snap["user_id"], snap["arm"], event_ts=ts)
        assert (snap["alpha"], snap["beta"], snap["mean"], snap["std"], snap["n"]) == (
            post.alpha, post.beta, post.mean, post.std, post.n)
        assert snap == store.snapshot(snap["user_id"], snap["arm"], ts)


def test_discard_dirty_forgets_the_pending_pairs_like_a_drain() -> None:
    drained, discarded = PosteriorStore(), PosteriorStore()
    for store in (drained, discarded):
        store.update("u1", "a", "s", 1, 1)
        store.update("u2", "b", "s", 0, 2)
        store.dirty_users(), store.dirty_arms()
    assert len(drained.drain_dirty(5)) == 4
    discarded.discard_dirty()
    assert discarded.drain_dirty(6) == []
    # The pending marks are part of the records: both name the same changed records.
    assert discarded.dirty_users() == drained.dirty_users() == {"u1", "u2"}
    assert discarded.dirty_arms() == drained.dirty_arms() == {"a", "b"}
    assert discarded.to_dict() == drained.to_dict()


def test_state_is_bounded() -> None:
    store = PosteriorStore(max_users=3, max_arms=2)
    for i in range(5):
        store.update(f"u{i}", "a", "s", 0, i)
    assert store.users() == ["u2", "u3", "u4"]
    assert store.drain_evicted() == [("u0", "a"), ("u1", "a")]
    assert store.drain_evicted() == []
    assert all(s["user_id"] not in {"u0", "u1"} for s in store.drain_dirty(9))
    # Arms beyond the cap update the pooled posterior and rates only.
    for arm in ("b", "c", "d"):
        store.update("u4", arm, "s", 1, 10)
    assert store.n_pairs == 4  # u2:a, u3:a, u4:a, u4:b
    assert store.arms() == ["a", "b"]
    # Expiry by event time returns tombstone keys.
    assert store.expire(before_ts=4) == [("u2", "a"), ("u3", "a")]
    assert store.users() == ["u4"]


@SETTINGS
@given(stream_st, st.integers(0, 60))
def test_round_trip_and_deterministic_continuation(stream, cut) -> None:
    kwargs = {"half_life_ms": 5_000.0, "max_users": 3}
    a = PosteriorStore(**kwargs)
    out_a = run(a, stream)
    b = PosteriorStore(**kwargs)
    out_b = run(b, stream[:cut])
    b = PosteriorStore.from_dict(json.loads(json.dumps(b.to_dict())))
    out_b += run(b, stream[cut:])
    assert out_a == out_b
    assert a.to_dict() == b.to_dict()
    assert list(a.snapshots(20_000)) == list(b.snapshots(20_000))
    assert a.drain_evicted() == b.drain_evicted()


def test_user_to_dict_and_load_user() -> None:
    a = PosteriorStore()
    for i in range(30):
        a.update("u", "x", "s", int(i % 3 == 0), i, conformal_uncertain=i % 2 == 0)
    data = json.loads(json.dumps(a.user_to_dict("u")))
    b = PosteriorStore()
    b.load_user("u", data)
    assert b.tier("u") == a.tier("u")
    assert b.posterior("u", "x") == a.posterior("u", "x")
    assert b.uncertain_share("u") == a.uncertain_share("u")
    assert a.user_to_dict("nobody") is None
    with pytest.raises(StateError):
        b.load_user("u", {**data, "tier": "bogus"})
    with pytest.raises(StateError):
        b.load_user("u", {**data, "v": 7})


def test_set_segment_rate_overrides_future_priors_only() -> None:
    store = PosteriorStore(prior_strength=20)
    store.update("old", "a", "s", 0, 0)
    before = store.posterior("old", "a")
    store.set_segment_rate("s", 0.3)
    assert store.segment_rate("s") == 0.3
    assert store.posterior("old", "a") == before
    new = store.posterior("new", "a", segment="s")
    assert new.mean == pytest.approx((0 + 100 * 0.3) / (1 + 100))
    store.set_segment_rate("s", None)
    assert store.segment_rate("s") != 0.3
    with pytest.raises(ConfigError):
        store.set_segment_rate("s", 1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_strength": 0},
        {"default_rate": 0.0},
        {"default_rate": 1.0},
        {"segment_prior_strength": -1},
        {"half_life_ms": 0},
        {"cv_confident": 0.6, "cv_high": 0.5},
        {"share_confident": 0.5, "share_high": 0.5},
        {"share_high": 1.5},
        {"uncertain_memory": 0},
        {"tier_margin": 1.0},
        {"max_users": 0},
        {"max_arms": 1.5},
    ],
)
def test_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        PosteriorStore(**kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("*", "a", "s", 1, 0), "reserved"),
        (("", "a", "s", 1, 0), "user_id"),
        (("u", "", "s", 1, 0), "arm"),
        (("u", "a", None, 1, 0), "segment"),
        (("u", "a", "s", 2, 0), "label"),
        (("u", "a", "s", 1, -5), "event_ts"),
        (("u", "a", "s", 1, 0, "yes"), "conformal_uncertain"),
    ],
)
def test_input_errors_change_nothing(args, match) -> None:
    store = PosteriorStore()
    with pytest.raises(InvalidInputError, match=match):
        store.update(*args)
    assert store.n_users == 0 and store.drain_dirty(0) == []


def test_tiers_constant() -> None:
    assert TIERS == ("confident", "moderate_uncertain", "high_epistemic")
    assert set(TIERS) == set(SCHEMA["properties"]["tier"]["enum"])


# ---------------------------------------------------------------------- records

ops_st = st.lists(
    st.one_of(event_st, st.sampled_from(["drain_dirty", "drain_evicted"])),
    max_size=80,
)


def step(store: PosteriorStore, op) -> list:
    if op == "drain_dirty":
        return store.drain_dirty(10_000)
    if op == "drain_evicted":
        return store.drain_evicted()
    return store.update(*op)


def persist(store: PosteriorStore, log: dict) -> None:
    """What a changelog keeps: the shared record always, the dirty ones when they change
    (None deletes), through JSON."""
    log["shared"] = json.loads(json.dumps(store.export_shared()))
    changed = [("user", u, store.export_user(u)) for u in store.dirty_users()]
    changed += [("arm", a, store.export_arm(a)) for a in store.dirty_arms()]
    changed += [("evicted", u, store.export_evicted(u)) for u in store.dirty_evicted()]
    for kind, name, value in changed:
        if value is None:
            log.pop((kind, name), None)
        else:
            log[(kind, name)] = json.loads(json.dumps(value))


@SETTINGS
@given(ops_st, st.integers(0, 80))
def test_records_restore_a_store_that_continues_exactly(ops, cut) -> None:
    kwargs = {"half_life_ms": 5_000.0, "max_users": 3}
    straight = PosteriorStore(**kwargs)
    expected = [step(straight, op) for op in ops]
    first = PosteriorStore(**kwargs)
    log: dict = {}
    got = []
    for op in ops[:cut]:
        got.append(step(first, op))
        persist(first, log)
    second = PosteriorStore(**kwargs)
    # Any order: the records carry the LRU, dirty and eviction orders themselves.
    rows = sorted((k for k in log if k != "shared"), reverse=True)
    second.restore(log.get("shared"), [log[k] for k in rows if k[0] == "user"],
                   [log[k] for k in rows if k[0] == "arm"],
                   [log[k] for k in rows if k[0] == "evicted"])
    assert not (second.dirty_users() or second.dirty_arms() or second.dirty_evicted())
    assert second.to_dict() == first.to_dict()
    got += [step(second, op) for op in ops[cut:]]
    assert got == expected
    assert second.to_dict() == straight.to_dict()
    assert list(second.snapshots(20_000)) == list(straight.snapshots(20_000))


def test_dirty_records_name_what_changed_and_deletes() -> None:
    store = PosteriorStore(max_users=2)
    store.update("u1", "a", "s", 1, 1)
    store.update("u2", None, "s", 0, 2)
    assert store.dirty_users() == {"u1", "u2"} and store.dirty_arms() == {"a"}
    assert store.dirty_users() == set() and store.dirty_evicted() == set()
    assert store.export_user("u1")["dirty"] == [["a", 0]]  # type: ignore[index]
    assert store.export_arm("a")["dirty"] == 0  # type: ignore[index]
    store.update("u3", "b", "t", 0, 3)  # evicts u1
    assert store.dirty_users() == {"u1", "u3"} and store.export_user("u1") is None
    assert store.dirty_evicted() == {"u1"}
    assert store.export_evicted("u1") == {"v": 1, "user_id": "u1", "arms": [["a", 0]]}
    assert [s["user_id"] for s in store.drain_dirty(5)] == ["*", "u3", "*"]
    # The drained marks were part of the users' and arms' records.
    assert store.dirty_users() == {"u3"} and store.dirty_arms() == {"a", "b"}
    assert store.export_user("u3")["dirty"] == []  # type: ignore[index]
    assert store.drain_evicted() == [("u1", "a")]
    assert store.dirty_evicted() == {"u1"} and store.export_evicted("u1") is None
    assert store.export_arm("nothing") is None and store.export_user("nobody") is None


def test_malformed_records_are_rejected() -> None:
    store = PosteriorStore()
    store.update("u", "a", "s", 1, 1)
    shared, user, arm = store.export_shared(), store.export_user("u"), store.export_arm("a")
    assert user is not None and arm is not None
    for bad in (
        ({**shared, "v": 2}, [user], [arm]),
        (shared, [{**user, "touch": -1}], [arm]),
        (shared, [{**user, "dirty": [["b", 0]]}], [arm]),
        (shared, [user, user], [arm]),
        (shared, [user], [{**arm, "i": 3}]),
        (shared, [{k: v for k, v in user.items() if k != "pooled"}], [arm]),
    ):
        with pytest.raises(StateError):
            PosteriorStore().restore(*bad)


def _scanned_counts(store: PosteriorStore) -> tuple[int, dict[str, int]]:
    """Pairs and users per tier by a full scan of the held users (the reference)."""
    tiers = dict.fromkeys((*TIERS, "none"), 0)
    pairs = 0
    for uid in store.users():
        data = store.user_to_dict(uid)
        assert data is not None
        tiers[data["tier"] or "none"] += 1
        pairs += len(data["arms"])
    return pairs, tiers


@SETTINGS
@given(ops_st, st.integers(0, 80), st.integers(0, 10_000))
def test_pair_and_tier_counts_follow_every_change(ops, cut, expire_before) -> None:
    """``n_pairs`` and ``tier_counts`` are kept as the store changes (no scan): after
    updates, evictions (``max_users``), ``expire``, ``load_user`` and a restore they equal
    a scan of the users held."""
    kwargs = {"half_life_ms": 5_000.0, "max_users": 3}
    store = PosteriorStore(**kwargs)
    log: dict = {}
    for op in ops[:cut]:
        step(store, op)
        persist(store, log)
        assert (store.n_pairs, store.tier_counts()) == _scanned_counts(store)
    restored = PosteriorStore(**kwargs)
    restored.restore(log.get("shared"), [v for k, v in log.items() if k[0] == "user"],
                     [v for k, v in log.items() if k[0] == "arm"],
                     [v for k, v in log.items() if k[0] == "evicted"])
    assert (restored.n_pairs, restored.tier_counts()) == _scanned_counts(store)
    for op in ops[cut:]:
        step(restored, op)
    restored.expire(expire_before)
    assert (restored.n_pairs, restored.tier_counts()) == _scanned_counts(restored)
    other = PosteriorStore(**kwargs)
    other.update("u9", "a", "s1", 1, event_ts=1)
    other.update("u9", "b", "s1", 0, event_ts=2)
    for uid in ("u1", "u9"):  # replaces a held user (if any), or adds one
        data = other.user_to_dict("u9")
        assert data is not None
        restored.load_user(uid, data)
        assert (restored.n_pairs, restored.tier_counts()) == _scanned_counts(restored)
