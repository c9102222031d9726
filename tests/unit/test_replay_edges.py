"""`run_replay` on the inputs that used to crash it or lose lines (issue 8, items 6 and 7)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from worker.core.pipeline import PipelineConfig
from worker.core.policy import PolicyConfig
from worker.replay import run_replay

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CONFIG = PipelineConfig(
    window_ms=60_000, allowed_lateness_ms=1_000, policy=PolicyConfig(recalibrate_every=100_000)
)


def imp(iid: str, ts: int, user: str = "u1") -> bytes:
    return orjson.dumps(
        {"type": "impression", "impression_id": iid, "user_id": user, "item_id": "x",
         "ts": ts, "score": 0.25}
    )


def click(iid: str, ts: int, user: str = "u1") -> bytes:
    return orjson.dumps({"type": "click", "impression_id": iid, "user_id": user, "ts": ts})


def _run(tmp_path: Path, body: bytes) -> tuple[dict, list[dict], list[dict]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    events = tmp_path / "events.jsonl"
    events.write_bytes(body)
    out = tmp_path / "out"
    run_replay(events, out, CONFIG)
    summary = orjson.loads((out / "summary.json").read_bytes())
    feedback = [orjson.loads(x) for x in (out / "feedback.jsonl").read_bytes().splitlines()]
    dlq = [orjson.loads(x) for x in (out / "dlq.jsonl").read_bytes().splitlines()]
    return summary, feedback, dlq


def test_reserved_population_user_id_is_a_dead_letter_not_a_crash(tmp_path: Path) -> None:
    line = imp("i1", T0, user="*")
    summary, feedback, dlq = _run(tmp_path, imp("i0", T0) + b"\n" + line + b"\n")
    assert [d["reason"] for d in dlq] == ["schema"]
    assert base64.b64decode(dlq[0]["payload_b64"]) == line
    assert len(feedback) == 1 and summary["lines"] == 2


def test_ts_whose_window_ends_after_year_9999_does_not_crash(tmp_path: Path) -> None:
    far = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the largest ts accepted
    body = imp("i1", far) + b"\n" + imp("i2", far + 1) + b"\n"
    summary, feedback, dlq = _run(tmp_path, body)
    assert summary["lines"] == 2 and summary["impressions"] == 1
    assert [fb["label"] for fb in feedback] == [0]
    assert [d["reason"] for d in dlq] == ["schema"]


def test_a_bom_at_the_start_of_the_file_is_stripped(tmp_path: Path) -> None:
    summary, feedback, dlq = _run(tmp_path, b"\xef\xbb\xbf" + imp("i1", T0) + b"\n")
    assert dlq == [] and summary["impressions"] == 1 and len(feedback) == 1


def test_whitespace_only_lines_are_counted_dead_letters(tmp_path: Path) -> None:
    body = imp("i1", T0) + b"\n \t\n\n" + imp("i2", T0 + 1) + b"\r\n"
    summary, feedback, dlq = _run(tmp_path, body)
    assert summary["lines"] == 4 and summary["dead_letters"] == {"empty": 2}
    assert [base64.b64decode(d["payload_b64"]) for d in dlq] == [b" \t", b""]
    assert [d["offset"] for d in dlq] == [1, 2]
    assert len(feedback) == 2


def test_orphan_click_letters_carry_the_original_bytes(tmp_path: Path) -> None:
    # Unusual but valid spelling (spaces, a float ts, an unknown field): a rebuilt click
    # would differ from these bytes.
    raw = (
        b'{ "type": "click", "user_id": "u1", "impression_id": "nope", "ts": '
        + str(T0).encode() + b'.0, "extra": [1] }'
    )
    _, _, dlq = _run(tmp_path, imp("i1", T0) + b"\n" + raw + b"\n")
    assert [d["reason"] for d in dlq] == ["orphan_click"]
    assert base64.b64decode(dlq[0]["payload_b64"]) == raw
    assert dlq[0]["offset"] == 1 and dlq[0]["key"] == "u1"


def test_one_line_a_day_ahead_changes_no_other_label(tmp_path: Path) -> None:
    lines = []
    for k in range(1_000):
        ts = T0 + k * 1_000
        lines.append(imp(f"i{k}", ts, user=f"u{k % 17}"))
        if k % 3 == 0:
            lines.append(click(f"i{k}", ts + 5_000, user=f"u{k % 17}"))
    clean = b"\n".join(lines) + b"\n"
    _, fb_clean, dlq_clean = _run(tmp_path / "clean", clean)
    ahead = imp("future", T0 + 86_400_000, user="u3")
    dirty = b"\n".join([*lines[:700], ahead, *lines[700:]]) + b"\n"
    summary, fb_dirty, dlq_dirty = _run(tmp_path / "dirty", dirty)
    assert dlq_clean == []
    assert fb_dirty == fb_clean
    assert [d["reason"] for d in dlq_dirty] == ["future_ts"]
    assert base64.b64decode(dlq_dirty[0]["payload_b64"]) == ahead
    assert summary["lines"] == len(lines) + 1
