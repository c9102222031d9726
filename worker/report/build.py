"""``build_report``: one self-contained HTML file from a replay-layout directory.

Sections (their HTML ids, which tests and links rely on): ``summary``, ``reliability``,
``timelines``, ``prequential``, ``tiers``, ``posteriors``, ``alerts``, ``calibrators``.
Every chart is an inline PNG and the page has no script, font or style sheet from elsewhere,
so it opens offline and can be mailed as one file.

"recal" everywhere means the prequential calibrated probability (``prequential``): each
feedback scored by the calibrator serving could have held when the impression was shown.
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.metrics import CalibrationReport, calibration_metrics
from worker.core.posteriors.beta_posterior import BetaPosterior
from worker.core.records.scope import USER_PREFIX
from worker.report import charts
from worker.report.charts import Buckets, Curve, Episode, Marker
from worker.report.load import FeedbackColumns, ReportInput, load_directory
from worker.report.prequential import (
    MS_PER_DAY,
    DayRow,
    Scored,
    daily_table,
    day_row,
    prequential_scores,
    runs,
)

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SECTIONS = (
    ("summary", "Summary"),
    ("reliability", "Reliability diagrams"),
    ("timelines", "ECE and CTR over time"),
    ("prequential", "Prequential table by day"),
    ("tiers", "Uncertainty tiers"),
    ("posteriors", "Example posteriors"),
    ("alerts", "Alerts"),
    ("calibrators", "Calibrator versions"),
)
#: Per-segment diagrams drawn (the largest segments); the table lists every segment.
MAX_SEGMENT_PANELS = 9
#: Reliability-diagram bins inside the plotted range (equal width, as the ECE's bins).
PLOT_BINS = 15
#: Timeline bucket widths tried, smallest first.
_BUCKET_WIDTHS_MS = tuple(
    m * 60_000 for m in (1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
)
_MAX_BUCKETS = 120
_MIN_BUCKET_EVENTS = 1000
CREDIBLE_LEVEL = 0.9
_MAX_ROWS_SHOWN = 200

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0 auto;max-width:1320px;padding:12px 24px 48px;color:#1d1d1f;background:#fff}
h1{font-size:24px;margin:12px 0 2px}h2{font-size:19px;margin:34px 0 8px;
border-bottom:2px solid #e3e3e3;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
p.meta{color:#666;margin:0 0 8px;font-size:13px}nav a{margin-right:14px;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f5f7}td.l,th.l{text-align:left}tr.total td{font-weight:600;background:#fafafa}
td.good{color:#1b6e2a}td.bad{color:#b3261e}img{max-width:100%;height:auto;display:block}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#555}
.note{color:#555;font-size:13px;max-width:1000px}.empty{color:#8a6d00;background:#fff8e1;
padding:8px 12px;border-radius:4px}details summary{cursor:pointer;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
"""


# --------------------------------------------------------------------------- HTML helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | int | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{100 * value:.2f}%"


def _table(
    header: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1,
    classes: Sequence[str] | None = None, text_columns: Sequence[int] = (),
) -> str:
    """An HTML table; the first ``left`` columns and ``text_columns`` are left-aligned text,
    cells are escaped unless they are already ``_Raw``."""
    text = set(range(left)) | set(text_columns)
    out = ["<table><thead><tr>"]
    out += [f'<th{" class=l" if i in text else ""}>{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        out.append(f"<tr{cls}>")
        for i, cell in enumerate(row):
            inner = cell.html if isinstance(cell, _Raw) else _e(cell)
            attr = " class=l" if i in text else (f" class={cell.cls}" if isinstance(cell, _Raw)
                                                 and cell.cls else "")
            out.append(f"<td{attr}>{inner}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


@dataclass(frozen=True)
class _Raw:
    html: str
    cls: str = ""


def _compare(before: float, after: float, digits: int = 4) -> _Raw:
    """``after`` coloured by whether it beats ``before`` (lower is better)."""
    cls = ""
    if math.isfinite(before) and math.isfinite(after):
        cls = "good" if after < before else "bad" if after > before else ""
    return _Raw(_e(_num(after, digits)), cls)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _section(sid: str, body: str) -> str:
    title = dict(SECTIONS)[sid]
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>\n'


# --------------------------------------------------------------------------- data helpers


def _scope_row(msg: dict[str, Any], models: int) -> str:
    scope = str(msg.get("scope", "?"))
    if scope.startswith(USER_PREFIX):
        scope = USER_PREFIX + "*"  # one lane for all users: there can be thousands
    return f"{msg.get('model_id')}|{scope}" if models > 1 else scope


def _versions(inp: ReportInput) -> list[dict[str, Any]]:
    """Calibrator version messages (tombstone lines left out)."""
    out = []
    for obj in inp.records("calibrators"):
        value = obj.get("value") if set(obj) == {"key", "value"} else obj
        if isinstance(value, dict):
            out.append(value)
    return out


def _episodes(alerts: list[dict[str, Any]], models: int) -> list[tuple[dict[str, Any], Episode]]:
    """Alert episodes (firing, then resolved by the same ``alert_id``), in firing order."""
    firing: dict[str, dict[str, Any]] = {}
    ends: dict[str, int] = {}
    for a in alerts:
        aid = str(a.get("alert_id", a.get("fingerprint")))
        if a.get("status") == "firing":
            firing.setdefault(aid, a)
        elif a.get("status") == "resolved":
            ends[aid] = int(a.get("event_ts", 0))
            if aid not in firing:
                # The firing record is gone (e.g. topic retention): rebuild its start.
                started = (a.get("details") or {}).get("lifecycle", {}).get("fired_ts")
                firing[aid] = {**a, "event_ts": started if started is not None
                               else a.get("event_ts", 0)}
    out = []
    for aid, a in sorted(firing.items(), key=lambda item: int(item[1].get("event_ts", 0))):
        out.append((a, Episode(int(a.get("event_ts", 0)), ends.get(aid),
                               _scope_row(a, models), str(a.get("kind")))))
    return out


def _buckets(fb: FeedbackColumns, recal: NDArray[np.float64]) -> Buckets:
    span = int(fb.ts[-1] - fb.ts[0]) + 1 if len(fb) else 1
    width = _BUCKET_WIDTHS_MS[-1]
    for w in _BUCKET_WIDTHS_MS:
        count = span // w + 1
        if count <= _MAX_BUCKETS and (len(fb) / count >= _MIN_BUCKET_EVENTS or count <= 12):
            width = w
            break
    stats: dict[str, list[float]] = defaultdict(list)
    spans = runs(fb.ts // width)
    for _, a, b in spans:
        raw = calibration_metrics(fb.score[a:b], fb.label[a:b])
        cal = calibration_metrics(recal[a:b], fb.label[a:b])
        stats["ece_raw"].append(raw.ece)
        stats["ece_recal"].append(cal.ece)
        stats["ece_floor"].append(cal.ece_floor)
        stats["ctr"].append(float(fb.label[a:b].mean()))
        stats["mean_raw"].append(float(fb.score[a:b].mean()))
        stats["mean_recal"].append(float(recal[a:b].mean()))
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    return Buckets(
        start_ms=np.asarray([k * width for k, _, _ in spans], dtype=np.int64), width_ms=width,
        n=np.asarray([b - a for _, a, b in spans], dtype=np.int64), **arr,
    )


def _plot_limit(*scores: NDArray[np.float64]) -> float:
    """The reliability diagrams' axis range: up to the 99.5th percentile of the scores,
    rounded up, so a 4% CTR does not squeeze every point into the corner."""
    top = max((float(np.quantile(s, 0.995)) for s in scores if s.size), default=1.0)
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if top <= 10 * step:
            return min(1.0, math.ceil(top / step) * step) if top > 0 else step
    return 1.0


def _fine_report(p: NDArray[np.float64], y: NDArray[np.float64], limit: float) -> CalibrationReport:
    # Equal-width bins like the ECE's, PLOT_BINS of them inside [0, limit].
    return calibration_metrics(p, y, n_bins=max(PLOT_BINS, math.ceil(PLOT_BINS / limit)))


# --------------------------------------------------------------------------- sections


def _summary(inp: ReportInput, scored: Scored, days: list[DayRow]) -> str:
    fb = inp.feedback
    n = len(fb)
    positives = int(fb.label.sum())
    parts = ['<div class="cards">']
    raw = calibration_metrics(fb.score, fb.label)
    cal = calibration_metrics(scored.calibrated, fb.label)
    cards = [
        (f"{n:,}", "feedback events"),
        (f"{positives:,}", "clicks (label 1)"),
        (_pct(positives / n) if n else "–", "CTR"),
        (_num(raw.ece), "ECE raw score"),
        (_num(cal.ece), "ECE recal"),
        (_num(cal.ece_floor), "ECE noise floor"),
        (_num(raw.nll), "log loss raw"),
        (_num(cal.nll), "log loss recal"),
    ]
    parts += [f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>" for v, k in cards]
    parts.append("</div>")
    if n:
        parts.append(
            f'<p class="note">Impressions from {_e(charts.utc_text(int(fb.ts[0])))} to '
            f"{_e(charts.utc_text(int(fb.ts[-1])))} UTC ({len(days)} day(s)); "
            f"{len(fb.model_names)} model(s), {len(fb.segment_names)} segment(s), "
            f"{len(fb.user_names):,} users. ECE: 15 equal-width bins; the noise floor is the "
            "ECE a perfectly calibrated predictor with the same scores would show on average "
            "(its expected value). recal scores each event with the calibrator version "
            "serving held when its impression was shown.</p>"
        )
    rows: list[list[object]] = []
    summary = inp.summary or {}
    for key in ("lines", "impressions", "clicks"):
        if key in summary:
            rows.append([f"input {key}", f"{summary[key]:,}"])
    join = summary.get("join") or {}
    for key in ("duplicate_impressions", "duplicate_clicks", "late_clicks", "orphan_clicks"):
        if key in join:
            rows.append([key.replace("_", " "), f"{join[key]:,}"])
    served = scored.served_counts()
    for kind, count in served.items():
        rows.append([f"feedback served by {kind}", f"{count:,} ({_pct(count / n) if n else '–'})"])
    parts.append("<div class=grid><div><h3>Counts</h3>" + _table(["", "count"], rows) + "</div>")

    dlq = inp.streams.get("dlq")
    if dlq is None:
        dl_html = _empty("No dlq.jsonl in the source directory.")
    else:
        reasons = Counter(str(d.get("reason")) for d in dlq)
        dl_html = (_table(["reason", "dead letters"],
                          [[r, f"{c:,}"] for r, c in reasons.most_common()]
                          + [["total", f"{len(dlq):,}"]],
                          classes=[""] * len(reasons) + ["total"])
                   if dlq else '<p class="note">No dead letters.</p>')
    parts.append(f"<div><h3>Dead letters by reason</h3>{dl_html}</div>")

    versions = _versions(inp)
    if inp.streams.get("calibrators") is None:
        cv_html = _empty("No calibrators.jsonl in the source directory.")
    elif not versions:
        cv_html = '<p class="note">No calibrator version was published.</p>'
    else:
        by = Counter((str(v.get("scope", "?")).split(":", 1)[0], str(v.get("method")))
                     for v in versions)
        methods = sorted({m for _, m in by})
        kinds = [k for k in ("global", "segment", "user") if any(s == k for s, _ in by)]
        table_rows: list[list[object]] = [
            [k, *[by.get((k, m), 0) for m in methods], sum(by.get((k, m), 0) for m in methods)]
            for k in kinds
        ]
        table_rows.append(["total", *[sum(by.get((k, m), 0) for k in kinds) for m in methods],
                           len(versions)])
        reasons = Counter(str(v.get("reason")) for v in versions)
        cv_html = _table(["scope", *methods, "total"], table_rows,
                         classes=[""] * len(kinds) + ["total"])
        cv_html += '<p class="note">By reason: ' + _e(", ".join(
            f"{r} {c}" for r, c in sorted(reasons.items()))) + "</p>"
    parts.append(f"<div><h3>Calibrator versions by method and scope</h3>{cv_html}</div>")

    alerts = inp.streams.get("alerts")
    if alerts is None:
        al_html = _empty("No alerts.jsonl in the source directory.")
    elif not alerts:
        al_html = '<p class="note">No alert fired.</p>'
    else:
        kinds_c = Counter((str(a.get("kind")), str(a.get("status"))) for a in alerts)
        names = sorted({k for k, _ in kinds_c})
        al_html = _table(["kind", "firing", "resolved"],
                         [[k, kinds_c[(k, "firing")], kinds_c[(k, "resolved")]] for k in names])
    parts.append(f"<div><h3>Alerts by kind</h3>{al_html}</div></div>")
    return _section("summary", "\n".join(parts))


def _reliability(fb: FeedbackColumns, scored: Scored) -> str:
    if not len(fb):
        return _section("reliability", _empty("No feedback: nothing to draw."))
    recal = scored.calibrated
    limit = _plot_limit(fb.score, recal)
    panels = [("all feedback", [
        Curve("raw score", charts.RAW_COLOR, _fine_report(fb.score, fb.label, limit)),
        Curve("recal", charts.RECAL_COLOR, _fine_report(recal, fb.label, limit)),
    ])]
    seg_counts = np.bincount(fb.segment, minlength=len(fb.segment_names))
    order = [int(s) for s in np.argsort(-seg_counts, kind="stable") if seg_counts[s] > 0]
    rows: list[list[object]] = []
    seg_panels: list[tuple[str, list[Curve]]] = []
    for s in order:
        mask = fb.segment == s
        p, r, y = fb.score[mask], recal[mask], fb.label[mask]
        raw, cal = calibration_metrics(p, y), calibration_metrics(r, y)
        name = fb.segment_names[s]
        rows.append([name, f"{int(mask.sum()):,}", _pct(float(y.mean())), _num(raw.ece),
                     _compare(raw.ece, cal.ece), _num(cal.ece_floor), _num(raw.nll),
                     _compare(raw.nll, cal.nll)])
        if len(seg_panels) < MAX_SEGMENT_PANELS:
            seg_panels.append((f"segment {name} (n={int(mask.sum()):,})", [
                Curve("raw score", charts.RAW_COLOR, _fine_report(p, y, limit)),
                Curve("recal", charts.RECAL_COLOR, _fine_report(r, y, limit)),
            ]))
    body = [
        '<p class="note">Observed click rate per bin of predicted probability, for the raw '
        "score the model served and for the score recal's calibrators gave it (prequential). "
        "A calibrated predictor lies on the diagonal, within the grey band (± 1.96 standard "
        "errors of a bin's rate at its size) 95% of the time. Point size: events in the bin. "
        f"Axes cut at {limit:g} (99.5% of scores are below).</p>",
        _img(charts.png_data_uri(charts.reliability_figure(panels, limit, size=4.6)),
             "reliability diagram, all feedback"),
        "<h3>Per segment</h3>",
        _table(["segment", "n", "CTR", "ECE raw", "ECE recal", "ECE floor", "log loss raw",
                "log loss recal"], rows),
        _img(charts.png_data_uri(charts.reliability_figure(seg_panels, limit)),
             "reliability diagrams per segment"),
    ]
    if len(order) > MAX_SEGMENT_PANELS:
        body.append(f'<p class="note">Diagrams for the {MAX_SEGMENT_PANELS} largest of '
                    f"{len(order)} segments.</p>")
    return _section("reliability", "\n".join(body))


def _timelines(
    fb: FeedbackColumns, scored: Scored, versions: list[dict[str, Any]],
    episodes: list[tuple[dict[str, Any], Episode]],
) -> str:
    if not len(fb):
        return _section("timelines", _empty("No feedback: nothing to draw."))
    buckets = _buckets(fb, scored.calibrated)
    models = len(fb.model_names)
    markers = []
    for v in versions:
        ms = v.get("event_ts")
        if isinstance(ms, int) and not isinstance(ms, bool):
            markers.append(Marker(ms, _scope_row(v, models), str(v.get("reason"))))
    fig = charts.timeline_figure(buckets, markers, [e for _, e in episodes])
    width_min = buckets.width_ms // 60_000
    width = f"{width_min // 60} h" if width_min % 60 == 0 else f"{width_min} min"
    return _section("timelines", (
        f'<p class="note">Per {width} of impression time ({buckets.n.size} buckets, median '
        f"{int(np.median(buckets.n)):,} events). "
        "Triangles in the lower panel: calibrator versions at their creation, by scope and "
        "reason; bars: alert episodes from firing to resolved, by scope. Red shading: some "
        "alert is firing.</p>"
        + _img(charts.png_data_uri(fig), "ECE and CTR timelines")
    ))


def _prequential(fb: FeedbackColumns, scored: Scored, days: list[DayRow]) -> str:
    if not days:
        return _section("prequential", _empty("No feedback: no table."))
    total = day_row(-1, fb.score, scored.calibrated, fb.label)
    rows = []
    for d in [*days, total]:
        rows.append([
            "all days" if d.day_ms < 0 else charts.utc_text(d.day_ms)[:10], f"{d.n:,}",
            f"{d.positives:,}", _pct(d.ctr), _pct(d.mean_score), _pct(d.mean_recal),
            _num(d.ece_identity), _compare(d.ece_identity, d.ece_recal), _num(d.ece_floor),
            _num(d.nll_identity), _compare(d.nll_identity, d.nll_recal),
            _Raw(_e(f"{100 * (d.nll_identity - d.nll_recal) / d.nll_identity:+.2f}%")
                 if d.nll_identity > 0 else "–"),
        ])
    table = _table(
        ["day (UTC)", "n", "clicks", "CTR", "mean raw score", "mean recal", "ECE identity",
         "ECE recal", "ECE floor", "log loss identity", "log loss recal", "log loss gain"],
        rows, classes=[""] * len(days) + ["total"], left=1,
    )
    note = ""
    if scored.versions and scored.served_counts()["identity"] == len(fb):
        note = _empty(
            "Calibrator versions exist, but none was published (event_ts) before any "
            "impression here, so recal equals the raw score throughout."
        )
    return _section("prequential", note + (
        '<p class="note">For each UTC day of impression time: the raw score ("identity", no '
        "calibration) against recal, where each event is scored by the newest calibrator "
        "version created before its impression, along the chain user → segment → global → "
        "identity. Nothing is fitted on the events it scores. Green: recal is lower (better); "
        "red: higher.</p>" + table
    ))


def _tiers(inp: ReportInput) -> str:
    posts = inp.streams.get("posteriors")
    if posts is None:
        return _section("tiers", _empty("No posteriors.jsonl in the source directory."))
    # Sorted by event time: records of several partitions (a topic dump) interleave.
    changes = sorted((p for p in posts if p.get("type") == "tier_change"),
                     key=lambda c: int(c.get("event_ts", 0)))
    final: Counter[str] = Counter()
    by_segment: dict[str, Counter[str]] = defaultdict(Counter)
    body = []
    if changes:
        last: dict[str, dict[str, Any]] = {}
        for c in changes:
            last[str(c.get("user_id"))] = c
        for c in last.values():
            final[str(c.get("to_tier"))] += 1
            by_segment[str(c.get("segment", "?"))][str(c.get("to_tier"))] += 1
        ts = np.asarray([int(c.get("event_ts", 0)) for c in changes], dtype=np.int64)
        span = int(ts.max() - ts.min()) if ts.size else 0
        width = MS_PER_DAY if span >= 3 * MS_PER_DAY else 3_600_000
        edges = np.unique(ts // width)
        idx = np.searchsorted(edges, ts // width)
        tier_names = sorted({str(c.get("to_tier")) for c in changes}
                            | {str(c.get("from_tier")) for c in changes
                               if c.get("from_tier") is not None})
        series = {}
        for t in tier_names:
            delta = np.zeros(edges.size, dtype=np.int64)
            np.add.at(delta, idx[[c.get("to_tier") == t for c in changes]], 1)
            np.add.at(delta, idx[[c.get("from_tier") == t for c in changes]], -1)
            series[t] = np.cumsum(delta)
        fig = charts.tier_figure((edges * width).astype(np.int64), series, dict(final))
        body.append(f'<p class="note">Users by uncertainty tier, from the '
                    f"{len(changes):,} tier changes (the first assignment counts as one).</p>")
        body.append(_img(charts.png_data_uri(fig), "tier distribution"))
    else:
        last_snap: dict[str, str] = {}
        for p in posts:
            if p.get("user_id") not in (None, "*") and "tier" in p:
                last_snap[str(p["user_id"])] = str(p["tier"])
        final.update(last_snap.values())
        if not final:
            return _section("tiers", _empty("posteriors.jsonl has no tier changes or user "
                                            "snapshots."))
        body.append('<p class="note">No tier changes in the source; users by the tier of '
                    "their latest posterior snapshot.</p>")
        body.append(_img(charts.png_data_uri(charts.tier_figure(
            np.zeros(0, dtype=np.int64), {}, dict(final))), "tier distribution"))
    tiers = [t for t in charts.TIER_COLORS if t in final] + sorted(
        t for t in final if t not in charts.TIER_COLORS)
    total = sum(final.values())
    rows: list[list[object]] = [["all users", *[f"{final[t]:,} ({_pct(final[t] / total)})"
                                                for t in tiers], f"{total:,}"]]
    for seg in sorted(by_segment):
        counts = by_segment[seg]
        rows.append([f"segment {seg}", *[f"{counts[t]:,}" for t in tiers],
                     f"{sum(counts.values()):,}"])
    body.append(_table(["", *tiers, "users"], rows))
    return _section("tiers", "\n".join(body))


def _posterior_rows(picked: list[dict[str, Any]]) -> tuple[list[list[object]], list[Any]]:
    rows: list[list[object]] = []
    curves = []
    for p in picked:
        a, b = float(p["alpha"]), float(p["beta"])
        post = BetaPosterior(a, b)  # the snapshot's (alpha, beta) as a posterior, no evidence
        lo, hi = post.interval(CREDIBLE_LEVEL)
        label = f"{p['user_id']} / {p['arm']}" if p["user_id"] != "*" else f"arm {p['arm']}"
        rows.append([label, f"{int(p.get('n', 0)):,}", _num(a, 2), _num(b, 2),
                     _pct(post.mean), f"{_pct(lo)} – {_pct(hi)}", p.get("tier", "–")])
        curves.append((label, a, b))
    return rows, curves


def _posteriors(inp: ReportInput) -> str:
    posts = inp.streams.get("posteriors")
    if posts is None:
        return _section("posteriors", _empty("No posteriors.jsonl in the source directory."))
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for p in posts:
        if p.get("type") is None and "alpha" in p and "beta" in p:
            latest[(str(p.get("user_id")), str(p.get("arm")))] = p
    if not latest:
        return _section("posteriors", _empty("posteriors.jsonl has no posterior snapshots."))
    header = ["posterior", "n", "alpha", "beta", "mean",
              f"{int(CREDIBLE_LEVEL * 100)}% credible interval", "tier"]
    body = [f'<p class="note">Beta click-rate posteriors, latest snapshot per '
            f"(user, arm): {len(latest):,} in all. Intervals are equal-tailed.</p>"]
    arms = sorted((p for (u, _), p in latest.items() if u == "*"), key=lambda p: -p["n"])
    blocks = []
    if arms:
        rows, curves = _posterior_rows(arms[:12])
        fig = charts.posterior_figure(curves[:8], "arm population posteriors")
        blocks.append("<div><h3>Arms (population)</h3>" + _table(header, rows)
                      + _img(charts.png_data_uri(fig), "arm posteriors") + "</div>")
    users = sorted((p for (u, _), p in latest.items() if u != "*"),
                   key=lambda p: (int(p.get("n", 0)), str(p["user_id"]), str(p["arm"])))
    if users:
        # A heavy, a typical and a light (user, arm): how the interval narrows with evidence.
        picks = []
        for q in (0.999, 0.9, 0.5, 0.1):
            candidate = users[min(len(users) - 1, int(q * len(users)))]
            if candidate not in picks:
                picks.append(candidate)
        rows, curves = _posterior_rows(picks)
        fig = charts.posterior_figure(curves, "example (user, arm) posteriors")
        blocks.append("<div><h3>Users (by evidence: top 0.1%, top 10%, median, bottom 10%)"
                      "</h3>" + _table(header, rows) + _img(charts.png_data_uri(fig),
                                                           "user posteriors") + "</div>")
    body.append('<div class="grid">' + "".join(blocks) + "</div>")
    return _section("posteriors", "\n".join(body))


def _alerts(inp: ReportInput, episodes: list[tuple[dict[str, Any], Episode]]) -> str:
    if inp.streams.get("alerts") is None:
        return _section("alerts", _empty("No alerts.jsonl in the source directory."))
    if not episodes:
        return _section("alerts", '<p class="note">No alert fired.</p>')
    rows = []
    for a, ep in episodes[:_MAX_ROWS_SHOWN]:
        end = "still firing" if ep.end_ms is None else charts.utc_text(ep.end_ms)
        hours = "–" if ep.end_ms is None else f"{(ep.end_ms - ep.start_ms) / 3_600_000:.1f}"
        rows.append([a.get("kind"), a.get("scope"), a.get("severity"),
                     charts.utc_text(ep.start_ms), end, hours, _num(a.get("value")),
                     _num(a.get("threshold")),
                     (a.get("annotations") or {}).get("summary", "")])
    open_count = sum(ep.end_ms is None for _, ep in episodes)
    more = (f'<p class="note">First {_MAX_ROWS_SHOWN} of {len(episodes)} episodes.</p>'
            if len(episodes) > _MAX_ROWS_SHOWN else "")
    return _section("alerts", (
        f'<p class="note">{len(episodes)} episode(s), {open_count} still firing at the end. '
        "Times are event time.</p><details open><summary>episodes</summary>"
        + _table(["kind", "scope", "severity", "fired", "resolved", "hours", "value",
                  "threshold", "summary"], rows, left=3, text_columns=(8,))
        + "</details>" + more
    ))


def _calibrators(inp: ReportInput, versions: list[dict[str, Any]]) -> str:
    if inp.streams.get("calibrators") is None:
        return _section("calibrators", _empty("No calibrators.jsonl in the source directory."))
    if not versions:
        return _section("calibrators", '<p class="note">No calibrator version was published.'
                                       "</p>")
    rows = []
    for v in versions[:_MAX_ROWS_SHOWN]:
        m = v.get("metrics") or {}
        t = v.get("training") or {}
        rows.append([v.get("scope"), v.get("version"), v.get("method"), v.get("reason"),
                     str(v.get("created_at", ""))[:19].replace("T", " "),
                     _num(t.get("n"), 0) if t.get("n") is not None else "–",
                     _num(m.get("ece_before")), _compare(m.get("ece_before", math.nan),
                                                         m.get("ece_after", math.nan)),
                     _num(m.get("nll_before")), _compare(m.get("nll_before", math.nan),
                                                         m.get("nll_after", math.nan)),
                     _num(m.get("ece_floor"))])
    more = (f'<p class="note">First {_MAX_ROWS_SHOWN} of {len(versions)} versions.</p>'
            if len(versions) > _MAX_ROWS_SHOWN else "")
    return _section("calibrators", (
        f'<p class="note">{len(versions)} version(s), in publication order, with the metrics '
        "the worker measured on its holdout when it fitted them.</p><details><summary>"
        "all versions</summary>" + _table(
            ["scope", "version", "method", "reason", "created (UTC)", "trained on",
             "ECE before", "ECE after", "log loss before", "log loss after", "ECE floor"],
            rows, left=4) + "</details>" + more
    ))


# --------------------------------------------------------------------------- entry point


def render_html(inp: ReportInput, title: str | None = None) -> str:
    """The report page for loaded inputs."""
    started = time.perf_counter()
    fb = inp.feedback
    versions_raw = inp.records("calibrators")
    scored = prequential_scores(fb, versions_raw)
    if scored.rejected:
        log.warning("report: %d calibrator record(s) rejected by the serving client",
                    scored.rejected)
    days = daily_table(fb, scored.calibrated)
    log.info("report: scored %s events with %d calibrator versions in %.1f s", f"{len(fb):,}",
             scored.versions, time.perf_counter() - started)
    versions = _versions(inp)
    episodes = _episodes(inp.records("alerts"), len(fb.model_names))
    heading = title or f"recal report: {inp.source.name or inp.source}"
    sections = [
        _summary(inp, scored, days),
        _reliability(fb, scored),
        _timelines(fb, scored, versions, episodes),
        _prequential(fb, scored, days),
        _tiers(inp),
        _posteriors(inp),
        _alerts(inp, episodes),
        _calibrators(inp, versions),
    ]
    log.info("report: charts and tables in %.1f s", time.perf_counter() - started)
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>\n"
        f"<header><h1>{_e(heading)}</h1><p class=\"meta\">Source: {_e(inp.source)}</p>"
        f"<nav>{nav}</nav></header>\n<main>\n{''.join(sections)}</main></body></html>\n"
    )


def build_report(source_dir: Path, out_path: Path | None = None, *,
                 title: str | None = None) -> Path:
    """Read a replay-layout directory and write the HTML report (default
    ``source_dir / "report.html"``); returns its path. ``ConfigError`` when the directory
    is missing, empty or not replay output."""
    source_dir = Path(source_dir)
    out = Path(out_path) if out_path is not None else source_dir / REPORT_FILE
    started = time.perf_counter()
    inp = load_directory(source_dir, progress=lambda text: log.info("report: %s", text))
    page = render_html(inp, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    log.info("report: wrote %s (%.1f MB) in %.1f s", out, len(page) / 1e6,
             time.perf_counter() - started)
    return out
