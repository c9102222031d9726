"""Fuzz `recal replay` (issue 8 item 6): valid, near-valid and garbage lines, mixed.

Hypothesis draws the shape of each file (seed, share of bad lines, how many far-future
events); a seeded generator writes the lines, because one example holds ~26,000 lines,
far more than hypothesis' own draws can carry. Four examples: ~10^5 lines in all.

Accounting (how whitespace-only lines count): every line of the file is one of
- decoded: an impression or a click (``summary.impressions + summary.clicks``), whatever
  the join then does with it (a label, an orphan, a late impression, a ``future_ts``);
- rejected by the decoder: a dead letter whose reason is a decoder reason, with the
  original bytes and the line number as offset. Whitespace-only lines are in this group,
  with reason ``empty``.
So ``lines == impressions + clicks + decoder dead letters``.

Soundness of the comparison with the valid lines alone: every bad line is one the decoder
certainly rejects (checked here, line by line), so it never reaches the join or the monitor;
the far-future lines are valid, but spaced so that normal traffic refutes each before the next
(the clock guard): they must change nothing either.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError
from worker.core.pipeline import PipelineConfig
from worker.core.policy import PolicyConfig
from worker.replay import OUTPUT_FILES, run_replay

T0 = 1_767_225_600_000
CONFIG = PipelineConfig(
    window_ms=600_000, allowed_lateness_ms=30_000, policy=PolicyConfig(recalibrate_every=2_000)
)
JOIN_REASONS = {"orphan_click", "late_impression", "future_ts"}
LINES_PER_EXAMPLE = 26_000  # a margin over 10^5 / EXAMPLES: the bad lines are random
EXAMPLES = 4
_DECODER = InputDecoder(max_message_bytes=65_536)


def _valid_stream(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Impressions every ~0.5 s of event time and their clicks (some late, some orphans,
    some duplicates), in arrival order with jitter well inside the lateness."""
    timed: list[tuple[int, int, dict[str, Any]]] = []
    t = T0
    k = 0
    while len(timed) < n:
        t += rng.randint(0, 1_000)
        user = f"u{rng.randrange(200)}"
        iid = f"i{k}"
        k += 1
        obj: dict[str, Any] = {
            "type": "impression", "impression_id": iid, "user_id": user, "item_id": f"it{k % 97}",
            "ts": t, "segment": rng.choice(["a", "b"]), "arm": rng.choice(["x", "y", "z"]),
        }
        if rng.random() < 0.5:
            obj["score"] = rng.random()
        else:
            obj["logit"] = rng.uniform(-6, 6)
        timed.append((t + rng.randint(0, 10_000), len(timed), obj))
        if rng.random() < 0.02:
            timed.append((t + rng.randint(0, 10_000), len(timed), dict(obj)))  # duplicate
        if rng.random() < 0.15:
            ct = t + int(rng.expovariate(1 / 120_000))
            target = iid if rng.random() < 0.97 else f"ghost{k}"
            click = {"type": "click", "impression_id": target, "user_id": user, "ts": ct}
            timed.append((ct + rng.randint(0, 10_000), len(timed), click))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [obj for _, _, obj in timed]


# -- lines the decoder certainly rejects -------------------------------------------------


def _without(field: str) -> Callable[[dict[str, Any], random.Random], Any]:
    def mutate(obj: dict[str, Any], _rng: random.Random) -> Any:
        out = dict(obj)
        out.pop(field, None)
        if field in ("score", "logit"):
            out.pop("score", None)
            out.pop("logit", None)
        return out
    return mutate


def _set(field: str, values: list[Any]) -> Callable[[dict[str, Any], random.Random], Any]:
    def mutate(obj: dict[str, Any], rng: random.Random) -> Any:
        return {**obj, field: rng.choice(values)}
    return mutate


_MUTATIONS: list[Callable[[dict[str, Any], random.Random], Any]] = [
    _without("impression_id"), _without("user_id"), _without("ts"), _without("type"),
    _set("ts", ["1", True, 1.5, -1, 253_402_300_800_000, 2**64 - 1, None, [1]]),
    _set("user_id", ["*", "", "x" * 129, 7, None, {"a": 1}]),
    _set("impression_id", ["", "é" * 129, 0.5, False]),
    _set("type", ["Impression", "clicks", 1, None]),
]
_IMPRESSION_MUTATIONS = [
    _without("item_id"), _without("score"),
    _set("score", [1.5, -0.1, 1e308, "0.5", True]),
    _set("logit", ["x", None, [0.0]]),
    _set("position", [-1, 2.5, "3"]),
    _set("segment", ["", 3, None]),
    _set("context", [[], "ctx", 1]),
]


def _bad_line(rng: random.Random, base: dict[str, Any]) -> bytes:
    kind = rng.random()
    if kind < 0.45:
        pool = _MUTATIONS + (_IMPRESSION_MUTATIONS if base["type"] == "impression" else [])
        raw = orjson.dumps(rng.choice(pool)(base, rng))
    elif kind < 0.55:
        raw = rng.choice([b"", b" ", b"\t", b"  \t  "])
    elif kind < 0.62:
        # Invalid UTF-8 inside an otherwise valid line.
        good = orjson.dumps(base)
        cut = good.index(b'"', 2) + 1
        raw = good[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + good[cut:]
    elif kind < 0.67:
        raw = b"\xef\xbb\xbf" + orjson.dumps(base)  # a BOM not at the start of the file
    elif kind < 0.72:
        depth = rng.randint(1_100, 3_000)
        nest = b"[" * depth + b"]" * depth
        raw = orjson.dumps({**base, "context": None}).replace(b"null", nest, 1)
    elif kind < 0.80:
        raw = rng.choice([b"[]", b"1", b'"x"', b"null", b"true", b"[{}]", b"1e400"])
    elif kind < 0.85:
        raw = orjson.dumps(base)[: rng.randint(1, 40)]  # truncated
    elif kind < 0.87:
        raw = orjson.dumps({**base, "pad": "x" * 70_000})  # too_large
    elif kind < 0.90:
        raw = orjson.dumps(base).replace(b":", b":1e400,", 1).replace(b",,", b",")
    else:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))
    raw = raw.replace(b"\n", b" ").replace(b"\r", b" ")
    try:
        _DECODER.decode_replay_line(raw)
    except InvalidInputError:
        return raw
    raise AssertionError(f"the generator meant this line to be rejected: {raw[:200]!r}")


def make_file(seed: int, bad_share: float, n_future: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """(the fuzzed file, the valid lines alone, what is expected of the fuzzed one)."""
    rng = random.Random(seed)
    n_valid = int(LINES_PER_EXAMPLE * (1 - bad_share))
    valid = _valid_stream(rng, n_valid)
    valid_lines = [orjson.dumps(obj) for obj in valid]
    # Far-future valid lines, spaced so at least 10 normal lines follow each one: three
    # refute it before the next far one can vote for it.
    future_at = set(rng.sample(range(10, n_valid // 10), n_future))
    lines: list[bytes] = []
    bad_lines: dict[int, bytes] = {}
    future_lines: list[int] = []
    for i, line in enumerate(valid_lines):
        while rng.random() < bad_share:
            bad_lines[len(lines)] = _bad_line(rng, valid[i])
            lines.append(bad_lines[len(lines)])
        if i // 10 in future_at and i % 10 == 0:
            far = {**valid[i], "impression_id": f"far{i}", "ts": valid[i]["ts"] + 86_400_000}
            future_lines.append(len(lines))
            lines.append(orjson.dumps(far))
        lines.append(line)
    body = b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n"
    expect = {"bad": bad_lines, "future": future_lines, "lines": len(lines)}
    return body, b"\n".join(valid_lines) + b"\n", expect


def _replay(tmp: Path, name: str, body: bytes) -> tuple[dict[str, Any], Path]:
    events = tmp / f"{name}.jsonl"
    events.write_bytes(body)
    out = tmp / name
    summary = run_replay(events, out, CONFIG).to_dict()
    return summary, out


_seen_lines: list[int] = []


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    bad_share=st.floats(0.05, 0.6),
    n_future=st.integers(0, 5),
)
# Found by CI: the valid stream's last line is a click 633 s after every other event, more
# than the clock guard's bound, with nothing after it to vote (it was dead-lettered).
@example(seed=12707, bad_share=0.05, n_future=1)
def _check_one_file(tmp_path: Path, seed: int, bad_share: float, n_future: int) -> None:
    # Its own directory per example: hypothesis may draw the same seed twice.
    tmp = Path(tempfile.mkdtemp(prefix=f"s{seed}-", dir=tmp_path))
    body, clean, expect = make_file(seed, bad_share, n_future)
    summary, out = _replay(tmp, "fuzzed", body)
    clean_summary, clean_out = _replay(tmp, "clean", clean)
    _seen_lines.append(summary["lines"])

    bad: dict[int, bytes] = expect["bad"]
    assert summary["lines"] == expect["lines"]
    letters = [orjson.loads(x) for x in (out / "dlq.jsonl").read_bytes().splitlines()]
    decoder_letters = {d["offset"]: d for d in letters if d["reason"] not in JOIN_REASONS}
    assert sorted(decoder_letters) == sorted(bad), "every bad line, and only those, rejected"
    for offset, letter in decoder_letters.items():
        assert base64.b64decode(letter["payload_b64"]) == bad[offset]
        assert letter["reason"] and letter["error"]
    decoded = summary["impressions"] + summary["clicks"]
    assert summary["lines"] == decoded + len(decoder_letters)
    assert decoded == clean_summary["lines"] + len(expect["future"])

    future = [d for d in letters if d["reason"] == "future_ts"]
    assert sorted(d["offset"] for d in future) == expect["future"]
    # The valid lines' outputs are those of the valid lines alone, byte for byte.
    for name in OUTPUT_FILES:
        if name != "dlq.jsonl":
            assert (out / name).read_bytes() == (clean_out / name).read_bytes(), name
    # So are the join's own dead letters (orphans, late impressions), payloads included.
    clean_letters = [orjson.loads(x) for x in (clean_out / "dlq.jsonl").read_bytes().splitlines()]
    joined = [(d["reason"], d["payload_b64"]) for d in letters if d["reason"] in JOIN_REASONS]
    assert [x for x in joined if x[0] != "future_ts"] == [
        (d["reason"], d["payload_b64"]) for d in clean_letters
    ]
    assert clean_summary["join"] == {
        **summary["join"], "future_events": 0
    }, "the join saw the same events"


def test_replay_fuzz(tmp_path: Path) -> None:
    _seen_lines.clear()
    _check_one_file(tmp_path)
    assert sum(_seen_lines) >= 100_000


def test_replay_cli_on_a_fuzzed_file_exits_0(tmp_path: Path) -> None:
    body, _, expect = make_file(seed=12345, bad_share=0.3, n_future=3)
    events = tmp_path / "events.jsonl"
    events.write_bytes(body)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "replay", str(events), "--out", str(tmp_path / "out"),
         "--attribution-window", "600"],
        capture_output=True, timeout=300, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr.decode()[-2_000:]
    summary = orjson.loads(done.stdout)
    assert summary["lines"] == expect["lines"]
    assert summary["dead_letters"]["future_ts"] == 3
