"""AlertLifecycle: one firing and one resolved event per episode, hysteresis, identity, replay."""

from __future__ import annotations

import doctest
import json
import pathlib

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.core.alerts.alert_lifecycle as module
from worker.core.alerts import KINDS, AlertLifecycle, fingerprint
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.records.timefmt import iso_utc_ms

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCHEMA = json.loads(
    (pathlib.Path(__file__).parents[4] / "schemas" / "alert.schema.json").read_text()
)
T0 = "2024-05-01T12:00:00Z"

signals_st = st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=80)
params_st = st.fixed_dictionaries(
    {
        "for_events": st.integers(1, 4),
        "for_ms": st.sampled_from([0, 0, 30, 100]),
        "resolve_events": st.integers(1, 4),
        "resolve_ms": st.sampled_from([0, 0, 30, 100]),
    }
)


def drive(lc: AlertLifecycle, signals, kind="ece_high", scope="global", start_ts=0):
    """Feed (active, dt) steps; event time advances by dt. Returns the emitted events."""
    out, ts = [], start_ts
    for i, (active, dt) in enumerate(signals):
        ts += dt
        out.extend(
            lc.observe(kind, "m1", scope, active, float(i), 0.5, ts, T0,
                       details={"step": i})
        )
    return out


def reference(signals, for_events, for_ms, resolve_events, resolve_ms):
    """Independent formulation over the whole sequence: fire/resolve step indices."""
    firing, out = False, []
    ts, run_start, run_len = 0, None, 0
    for i, (active, dt) in enumerate(signals):
        ts += dt
        # A run is a maximal stretch of observations in the same state since the last
        # transition; hysteresis compares its length and event-time span.
        wanted = not firing  # fire needs active runs, resolve needs clear runs
        if active == wanted:
            if run_len == 0:
                run_start = ts
            run_len += 1
            need_n, need_ms = (for_events, for_ms) if wanted else (resolve_events, resolve_ms)
            if run_len >= need_n and ts - run_start >= need_ms:
                out.append(("firing" if wanted else "resolved", i))
                firing = not firing
                run_len = 0
        else:
            run_len = 0
    return out


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


@SETTINGS
@given(signals_st, params_st)
def test_agrees_with_reference_and_alternates(signals, params) -> None:
    lc = AlertLifecycle(**params)
    events = drive(lc, signals)
    want = reference(signals, **params)
    assert [(e["status"], e["details"]["step"]) for e in events] == want
    # Strict alternation: exactly one firing per episode, one resolved when it ends.
    statuses = [e["status"] for e in events]
    assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + (
        ["firing"] if len(statuses) % 2 else []
    )
    for fire, res in zip(events[::2], events[1::2], strict=False):
        assert res["alert_id"] == fire["alert_id"]
        assert res["starts_at"] == fire["starts_at"]
        assert res["labels"] == fire["labels"]
    ids = [e["alert_id"] for e in events[::2]]
    assert len(set(ids)) == len(ids)
    assert len(lc.firing()) == len(statuses) % 2
    for e in events:
        jsonschema.validate(e, SCHEMA)


@SETTINGS
@given(signals_st, params_st, st.integers(0, 80))
def test_replay_is_deterministic_across_restarts(signals, params, cut) -> None:
    a = AlertLifecycle(**params)
    full = drive(a, signals)
    b = AlertLifecycle(**params)
    first = drive(b, signals[:cut])
    ts = sum(dt for _, dt in signals[:cut])
    b = AlertLifecycle.from_dict(json.loads(json.dumps(b.to_dict())))
    rest = []
    for i, (active, dt) in enumerate(signals[cut:], start=cut):
        ts += dt
        rest.extend(b.observe("ece_high", "m1", "global", active, float(i), 0.5, ts, T0,
                              details={"step": i}))
    assert first + rest == full
    assert a.to_dict() == b.to_dict()
    assert a.firing() == b.firing()


def test_hysteresis_counts() -> None:
    lc = AlertLifecycle(for_events=3, resolve_events=2)
    steps = [True, True, False, True, True, True, True, False, True, False, False, False]
    got = drive(lc, [(s, 1) for s in steps])
    assert [(e["status"], e["details"]["step"]) for e in got] == [("firing", 5), ("resolved", 10)]
    assert lc.state("ece_high", "m1", "global") == "inactive"


def test_for_ms_and_resolve_ms_use_event_time() -> None:
    lc = AlertLifecycle(for_events=1, for_ms=60_000, resolve_events=1, resolve_ms=120_000)
    obs = lambda active, ts: lc.observe(  # noqa: E731
        "feedback_stall", "m", "segment:new", active, 1.0, 0.0, ts, T0, severity="critical"
    )
    assert obs(True, 1_000) == []
    assert lc.state("feedback_stall", "m", "segment:new") == "pending"
    assert obs(True, 60_999) == []
    [fire] = obs(True, 61_000)
    assert fire["starts_at"] == iso_utc_ms(61_000) and fire["severity"] == "critical"
    assert fire["details"]["lifecycle"]["active_since_ts"] == 1_000
    assert obs(False, 100_000) == []
    assert obs(False, 219_999) == []
    [res] = obs(False, 220_000)
    assert res["status"] == "resolved" and res["ends_at"] == iso_utc_ms(220_000)
    assert res["details"]["lifecycle"]["resolved_ts"] == 220_000


def test_dedup_refreshes_firing_view_only() -> None:
    lc = AlertLifecycle()
    [fire] = lc.observe("calibration_drift", "m", "global", True, 12.0, 11.7, 10, T0,
                        details={"direction": "overconfident"})
    for ts in range(11, 20):
        assert lc.observe("calibration_drift", "m", "global", True, float(ts), 11.7, ts,
                          "2024-05-01T12:00:05Z", severity="critical") == []
    [live] = lc.firing()
    assert live["alert_id"] == fire["alert_id"]
    assert live["value"] == 19.0 and live["event_ts"] == 19
    assert live["created_at"] == T0  # the firing event's creation time
    # Severity and labels are fixed for the episode; the escalation is recorded.
    assert live["severity"] == "warning" and live["labels"]["severity"] == "warning"
    assert live["details"]["lifecycle"]["peak_severity"] == "critical"
    assert live["details"]["lifecycle"]["observations"] == 10
    assert fire["details"] == {
        "direction": "overconfident",
        "lifecycle": {
            "active_since_ts": 10, "fired_ts": 10, "resolved_ts": None,
            "observations": 1, "peak_severity": "warning",
        },
    }


def test_record_format() -> None:
    lc = AlertLifecycle(resolve_events=1)
    [fire] = lc.observe("base_rate_shift", "ranker", "segment:eu", True, 0.07, 0.05,
                        1_700_000_000_000, T0, details={"rate": 0.07})
    [res] = lc.observe("base_rate_shift", "ranker", "segment:eu", False, 0.05, 0.05,
                       1_700_000_600_000, "2024-05-01T12:10:00.5+00:00")
    for e in (fire, res):
        jsonschema.validate(e, SCHEMA)
        assert set(e) == set(SCHEMA["properties"])
    fp = fingerprint("base_rate_shift", "ranker", "segment:eu")
    assert fire["fingerprint"] == res["fingerprint"] == fp
    assert fire["alert_id"] == f"{fp}-1700000000000"
    assert fire["ends_at"] is None and fire["status"] == "firing"
    assert fire["starts_at"] == res["starts_at"] == "2023-11-14T22:13:20.000Z"
    assert res["ends_at"] == "2023-11-14T22:23:20.000Z"
    assert res["created_at"] == "2024-05-01T12:10:00.5+00:00"
    assert fire["labels"] == {
        "alertname": "base_rate_shift", "kind": "base_rate_shift", "model_id": "ranker",
        "scope": "segment:eu", "severity": "warning",
    }
    assert "ranker" in fire["annotations"]["summary"]
    assert "resolved" in res["annotations"]["description"]
    assert res["value"] == 0.05 and res["details"]["lifecycle"]["fired_ts"] == 1_700_000_000_000


def test_fingerprint_is_stable_and_specific() -> None:
    # Pinned: a change would re-key every alert on the compacted-by-fingerprint topic.
    assert fingerprint("ece_high", "default", "global") == "8e0c00a47b2f89b4"
    fps = {fingerprint(k, m, s) for k in KINDS for m in ("a", "b") for s in ("global", "user:1")}
    assert len(fps) == len(KINDS) * 4
    lc = AlertLifecycle()
    [a] = lc.observe("score_shift", "m", "global", True, 1.0, 0.5, 5, T0)
    lc2 = AlertLifecycle(for_events=1)
    [b] = lc2.observe("score_shift", "m", "global", True, 99.0, 1.5, 5, T0, severity="critical")
    assert a["fingerprint"] == b["fingerprint"] and a["alert_id"] == b["alert_id"]


def test_alert_ids_unique_even_within_one_event_time() -> None:
    lc = AlertLifecycle(for_events=1, resolve_events=1)
    ids = []
    for _ in range(3):
        [f] = lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 7, T0)
        [r] = lc.observe("ece_high", "m", "global", False, 0.1, 0.5, 7, T0)
        assert r["alert_id"] == f["alert_id"]
        ids.append(f["alert_id"])
    assert len(set(ids)) == 3
    [f] = lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 8, T0)
    assert f["alert_id"].endswith("-8")


def test_time_never_runs_backwards_per_series() -> None:
    lc = AlertLifecycle(for_events=2, resolve_events=1)
    lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 100, T0)
    [f] = lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 50, T0)
    assert f["event_ts"] == 100
    [r] = lc.observe("ece_high", "m", "global", False, 1.0, 0.5, 10, T0)
    assert r["ends_at"] == iso_utc_ms(100)


def test_state_holds_only_live_series() -> None:
    lc = AlertLifecycle(for_events=2, resolve_events=1)
    for u in range(500):
        scope = f"user:{u}"
        lc.observe("ece_high", "m", scope, True, 1.0, 0.5, 2 * u, T0)
        lc.observe("ece_high", "m", scope, True, 1.0, 0.5, 2 * u + 1, T0)
        lc.observe("ece_high", "m", scope, False, 1.0, 0.5, 2 * u + 2, T0)
        lc.observe("ece_high", "m", f"user:x{u}", True, 1.0, 0.5, 2 * u, T0)
        lc.observe("ece_high", "m", f"user:x{u}", False, 1.0, 0.5, 2 * u, T0)
        lc.observe("ece_high", "m", f"user:never{u}", False, 1.0, 0.5, 2 * u, T0)
    assert lc.n_series == 0 and lc.firing() == []


def test_firing_lists_every_live_alert_in_order() -> None:
    lc = AlertLifecycle()
    lc.observe("ece_high", "m", "segment:b", True, 1.0, 0.5, 20, T0)
    lc.observe("ece_high", "m", "segment:a", True, 1.0, 0.5, 10, T0)
    lc.observe("late_clicks_high", "m", "global", True, 0.2, 0.1, 20, T0)
    assert [(a["scope"], a["kind"]) for a in lc.firing()] == sorted(
        [("segment:a", "ece_high"), ("segment:b", "ece_high"), ("global", "late_clicks_high")],
        key=lambda sk: (10 if sk[0] == "segment:a" else 20, fingerprint(sk[1], "m", sk[0])),
    )


def test_per_kind_overrides() -> None:
    lc = AlertLifecycle(for_events=1, per_kind={"feedback_stall": {"for_events": 3}})
    assert lc.params("feedback_stall")["for_events"] == 3
    assert lc.params("ece_high")["for_events"] == 1
    assert lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 1, T0)
    assert not lc.observe("feedback_stall", "m", "global", True, 1.0, 0.5, 1, T0)
    back = AlertLifecycle.from_dict(json.loads(json.dumps(lc.to_dict())))
    assert back.config == lc.config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"for_events": 0},
        {"for_ms": -1},
        {"resolve_events": 1.5},
        {"resolve_ms": True},
        {"per_kind": {"bogus": {}}},
        {"per_kind": {"ece_high": {"for_minutes": 3}}},
        {"per_kind": {"ece_high": {"for_events": 0}}},
    ],
)
def test_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        AlertLifecycle(**kwargs)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"kind": "bogus"}, "kind"),
        ({"model_id": ""}, "model_id"),
        ({"scope": "everything"}, "scope"),
        ({"active": 1}, "active"),
        ({"value": float("nan")}, "value"),
        ({"threshold": "x"}, "threshold"),
        ({"event_ts": -1}, "event_ts"),
        ({"created_at": "2024-05-01 12:00"}, "created_at"),
        ({"created_at": "2024-05-01T12:00:00+02:00"}, "created_at"),
        ({"severity": "page"}, "severity"),
        ({"details": {"lifecycle": 1}}, "reserved"),
        ({"details": [1]}, "details"),
    ],
)
def test_input_errors(override, match) -> None:
    args = {
        "kind": "ece_high", "model_id": "m", "scope": "global", "active": True,
        "value": 1.0, "threshold": 0.5, "event_ts": 1, "created_at": T0,
    }
    lc = AlertLifecycle()
    with pytest.raises(InvalidInputError, match=match):
        lc.observe(**{**args, **override})
    assert lc.n_series == 0


def test_from_dict_rejects_malformed() -> None:
    lc = AlertLifecycle()
    lc.observe("ece_high", "m", "global", True, 1.0, 0.5, 1, T0)
    data = lc.to_dict()
    with pytest.raises(StateError):
        AlertLifecycle.from_dict({**data, "v": 2})
    bad = json.loads(json.dumps(data))
    bad["series"][0][0] = "0" * 16
    with pytest.raises(StateError, match="fingerprint"):
        AlertLifecycle.from_dict(bad)
