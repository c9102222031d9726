"""`recal report` from a replay directory: sections, the prequential numbers recomputed
independently, a self-contained page, missing and bad inputs, the command line."""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from worker.cli import main
from worker.client import CalibratorClient
from worker.core.errors import ConfigError
from worker.core.records.impression import serving_context
from worker.report import build_report
from worker.report.build import SECTIONS
from worker.report.load import feedback_columns, load_directory
from worker.report.prequential import daily_table, prequential_scores

DAY_MS = 86_400_000


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class _Outline(HTMLParser):
    """Section ids, h2 headings, and every src/href/url the page would load."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.links: list[str] = []
        self.tags: Counter[str] = Counter()
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        values = dict(attrs)
        if tag == "section" and values.get("id"):
            self.sections.append(str(values["id"]))
        self._in_h2 = tag == "h2"
        for name in ("src", "href", "srcset", "action", "data"):
            if values.get(name):
                self.links.append(str(values[name]))

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


def _outline(path: Path) -> _Outline:
    parser = _Outline()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_every_section_is_there_in_order(report_path: Path) -> None:
    outline = _outline(report_path)
    assert outline.sections == [sid for sid, _ in SECTIONS]
    assert outline.headings == [title for _, title in SECTIONS]
    assert outline.tags["img"] >= 6  # reliability x2, timelines, tiers, posteriors x2


def test_the_page_loads_nothing_from_elsewhere(report_path: Path) -> None:
    text = report_path.read_text(encoding="utf-8")
    outline = _outline(report_path)
    assert outline.links, "no image or anchor at all"
    for link in outline.links:
        assert link.startswith(("data:image/png;base64,", "#")), link[:80]
    assert not outline.tags["script"] and not outline.tags["link"] and not outline.tags["iframe"]
    # Outside the base64 images, no address of any kind.
    visible = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", visible, re.IGNORECASE)
    assert "@import" not in visible and "url(" not in visible


def _published(version: dict[str, Any]) -> int:
    """When a version takes effect for the prequential score: its ``event_ts``."""
    return int(version["event_ts"])


def _naive_scores(
    feedback: list[dict[str, Any]], versions: list[dict[str, Any]]
) -> tuple[dict[str, float], Counter[str]]:
    """Per feedback, in impression order: apply every version created strictly before it,
    then ask the serving client. One client, one row at a time: the obvious way."""
    order = sorted(feedback, key=lambda fb: fb["ts"])
    timed = sorted(versions, key=_published)
    client = CalibratorClient()
    k = 0
    out: dict[str, float] = {}
    scopes: Counter[str] = Counter()
    for fb in order:
        while k < len(timed) and _published(timed[k]) < fb["ts"]:
            client.apply(None, timed[k])
            k += 1
        segment = fb.get("segment", "default")
        res = client.resolve(fb["model_id"], fb["user_id"], segment)
        scopes[res.scope.split(":", 1)[0]] += 1
        context = serving_context(fb["ts"], segment, fb.get("position"), fb.get("context"))
        out[fb["impression_id"]] = client.calibrate(fb["score"], fb["model_id"], fb["user_id"],
                                                    segment, context)
    return out, scopes


def _ece15(p: np.ndarray, y: np.ndarray) -> float:
    edges = np.linspace(0.0, 1.0, 16)
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, 14)
    return float(sum(abs(y[idx == b].sum() - p[idx == b].sum()) for b in range(15)) / p.size)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.where(y == 1, p, 1 - p)
    return float(-np.log(np.maximum(q, 1e-15)).mean())


def test_prequential_table_recomputed_for_one_day(replay_dir: Path, report_path: Path) -> None:
    feedback = _lines(replay_dir / "feedback.jsonl")
    versions = _lines(replay_dir / "calibrators.jsonl")
    naive, scopes = _naive_scores(feedback, versions)
    assert scopes["segment"] and scopes["global"] and scopes["identity"], scopes

    # The busiest day, recomputed from the records by hand.
    day = Counter(fb["ts"] // DAY_MS for fb in feedback).most_common(1)[0][0]
    rows = [fb for fb in feedback if fb["ts"] // DAY_MS == day]
    y = np.array([fb["label"] for fb in rows], dtype=float)
    raw = np.array([fb["score"] for fb in rows])
    cal = np.array([naive[fb["impression_id"]] for fb in rows])
    assert not np.allclose(raw, cal), "no calibrator served on that day"
    want = {
        "n": len(rows), "ctr": y.mean(), "ece_identity": _ece15(raw, y),
        "ece_recal": _ece15(cal, y), "nll_identity": _log_loss(raw, y),
        "nll_recal": _log_loss(cal, y),
    }

    inp = load_directory(replay_dir)
    table = daily_table(inp.feedback, prequential_scores(inp.feedback,
                                                         inp.records("calibrators")).calibrated)
    got = next(r for r in table if r.day_ms == day * DAY_MS)
    assert got.n == want["n"]
    for name in ("ctr", "ece_identity", "ece_recal", "nll_identity", "nll_recal"):
        assert getattr(got, name) == pytest.approx(want[name], rel=1e-9, abs=1e-12), name

    # The page shows those numbers in that day's row.
    date = datetime.fromtimestamp(day * DAY_MS / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
    section = report_path.read_text(encoding="utf-8").split('id="prequential"', 1)[1]
    row = re.search(rf"<tr><td class=l>{date}</td>(.*?)</tr>", section)
    assert row, f"no row for {date}"
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    assert cells[0] == f"{want['n']:,}"
    assert cells[5:7] == [f"{want['ece_identity']:.4f}", f"{want['ece_recal']:.4f}"]
    assert cells[8:10] == [f"{want['nll_identity']:.4f}", f"{want['nll_recal']:.4f}"]


def test_epoch_scorer_equals_the_per_row_client_with_user_versions_and_a_tombstone(
    replay_dir: Path,
) -> None:
    feedback = _lines(replay_dir / "feedback.jsonl")
    versions = _lines(replay_dir / "calibrators.jsonl")
    users = [v for v in versions if v["scope"].startswith("user:")]
    assert users, "the scenario must publish user calibrators"
    # Withdraw the first user version half a day after it was created.
    first = users[0]
    cut = _published(first) + DAY_MS // 2
    at = next((i for i, v in enumerate(versions) if _published(v) > cut),
              len(versions))
    key = f"{first['model_id']}|{first['scope']}"
    stream: list[dict[str, Any]] = [*versions[:at], {"key": key, "value": None}, *versions[at:]]

    cols = feedback_columns(feedback)
    scored = prequential_scores(cols, stream)
    assert scored.served_counts()["user"] > 0

    # Per row: the same stream applied in created order, the tombstone where it stands.
    client = CalibratorClient()
    timed: list[tuple[int, dict[str, Any]]] = []
    last = 0
    for obj in stream:
        if "value" in obj and obj.get("value") is None:
            timed.append((last, obj))
        else:
            last = _published(obj)
            timed.append((last, obj))
    timed.sort(key=lambda item: item[0])
    order = sorted(range(len(feedback)), key=lambda i: feedback[i]["ts"])
    expected = np.empty(len(feedback))
    k = 0
    for j, i in enumerate(order):
        fb = feedback[i]
        while k < len(timed) and timed[k][0] < fb["ts"]:
            obj = timed[k][1]
            if "key" in obj and "value" in obj and obj["value"] is None:
                client.apply(obj["key"], None)
            else:
                client.apply(None, obj)
            k += 1
        # As serving calls it: with the impression's serving context (a contextual
        # version reads it; the others ignore it).
        segment = fb.get("segment", "default")
        context = serving_context(fb["ts"], segment, fb.get("position"), fb.get("context"))
        expected[j] = client.calibrate(fb["score"], fb["model_id"], fb["user_id"], segment,
                                       context)
    np.testing.assert_allclose(scored.calibrated, expected, rtol=0, atol=1e-15)


def test_missing_optional_files_give_sections_that_say_so(
    replay_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(replay_dir / "feedback.jsonl", tmp_path / "feedback.jsonl")
    out = build_report(tmp_path, tmp_path / "sub" / "r.html", title="only feedback")
    text = out.read_text(encoding="utf-8")
    assert _outline(out).sections == [sid for sid, _ in SECTIONS]
    for name in ("alerts", "calibrators", "posteriors", "dlq"):
        assert f"No {name}.jsonl in the source directory." in text
    assert "<title>only feedback</title>" in text
    # Without calibrators every event is scored by identity: recal equals the raw score.
    assert "feedback served by identity</td><td>" in text


def test_empty_or_bad_directories_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no feedback\.jsonl.*found: nothing"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="is not a directory"):
        build_report(tmp_path / "absent")
    (tmp_path / "feedback.jsonl").write_text('{"ts": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"feedback.jsonl:2 is not JSON"):
        build_report(tmp_path)
    (tmp_path / "feedback.jsonl").write_text('{"ts": 1, "score": 0.5}\n')
    with pytest.raises(ConfigError, match="record 1 is not a feedback event"):
        build_report(tmp_path)


def test_empty_feedback_still_renders(tmp_path: Path) -> None:
    (tmp_path / "feedback.jsonl").write_text("")
    out = build_report(tmp_path)
    assert _outline(out).sections == [sid for sid, _ in SECTIONS]
    assert "No feedback: nothing to draw." in out.read_text(encoding="utf-8")


def test_cli_prints_the_path(
    replay_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(replay_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 50_000
    assert main(["report"]) == 2
    assert "give DIR" in capsys.readouterr().err
    assert main(["report", str(replay_dir), "--out-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_200k_feedback_render_in_well_under_30_s(replay_dir: Path, tmp_path: Path) -> None:
    """200,000 feedback events over the replay's two days, with its calibrators, alerts
    and posteriors: the whole build (read, score, charts, write) in under 30 s here."""
    rng = np.random.default_rng(0)
    n = 200_000
    fb = _lines(replay_dir / "feedback.jsonl")
    ts = np.sort(rng.integers(min(f["ts"] for f in fb), max(f["ts"] for f in fb), n))
    score = rng.beta(2, 40, n)
    label = rng.random(n) < score * 1.2
    users = [f["user_id"] for f in fb[:500]]
    with open(tmp_path / "feedback.jsonl", "wb") as handle:
        for i in range(n):
            handle.write(orjson.dumps({
                "impression_id": f"i{i}", "user_id": users[i % len(users)], "item_id": "x",
                "ts": int(ts[i]), "model_id": "default", "score": float(score[i]),
                "logit": 0.0, "segment": ("app", "web", "new")[i % 3], "label": int(label[i]),
                "label_ts": int(ts[i]), "click_ts": None, "delay_ms": None,
            }) + b"\n")
    for name in ("calibrators", "alerts", "posteriors", "dlq"):
        shutil.copy(replay_dir / f"{name}.jsonl", tmp_path / f"{name}.jsonl")
    started = time.perf_counter()
    out = build_report(tmp_path)
    seconds = time.perf_counter() - started
    assert _outline(out).sections == [sid for sid, _ in SECTIONS]
    assert seconds < 30, f"{seconds:.1f} s"
