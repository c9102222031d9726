"""RecalibrationPolicy: what it publishes, when, and that it survives a restart."""

from __future__ import annotations

import doctest
import hashlib
import math
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import pytest

import worker.core.policy.policy_config as policy_config_module
import worker.core.policy.recalibration_policy as policy_module
from worker.core.calibrators import TemperatureCalibrator, calibrator_from_dict
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.policy import PolicyConfig, RecalibrationPolicy
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

from .streams import CREATED_AT, DAY_MS, START_MS, make_events, run, schema_validator

GRID = np.linspace(-5.0, 2.0, 29)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def served_p(msg: dict[str, Any] | None, z: np.ndarray) -> np.ndarray:
    if msg is None:
        return sigmoid(z)
    return np.asarray(calibrator_from_dict(msg).apply_logit(z))


def by_key(msgs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in msgs:
        out[(m["model_id"], m["scope"])].append(m)
    return out


def check_messages(msgs: list[dict[str, Any]]) -> None:
    """The contract of every version message (DESIGN §3 and the schema)."""
    validator = schema_validator()
    for m in msgs:
        errors = sorted(validator.iter_errors(m), key=str)
        assert not errors, (m, errors[0].message)
        tr = m["training"]
        if tr["from_ts"] is not None:
            assert tr["from_ts"] <= tr["to_ts"] <= m["event_ts"]
            assert 0 <= tr["positives"] <= tr["n"]
        calibrator_from_dict(m)  # params are a valid calibrator
    for msgs_of_key in by_key(msgs).values():
        versions = [m["version"] for m in msgs_of_key]
        assert versions == list(range(versions[0], versions[0] + len(versions)))
        assert msgs_of_key[0]["reason"] == "bootstrap" or versions[0] > 1
        assert all(m["reason"] != "bootstrap" for m in msgs_of_key[1:])
        ts = [m["event_ts"] for m in msgs_of_key]
        assert ts == sorted(ts)


# ---------------------------------------------------------------------- split


def test_holdout_split_is_a_salted_hash_of_the_impression_id() -> None:
    policy = RecalibrationPolicy()
    ids = [f"imp-{k}" for k in range(20_000)]
    flags = [policy.is_holdout(i) for i in ids]
    # Independent reference: the documented construction.
    ref = [
        int.from_bytes(
            hashlib.blake2b(i.encode(), digest_size=8, key=b"recal-holdout-v1").digest(), "big"
        ) < int(0.2 * 2**64)
        for i in ids
    ]
    assert flags == ref
    assert abs(np.mean(flags) - 0.2) < 0.01
    assert flags == [RecalibrationPolicy().is_holdout(i) for i in ids]  # same on every worker
    other = RecalibrationPolicy(PolicyConfig(holdout_salt="other"))
    agree = np.mean([a == other.is_holdout(i) for a, i in zip(flags, ids, strict=True)])
    assert agree < 0.75  # ~0.68 for independent 20% splits


# ---------------------------------------------------------------------- what is published


def test_overconfident_stream_gets_its_temperature_at_bootstrap() -> None:
    ev = make_events(20_000, seed=1, temperature=1.6, gap_ms=1_000)
    # The refit family alone (the online learner's map follows at the refit cadence by
    # design, issue 10 item 3: see test_the_online_learner_follows_at_most_once_per_refit).
    policy = RecalibrationPolicy(PolicyConfig(online_method=None))
    msgs = run(policy, ev)
    check_messages(msgs)
    first = msgs[0]
    assert (first["scope"], first["version"], first["reason"]) == ("global", 1, "bootstrap")
    assert first["method"] in ("temperature", "platt")
    assert first["metrics"]["nll_after"] < first["metrics"]["nll_before"]
    assert first["metrics"]["n_eval"] >= policy.config.min_n_eval
    # Later versions are refinements on geometrically more data (or beat their predecessor):
    # a handful over 20 refits, not one per refit.
    n = [m["training"]["n"] for m in msgs if m["scope"] == "global"]
    assert len(n) <= 2 + math.log(n[-1] / n[0], policy.config.refine_factor or 3.0)
    # Against an independent batch fit on all events, and against the truth.
    batch = TemperatureCalibrator.fit(ev.z, ev.y)
    final = policy.resolve("m", "web", "u1")
    assert np.abs(served_p(final, GRID) - batch.apply_logit(GRID)).max() < 0.02
    assert np.abs(served_p(final, GRID) - sigmoid(GRID / 1.6)).max() < 0.02


def test_the_online_learner_follows_at_most_once_per_refit() -> None:
    """With the online learner (the default), its map may replace the served one at each
    scheduled refit (at most one global version per refit), and what is served at the end
    is as close to the truth as the refit family's."""
    ev = make_events(20_000, seed=1, temperature=1.6, gap_ms=1_000)
    policy = RecalibrationPolicy()
    msgs = run(policy, ev)
    check_messages(msgs)
    glob = [m for m in msgs if m["scope"] == "global"]
    assert len(glob) <= 20_000 // policy.config.recalibrate_every
    final = policy.resolve("m", "web", "u1")
    assert np.abs(served_p(final, GRID) - sigmoid(GRID / 1.6)).max() < 0.02


@pytest.mark.parametrize("seed", [2, 3])
def test_stationary_calibrated_stream_does_not_churn(seed: int) -> None:
    ev = make_events(50_000, seed=seed, segments=(("web", 0.6, 0.0), ("app", 0.4, 0.0)),
                     gap_ms=1_000)
    # The refit family (the online learner's map is followed on weaker evidence by design:
    # see test_stationary_stream_with_the_online_learner_stays_near_identity).
    policy = RecalibrationPolicy(PolicyConfig(online_method=None))
    msgs = run(policy, ev)
    check_messages(msgs)
    # 50 refits, and the bootstrap (identity: nothing beats the model's own scores) is the
    # only version; identity is not an estimate, so it is not "refined" either.
    assert [(m["scope"], m["method"], m["reason"]) for m in msgs] == [
        ("global", "identity", "bootstrap")
    ]


def test_stationary_stream_with_the_online_learner_stays_near_identity() -> None:
    """With the learner (the default) a calibrated stream may get a few versions of the
    learner's map (seed 2: 4 besides the bootstrap, over 50 refits), each one beating
    identity on the holdout and none far from it."""
    ev = make_events(50_000, seed=2, segments=(("web", 0.6, 0.0), ("app", 0.4, 0.0)),
                     gap_ms=1_000)
    policy = RecalibrationPolicy()
    msgs = run(policy, ev)
    check_messages(msgs)
    assert msgs[0]["method"] == "identity"
    assert len(msgs) <= 10
    for m in msgs:
        assert np.abs(served_p(m, GRID) - sigmoid(GRID)).max() < 0.05


def test_abrupt_drift_is_followed_by_a_fit_on_the_new_regime() -> None:
    change = 20_000
    ev = make_events(40_000, seed=4, change_at=change, temperature_after=1.6, gap_ms=1_000)
    change_ts = int(ev.ts[change])
    # The refit family's change path; with the learner the last version may be the
    # learner's map, which carries its step noise (~0.06 off here in p at the top end).
    policy = RecalibrationPolicy(PolicyConfig(online_method=None))
    msgs = run(policy, ev)
    check_messages(msgs)
    after = [m for m in msgs if m["event_ts"] >= change_ts]
    assert after, msgs
    first = after[0]
    # Within four refits of the change (the gate waits for the post-change holdout to show
    # it beats the served map and identity beyond noise; three before the gate), fitted on
    # (nearly) post-change events only.
    assert first["event_ts"] - change_ts <= 4_000 * 1_000
    assert first["training"]["from_ts"] >= change_ts - 200 * 1_000
    assert first["reason"] == "scheduled"
    assert np.abs(served_p(first, GRID) - sigmoid(GRID / 1.6)).max() < 0.05
    final = policy.resolve("m", "web", None)
    assert np.abs(served_p(final, GRID) - sigmoid(GRID / 1.6)).max() < 0.02


def test_request_refit_publishes_at_once_with_reason_drift() -> None:
    change = 10_000
    ev = make_events(10_800, seed=5, change_at=change, temperature_after=1.6, gap_ms=1_000)
    policy = RecalibrationPolicy(PolicyConfig(recalibrate_every=5_000))
    msgs = run(policy, ev)
    assert [(m["scope"], m["reason"]) for m in msgs] == [("global", "bootstrap")] * 2 or all(
        m["event_ts"] < int(ev.ts[change]) for m in msgs
    )
    before = policy.current("m", "global")
    out = policy.request_refit("m", "global", "drift", created_at=CREATED_AT)
    assert [m["scope"] for m in out][:1] == ["global"]
    drift_msg = out[0]
    assert drift_msg["reason"] == "drift"
    assert drift_msg["version"] == before["version"] + 1
    assert drift_msg["training"]["from_ts"] >= int(ev.ts[change]) - 200 * 1_000
    check_messages(msgs + out)
    assert policy.request_refit("unknown", created_at=CREATED_AT) == []
    assert policy.request_refit("m", "segment:nope", created_at=CREATED_AT) == []
    with pytest.raises(ConfigError):
        policy.request_refit("m", "global", "panic", created_at=CREATED_AT)


def test_young_version_after_a_change_is_refined_before_the_next_scheduled_refit() -> None:
    change = 10_000
    ev = make_events(14_000, seed=12, change_at=change, temperature_after=1.6, gap_ms=1_000)
    fbs = list(ev.feedback())
    # recalibrate_every 1,000, refine_factor 2; the refit family's refinement (without the
    # online learner, whose map may be the first version after the change instead).
    policy = RecalibrationPolicy(PolicyConfig(online_method=None))
    msgs = [m for f in fbs[: change + 600] for m in policy.update(f, created_at=CREATED_AT)]
    drift = policy.request_refit("m", "global", "drift", created_at=CREATED_AT)[0]
    n0 = drift["training"]["n"]
    assert drift["reason"] == "drift" and n0 < 700
    after: list[dict[str, Any]] = []
    for k, f in enumerate(fbs[change + 600:]):
        after += [dict(m, at=k) for m in policy.update(f, created_at=CREATED_AT)
                  if m["scope"] == "global"]
    check_messages(msgs + [drift] + [{k: v for k, v in m.items() if k != "at"} for m in after])
    # The first refinement comes once the regime holds twice the drift version's training
    # events (~1.1 * n0 / 0.8 events later), not 1,000 events later, and is fitted on them.
    first = after[0]
    assert first["at"] < 1_000 - 100 and first["at"] <= math.ceil(1.1 * n0 / 0.8) + 1
    # Either a refinement (twice the data) or, the drift version being shrunk toward the
    # map served before the change, a fit that beats it on the holdout outright.
    assert first["training"]["n"] >= 2 * n0 or (
        first["metrics"]["nll_after"] < first["metrics"]["nll_before"]
    )
    assert first["training"]["from_ts"] >= int(ev.ts[change]) - 200 * 1_000
    # The refinements get closer to the truth, T = 1.6 (the regime's fits stay shrunk
    # toward the map served at the change, a prior worth drift_prior_strength events).
    final = policy.resolve("m", "web", None)
    err_final = np.abs(served_p(final, GRID) - sigmoid(GRID / 1.6)).max()
    assert err_final < 0.03
    assert err_final < np.abs(served_p(drift, GRID) - sigmoid(GRID / 1.6)).max() / 2


@pytest.mark.parametrize(("gain_per_event", "picked"), [(0.005, "temperature"),
                                                       (0.008, "platt")])
def test_platt_needs_schwarz_margin_over_temperature(gain_per_event: float, picked: str) -> None:
    # 500 holdout events; Platt beats temperature by many standard errors and by more
    # than min_improvement either way. A total gain of 2.5 nats is below Schwarz's margin
    # for one more parameter (ln 500 / 2 = 3.1 nats): the simpler form is kept; 4 nats
    # is above it: Platt is picked.
    from worker.core.calibrators import PlattCalibrator
    from worker.core.policy._selection import Candidate, Scored

    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(np.float64)
    temp_losses = 0.5 + rng.normal(0.0, 0.05, 500)
    platt_losses = temp_losses - gain_per_event + rng.normal(0.0, 0.01, 500)
    p = np.full(500, 0.2)
    training = {"n": 2_000, "positives": 400, "from_ts": 0, "to_ts": 1}
    temp = Scored(Candidate("temperature", TemperatureCalibrator(1.6), training), p,
                  temp_losses)
    platt = Scored(Candidate("platt", PlattCalibrator(0.6, -0.1), training), p, platt_losses)
    policy = RecalibrationPolicy()
    assert policy._pick([temp, platt], y).candidate.name == picked


def test_small_segment_keeps_its_offset_when_the_global_changes() -> None:
    # "new": 4 % of events, model logits offset by +0.8; the model as a whole turns
    # over-confident (T = 1.6) at the change. Too few "new" events after the change to fit
    # it again: it must carry its offset over, serving (z - 0.8) / 1.6, not the global z / 1.6.
    change = 30_000
    ev = make_events(change + 1_500, seed=13, change_at=change, temperature_after=1.6,
                     gap_ms=1_000, segments=(("web", 0.96, 0.0), ("new", 0.04, 0.8)))
    fbs = list(ev.feedback())
    # The offset mechanism alone: no online learner, and a post-change fit that is not
    # held back toward the served map (with the default prior the new global moves only a
    # quarter of the way on these 700 events, test_guards checks that).
    policy = RecalibrationPolicy(PolicyConfig(online_method=None, drift_prior_strength=1.0))
    msgs = [m for f in fbs[: change + 700] for m in policy.update(f, created_at=CREATED_AT)]
    before = policy.resolve("m", "new", None)
    assert before is not None and before["scope"] == "segment:new"
    assert np.abs(served_p(before, GRID) - sigmoid(GRID - 0.8)).max() < 0.06
    msgs += policy.request_refit("m", "global", "drift", created_at=CREATED_AT)
    msgs += [m for f in fbs[change + 700:] for m in policy.update(f, created_at=CREATED_AT)]
    check_messages(msgs)
    g = policy.current("m", "global")
    assert g is not None and g["event_ts"] >= int(ev.ts[change])
    new = policy.resolve("m", "new", None)
    assert new is not None and new["scope"] == "segment:new" and new["version"] > before["version"]
    assert new["training"]["n"] == 0  # no post-change "new" data went into it
    truth = sigmoid((GRID - 0.8) / 1.6)
    err = np.abs(served_p(new, GRID) - truth).max()
    mirror_err = np.abs(served_p(g, GRID) - truth).max()
    assert err < 0.06 and err < mirror_err / 2
    # It is exactly the new global composed with the segment's offset from the old one.
    g_cal = calibrator_from_dict(g)
    old_offset = served_p(before, GRID)  # old global was identity here
    assert policy.resolve("m", "web", None)["scope"] == "global"  # type: ignore[index]
    z_seg = np.log(old_offset / (1 - old_offset))
    np.testing.assert_allclose(served_p(new, GRID), g_cal.apply_logit(z_seg), atol=1e-9)


def test_segment_with_its_own_miscalibration_gets_a_segment_version() -> None:
    ev = make_events(40_000, seed=6, segments=(("web", 0.7, 0.0), ("app", 0.3, 0.8)),
                     gap_ms=1_000)
    policy = RecalibrationPolicy()
    msgs = run(policy, ev)
    check_messages(msgs)
    app = policy.resolve("m", "app", None)
    web = policy.resolve("m", "web", None)
    assert app is not None and app["scope"] == "segment:app"
    assert web is not None and web["scope"] == "global"
    assert app["method"] in ("platt", "isotonic", "contextual")
    truth = sigmoid(GRID - 0.8)
    err = np.abs(served_p(app, GRID) - truth).max()
    assert err < 0.05 and err < np.abs(sigmoid(GRID) - truth).max() / 3
    # The global serves web, and is fitted on web alone: it stays (close to) identity.
    assert np.abs(served_p(web, GRID) - sigmoid(GRID)).max() < 0.01
    # calibrate() is exactly the resolved calibrator applied to the score.
    for s in (0.01, 0.2, 0.7):
        assert policy.calibrate(s, "m", "app", "u3") == pytest.approx(
            float(calibrator_from_dict(app).apply(s)), abs=1e-12
        )


def test_users_get_a_version_only_when_eligible_and_different() -> None:
    # 40k events at 5 s: 2.3 days, so heavy users see two or three distinct days.
    specials = {"loud": (1.0, 2.0), "quiet": (1.0, 0.0)}
    ev = make_events(40_000, seed=7, gap_ms=5_000, n_users=400, special_users=specials,
                     special_share=0.05)
    policy = RecalibrationPolicy()
    msgs = run(policy, ev)
    check_messages(msgs)
    user_scopes = {m["scope"] for m in msgs if m["scope"].startswith("user:")}
    assert user_scopes == {"user:loud"}, user_scopes
    loud = policy.resolve("m", "web", "loud")
    assert loud is not None and loud["scope"] == "user:loud"
    first = next(m for m in msgs if m["scope"] == "user:loud")
    assert first["reason"] == "bootstrap"
    assert first["training"]["n"] + first["metrics"]["n_eval"] >= 200  # the gate's minimum
    assert first["metrics"]["nll_after"] < first["metrics"]["nll_before"]
    # The model over-predicts this user by 2 logits; the shrunk calibrator undoes most of it.
    truth = sigmoid(GRID - 2.0)
    assert np.abs(served_p(loud, GRID) - truth).max() < np.abs(sigmoid(GRID) - truth).max() / 2
    # Everyone else (few events, or no difference) is served the fallback.
    for user in ("quiet", "u1", "u2"):
        assert policy.resolve("m", "web", user) == policy.resolve("m", "web", None)


def test_user_gate_needs_distinct_days() -> None:
    # Same "loud" user, but everything within one day: never eligible.
    ev = make_events(40_000, seed=7, gap_ms=1_000, n_users=400,
                     special_users={"loud": (1.0, 2.0)}, special_share=0.05)
    assert int(ev.ts[-1] - ev.ts[0]) < DAY_MS
    policy = RecalibrationPolicy()
    msgs = run(policy, ev)
    assert not [m for m in msgs if m["scope"].startswith("user:")]


def test_isotonic_global_gives_segments_a_parametric_parent() -> None:
    rng = np.random.default_rng(8)
    n = 40_000
    z = rng.normal(-1.5, 1.2, n)
    # A monotone but non-logistic truth: no temperature or Platt map gets it right.
    p = np.where(z < -1.5, 0.03, 0.45)
    seg = ["web" if r < 0.8 else "app" for r in rng.random(n)]
    y = (rng.random(n) < p).astype(int)
    policy = RecalibrationPolicy()
    msgs = []
    for i in range(n):
        imp = Impression(f"i{i}", f"u{i % 300}", "it", START_MS + 1_000 * i, "m",
                         float(sigmoid(np.array(z[i]))), float(z[i]), seg[i], None, None)
        msgs += policy.update(Feedback(imp, int(y[i]), START_MS + 1_000 * i, None, None),
                              created_at=CREATED_AT)
    check_messages(msgs)
    assert any(m["scope"] == "global" and m["method"] == "isotonic" for m in msgs)
    state = policy.to_dict()["shared"]["models"]["m"]["scopes"]["global"]
    if state["current"]["method"] == "isotonic":
        assert state["parametric"]["method"] in ("identity", "temperature", "platt")
    for segment in ("web", "app"):
        q = policy.calibrate(0.5, "m", segment, None)
        assert 0.0 <= q <= 1.0


# ---------------------------------------------------------------------- cohorts, bounds


def test_positives_wait_until_their_impression_cohort_is_complete() -> None:
    policy = RecalibrationPolicy()

    def fb(i: int, label: int) -> Feedback:
        imp = Impression(f"i{i}", "u", "it", START_MS + i, "m", 0.3, math.log(0.3 / 0.7),
                         "web", None, None)
        return Feedback(imp, label, START_MS + i + (0 if label else 300_000), None, None)

    for i in range(5):
        assert policy.update(fb(i, 1), created_at=CREATED_AT) == []
    state = policy.to_dict()["shared"]["models"]["m"]
    assert state["seq"] == 0 and len(state["gate"]["pending"]) == 5
    policy.update(fb(3, 0), created_at=CREATED_AT)  # releases positives with ts <= 3
    state = policy.to_dict()["shared"]["models"]["m"]
    assert state["seq"] == 1 + 4 and len(state["gate"]["pending"]) == 1
    policy.update(fb(9, 0), created_at=CREATED_AT)
    assert policy.to_dict()["shared"]["models"]["m"]["seq"] == 7


def test_user_state_is_bounded_by_count_and_by_event_time() -> None:
    policy = RecalibrationPolicy(PolicyConfig(max_users=50, user_ttl_ms=3_600_000.0))
    ev = make_events(3_000, seed=9, n_users=1_000, gap_ms=1_000)
    run(policy, ev)
    assert policy.user_count() == 50
    keep = RecalibrationPolicy(PolicyConfig(user_ttl_ms=600_000.0))
    ev2 = make_events(3_000, seed=9, n_users=20, gap_ms=1_000)
    run(keep, ev2)
    assert keep.user_count() <= 20
    # Nobody but "late" is seen during the last 20 minutes: everyone else expires.
    late = [
        Feedback(Impression(f"late{k}", "late", "it", int(ev2.ts[-1]) + 60_000 * (k + 1), "m",
                            0.2, math.log(0.25), "web", None, None),
                 0, int(ev2.ts[-1]) + 60_000 * (k + 1), None, None)
        for k in range(20)
    ]
    for f in late:
        keep.update(f, created_at=CREATED_AT)
    assert keep.user_count() == 1


def test_bad_feedback_is_rejected() -> None:
    policy = RecalibrationPolicy()
    imp = Impression("i", "u", "it", START_MS, "m", 0.5, float("nan"), "web", None, None)
    with pytest.raises(InvalidInputError):
        policy.update(Feedback(imp, 0, START_MS, None, None), created_at=CREATED_AT)
    ok = Impression("i", "u", "it", START_MS, "m", 0.5, 0.0, "web", None, None)
    with pytest.raises(InvalidInputError):
        policy.update(Feedback(ok, 2, START_MS, None, None), created_at=CREATED_AT)
    with pytest.raises(InvalidInputError):
        policy.update(Feedback(ok, 0, START_MS, None, None), created_at="")
    with pytest.raises(ConfigError):
        RecalibrationPolicy(config={"z": 2})  # type: ignore[arg-type]


# ---------------------------------------------------------------------- persistence


def test_restart_from_state_continues_exactly() -> None:
    specials = {"loud": (1.0, 2.0)}
    ev = make_events(36_000, seed=10, change_at=18_000, temperature_after=1.6, gap_ms=5_000,
                     segments=(("web", 0.7, 0.0), ("app", 0.3, 0.5)), n_users=300,
                     special_users=specials, special_share=0.05)
    fbs = list(ev.feedback())
    one = RecalibrationPolicy()
    straight = [m for f in fbs for m in one.update(f, created_at=CREATED_AT)]
    first = RecalibrationPolicy()
    half = len(fbs) // 2 + 7
    resumed = [m for f in fbs[:half] for m in first.update(f, created_at=CREATED_AT)]
    state = orjson.loads(orjson.dumps(first.to_dict()))
    second = RecalibrationPolicy.from_dict(state)
    assert second.to_dict() == first.to_dict()
    resumed += [m for f in fbs[half:] for m in second.update(f, created_at=CREATED_AT)]
    assert resumed == straight
    assert second.to_dict() == one.to_dict()
    check_messages(straight)
    assert {m["scope"] for m in straight} >= {"global", "segment:app"}


def test_records_restore_a_policy_that_continues_exactly() -> None:
    """The per-user records written when ``dirty_users`` names them, plus the shared
    record, are the whole state: a policy restored from them (in any order) continues
    exactly, LRU evictions included."""
    specials = {"loud": (1.0, 2.0)}
    ev = make_events(24_000, seed=11, change_at=12_000, temperature_after=1.6, gap_ms=5_000,
                     segments=(("web", 0.7, 0.0), ("app", 0.3, 0.5)), n_users=300,
                     special_users=specials, special_share=0.05)
    fbs = list(ev.feedback())
    # Eligible early (the "loud" user gets versions before the cut), evicting often.
    cfg = PolicyConfig(max_users=150, gate_min_days=1, gate_min_events=100)
    one = RecalibrationPolicy(cfg)
    straight = [m for f in fbs for m in one.update(f, created_at=CREATED_AT)]
    first = RecalibrationPolicy(cfg)
    log: dict[str, Any] = {}
    deleted = set()
    resumed = []
    cut = len(fbs) * 2 // 3 + 5
    for f in fbs[:cut]:
        resumed += first.update(f, created_at=CREATED_AT)
        for user_id in first.dirty_users():
            value = first.export_user(user_id)
            if value is None:
                log.pop(user_id, None)
                deleted.add(user_id)
            else:
                log[user_id] = orjson.loads(orjson.dumps(value))
    assert deleted and any(rec["versions"] for rec in log.values())
    # Nothing changed was left out: the log holds every user's current record.
    assert log == {u: orjson.loads(orjson.dumps(first.export_user(u)))
                   for u in first.record_users()}
    second = RecalibrationPolicy(cfg)
    second.restore(orjson.loads(orjson.dumps(first.export_shared())),
                   [log[u] for u in sorted(log, reverse=True)])
    assert second.dirty_users() == set()
    assert second.to_dict() == first.to_dict()
    resumed += [m for f in fbs[cut:] for m in second.update(f, created_at=CREATED_AT)]
    assert resumed == straight
    assert second.to_dict() == one.to_dict()
    assert any(m["scope"].startswith("user:") for m in straight)


def test_malformed_state_is_rejected() -> None:
    good = RecalibrationPolicy().to_dict()
    with pytest.raises(StateError):
        RecalibrationPolicy.from_dict({**good, "v": 99})
    with pytest.raises(StateError):
        RecalibrationPolicy.from_dict({**good, "shared": {**good["shared"],
                                                          "models": {"m": {"seq": 1}}}})
    with pytest.raises(StateError):
        RecalibrationPolicy.from_dict({**good, "users": [{"v": 1, "user_id": "u",
                                                          "buffers": [["m", 0, {}]],
                                                          "versions": []}]})


@pytest.mark.parametrize("module", [policy_module, policy_config_module])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


def test_user_sync_skipped_between_scope_changes_publishes_what_a_full_scan_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_sync_users` skips its scan while no scope has a new version or regime; forcing
    the scan at every refit must publish exactly the same messages (user versions, then a
    regime change that sends them back to following their fallback)."""
    specials = {"loud": (1.0, 2.0), "shy": (1.0, -1.5)}
    ev = make_events(60_000, seed=11, gap_ms=5_000, n_users=300, special_users=specials,
                     special_share=0.08, change_at=40_000, temperature_after=1.7)
    skipped = run(RecalibrationPolicy(), ev)
    assert any(m["scope"].startswith("user:") for m in skipped)
    original = RecalibrationPolicy._sync_users

    def always_scan(self: RecalibrationPolicy, model_id: str, model: Any, *args: Any) -> Any:
        model.synced = None
        return original(self, model_id, model, *args)

    monkeypatch.setattr(RecalibrationPolicy, "_sync_users", always_scan)
    assert run(RecalibrationPolicy(), ev) == skipped
