"""The serving client (worker/client.py): replay's final versions served along the fallback
chain, stale versions, tombstones, malformed records, snapshots, threads, import weight."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.client_support import expected, final_versions, replay_stream, rows_per_scope
from tests.unit.core.codec.schema_support import examples, validator
from worker.client import CalibratorClient, scope_file_name
from worker.core.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    return replay_stream(tmp_path_factory.mktemp("client"))


def _version(scope: str, version: int, method: str = "temperature", **params: Any) -> dict:
    return {
        "model_id": "m", "scope": scope, "version": version, "method": method,
        "params": params or ({"temperature": 2.0} if method == "temperature" else {}),
        "event_ts": 1_767_225_600_000 + version, "created_at": "2026-01-01T00:00:00.000Z",
        "training": {"n": 10, "positives": 2, "from_ts": 0, "to_ts": 1},
        "metrics": {"ece_before": None, "ece_after": None, "nll_before": None,
                    "nll_after": None, "n_eval": 0, "ece_floor": None},
        "reason": "scheduled",
    }


def test_replayed_stream_has_every_scope_kind(replayed: tuple[Path, list]) -> None:
    kinds = {key.split("|", 1)[1].split(":")[0] for key in final_versions(replayed[0])}
    assert kinds == {"global", "segment", "user"}
    for line in replayed[0].read_text().splitlines():
        # The schema is a test-time check only: the client validates by hand at runtime.
        validator("calibrator_version").validate(json.loads(line))


def test_serves_replay_final_versions_along_the_fallback_chain(
    replayed: tuple[Path, list],
) -> None:
    path, last = replayed
    versions = final_versions(path)
    rows = rows_per_scope(versions, last)
    client = CalibratorClient.from_jsonl(path)
    assert client.versions() == versions
    served = {client.resolve(m, u, s).scope.split(":")[0] for m, u, s, _ in rows}
    assert served == {"global", "segment", "user"}
    for row in rows:
        model, user, segment, score = row
        assert client.calibrate(score, model, user, segment) == expected(versions, row)
    got = client.calibrate_many(
        [r[3] for r in rows], "default", [r[1] for r in rows], [r[2] for r in rows]
    )
    np.testing.assert_allclose(got, [expected(versions, r) for r in rows], rtol=1e-12)


def test_identity_when_nothing_is_held() -> None:
    client = CalibratorClient()
    assert client.calibrate(0.37, "m", "u", "s") == 0.37
    res = client.resolve("m")
    assert (res.scope, res.version, res.method) == ("identity", None, "identity")


def test_stale_versions_are_ignored() -> None:
    client = CalibratorClient()
    assert client.apply("m|global", _version("global", 5)) == "applied"
    before = client.calibrate(0.9, "m")
    assert client.apply("m|global", _version("global", 4, "identity")) == "stale"
    assert client.apply(b"m|global", json.dumps(_version("global", 5, "identity"))) == "stale"
    assert client.calibrate(0.9, "m") == before and client.resolve("m").version == 5
    assert client.apply(None, _version("global", 6, "identity")) == "applied"
    assert client.calibrate(0.9, "m") == 0.9
    assert client.stats()["stale"] == 2


def test_tombstone_withdraws_and_older_versions_stay_withdrawn() -> None:
    client = CalibratorClient()
    client.apply_all([_version("global", 1, "identity"),
                      _version("segment:new", 1, "platt", a=1.0, b=0.5),
                      _version("user:u|x", 7, "platt", a=2.0, b=0.0)])
    assert client.resolve("m", "u|x", "new").scope == "user:u|x"
    assert client.apply(b"m|user:u|x", None) == "withdrawn"
    assert client.resolve("m", "u|x", "new").scope == "segment:new"
    # A re-delivered older version (a compacted topic read again) must not resurrect it.
    assert client.apply("m|user:u|x", _version("user:u|x", 7, "platt", a=2.0, b=0.0)) == "stale"
    assert client.apply("m|user:nobody", None) == "ignored"
    assert client.apply("m|user:u|x", _version("user:u|x", 8, "platt", a=2.0, b=0.0)) == "applied"
    assert client.resolve("m", "u|x").version == 8
    with pytest.raises(InvalidInputError, match="tombstone"):
        client.apply(None, None)


# Invalid schema examples the client accepts on purpose: unknown fields (forward compatible).
TOLERATED = {"unknown_field.json"}


@pytest.mark.parametrize(
    "path", examples("calibrator_version", "invalid"), ids=lambda p: p.name
)
def test_malformed_records_are_rejected_and_the_served_version_kept(path: Path) -> None:
    value = json.loads(path.read_text())
    assert not validator("calibrator_version").is_valid(value)
    client = CalibratorClient()
    held = {**_version("global", 1), "model_id": value.get("model_id", "m")}
    key = f"{held['model_id']}|global"
    client.apply(key, held)
    # Newer than the held version, so only validation can stop it (not the stale check).
    if type(value.get("version")) is int and value["version"] >= 1:
        value = {**value, "version": 10}
    if path.name in TOLERATED:
        client.apply(None, value)
        return
    with pytest.raises(InvalidInputError):
        client.apply(None, value)
    assert client.resolve(held["model_id"]).version == 1
    assert client.stats()["rejected"] == 1 and client.stats()["last_error"]


@pytest.mark.parametrize(
    "path", examples("calibrator_version", "valid"), ids=lambda p: p.name
)
def test_valid_schema_examples_are_applied(path: Path) -> None:
    value = json.loads(path.read_text())
    client = CalibratorClient()
    assert client.apply(f"{value['model_id']}|{value['scope']}", value) == "applied"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("m|global", b"{not json", "not valid JSON"),
        ("m|segment:a", _version("global", 2), "key must be model_id|scope"),
        (b"m|\xff", _version("global", 2), "UTF-8"),
        ("m|global", [1, 2], "must be an object"),
        ("m|global", {**_version("global", 2), "version": True}, "version must be"),
        ("m|global", {**_version("global", 2), "params": {"temperature": -1}}, "temperature"),
        ("m|global", {**_version("global", 2), "event_ts": 1.5}, "event_ts"),
        ("m|global", {**_version("global", 2), "created_at": "2026-01-01T01:00:00+01:00"},
         "created_at"),
    ],
)
def test_bad_records_raise_clear_errors(key: Any, value: Any, match: str) -> None:
    client = CalibratorClient()
    client.apply("m|global", _version("global", 1))
    with pytest.raises(InvalidInputError, match=match):
        client.apply(key, value)
    assert client.resolve("m").version == 1


def test_staleness_and_age_with_an_injected_clock() -> None:
    now = [1_767_225_700_000.0]
    client = CalibratorClient(clock=lambda: now[0])
    assert client.staleness().versions == 0 and client.staleness().since_message_ms is None
    client.apply("m|global", _version("global", 1))  # created_at 2026-01-01T00:00:00Z
    now[0] += 5_000
    client.apply("m|user:nobody", None)
    st = client.staleness(now_ms=now[0] + 1_000)
    assert st.versions == 1
    assert st.since_created_ms == pytest.approx(106_000)
    assert st.since_event_ms == pytest.approx(105_999)
    assert st.since_message_ms == pytest.approx(1_000)
    age = client.age("m", "global", now_ms=now[0])
    assert age is not None and age.since_message_ms == pytest.approx(5_000)
    assert client.age("m", "user:nobody") is None


def test_save_load_round_trip(replayed: tuple[Path, list], tmp_path: Path) -> None:
    client = CalibratorClient.from_jsonl(replayed[0])
    odd = ["user:a/b", "user:..", "segment:é ü", "user:" + "x" * 128, "user:%2F"]
    for i, scope in enumerate(odd, 1):
        client.apply(None, {**_version(scope, i), "model_id": "m|2"})
    snap = tmp_path / "snap"
    client.save(snap)
    store = json.loads((snap / "store.json").read_text())
    assert store["model_ids"] == ["default", "m|2"] and store["created_at"].endswith("Z")
    assert {s["key"] for s in store["scopes"]} == set(client.versions())
    names = [p.name for p in (snap / "scopes").iterdir()]
    assert len(names) == len(client.versions()) and all(len(n) < 255 for n in names)
    assert all("/" not in n and not n.startswith(".") for n in names)
    loaded = CalibratorClient.load(snap)
    assert loaded.versions() == client.versions()
    for m, u, s, score in replayed[1][:500]:
        assert loaded.calibrate(score, m, u, s) == client.calibrate(score, m, u, s)
    # Saving a smaller set over it leaves exactly that set (no temp or orphaned files).
    small = CalibratorClient()
    small.apply(None, _version("global", 1))
    small.save(snap)
    assert sorted(p.name for p in (snap / "scopes").iterdir()) == [scope_file_name("m|global")]
    assert CalibratorClient.load(snap).versions() == small.versions()


def test_load_rejects_a_broken_snapshot(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unreadable calibrator snapshot"):
        CalibratorClient.load(tmp_path)
    client = CalibratorClient()
    client.apply(None, _version("global", 1))
    client.save(tmp_path)
    (tmp_path / "scopes" / scope_file_name("m|global")).write_text('{"model_id": "m"}')
    with pytest.raises(InvalidInputError, match="misses"):
        CalibratorClient.load(tmp_path)


def test_threads_applying_while_others_calibrate() -> None:
    # Version v of every key is a temperature of 1 + v / 100: a reader must always get the
    # output of some complete version, and the end state holds the newest of each key.
    client = CalibratorClient()
    scopes = ["global", "segment:s", "user:u"]
    n_versions = 300
    allowed = {0.8} | {
        round(float(1 / (1 + np.exp(-np.log(4) / (1 + v / 100)))), 12)
        for v in range(1, n_versions + 1)
    }
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(scope: str) -> None:
        for v in range(1, n_versions + 1):
            client.apply(None, _version(scope, v, temperature=1 + v / 100))

    def read() -> None:
        try:
            while not stop.is_set():
                for user, seg in (("u", "s"), (None, "s"), (None, None)):
                    p = round(client.calibrate(0.8, "m", user, seg), 12)
                    assert p in allowed, p
        except BaseException as exc:  # reported below, a thread cannot fail the test
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    writers = [threading.Thread(target=write, args=(s,)) for s in scopes]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert {k: v["version"] for k, v in client.versions().items()} == {
        f"m|{s}": n_versions for s in scopes
    }
    assert client.stats()["applied"] == 3 * n_versions


def test_importing_the_client_does_not_load_the_runtime() -> None:
    code = (
        "import sys, worker.client;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka')"
        " or m.startswith(('worker.runtime', 'worker.core.pipeline', 'worker.core.policy',"
        " 'worker.client_kafka', 'worker.replay'))];"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


def test_subscription_without_a_broker_retries_and_closes() -> None:
    client = CalibratorClient()
    client.apply(None, _version("global", 1))
    sub = client.subscribe("127.0.0.1:1", "recal.calibrators")
    with pytest.raises(RuntimeError, match="already has a subscription"):
        client.subscribe("127.0.0.1:1")
    assert not sub.wait_caught_up(1.5)
    assert sub.error is not None and sub.running
    assert client.resolve("m").version == 1  # still serving
    started = time.monotonic()
    client.close()
    assert not sub.running and time.monotonic() - started < 5


def test_subscription_with_a_bad_option_stops_loudly() -> None:
    client = CalibratorClient()
    sub = client.subscribe("127.0.0.1:1", no_such_option=1)
    with pytest.raises(RuntimeError, match="stopped"):
        sub.wait_caught_up(10)
    client.close()


def test_a_contextual_version_is_served_in_the_given_context() -> None:
    client = CalibratorClient()
    features = [
        {"kind": "hour", "harmonics": 1, "w_a": [0.0, -0.5], "w_b": [0.0, 0.0]},
        {"kind": "category", "field": "segment", "values": ["new"], "w_a": [0.0, 0.0],
         "w_b": [0.7, 0.0]},
        {"kind": "category", "field": "device", "values": ["tv"], "w_a": [0.0, 0.0],
         "w_b": [-0.4, 0.0]},
    ]
    assert client.apply(None, _version("global", 1, "contextual", a=0.9, b=-0.1,
                                       features=features)) == "applied"
    cal = client.resolve("m").calibrator
    ctx = {"ts": 1_767_225_600_000 + 6 * 3_600_000, "device": "tv"}
    # The segment argument joins the context; the given context reaches the map.
    got = client.calibrate(0.2, "m", segment="new", context=ctx)
    assert got == cal.apply(0.2, {**ctx, "segment": "new"})
    assert got != client.calibrate(0.2, "m")
    # A segment inside the context wins over the argument.
    assert client.calibrate(0.2, "m", segment="new", context={**ctx, "segment": "web"}) == (
        cal.apply(0.2, {**ctx, "segment": "web"}))
    # No context: the context-free map, sigmoid(a z + b).
    assert client.calibrate(0.2, "m") == pytest.approx(
        1 / (1 + np.exp(-(0.9 * np.log(0.25) - 0.1))), rel=1e-12)


def test_other_methods_ignore_the_context() -> None:
    client = CalibratorClient()
    client.apply(None, _version("global", 1, "platt", a=0.8, b=-0.2))
    plain = client.calibrate(0.3, "m")
    assert client.calibrate(0.3, "m", context={"hour": 5, "device": "tv"}) == plain
