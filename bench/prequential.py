"""Prequential evaluation of recal's recalibration policy against batch baselines.

Two StreamRec streams (``worker.sim``) are replayed through the real replay runtime
(``worker.replay.run_replay``: join -> feedback -> ``RecalibrationPolicy`` ->
``calibrators.jsonl``), and every feedback event is then scored *prequentially*: with the
newest calibrator version whose ``event_ts`` is <= the impression's ``ts`` (what serving
would have applied at that moment), resolved user -> segment -> global -> identity as
serving does.

Streams (same world, seed 7):

- ``drift``: calibrated (served logit = true logit) until the midpoint impression, then
  over-confident, served logit = 1.6 x true logit (``drift_temperature``);
- ``stationary``: calibrated throughout.

A third stream, ``realistic`` (``--streams drift,stationary,realistic``), is the simulator's
``realistic()`` preset (``recal simulate --scenario realistic``): 190,000 impressions over 6
days (``--realistic-events``; 60,000 with ``--quick``), ~4 % CTR, diurnal traffic and CTR,
a served model overconfident every early morning, a slow base-rate drift and one retrain at
77.5 % of the impressions; its own 30-minute attribution window, and recal with *every*
default (as a new user runs ``recal replay``). For it the bench also prints NLL per UTC day
(issue 10's target: never worse than the raw model on any day) and a ``TARGET`` line that
does not gate the exit code yet.

Both carry a segment of *new users* (``new``): 10% of 20,000 users, arriving from a quarter
of the stream on, about 5 impressions each, whose model logit is biased by +0.6 (the model
over-predicts for cold-start users), next to the established ``web`` (60%) and ``app`` (40%)
users.

Scenario choices: 400,000 impressions at 0.15 impressions/s, i.e. 30.9 days of event time,
so the "weekly" baseline refits four times; a 300 s attribution window (click delays
exponential with mean 20 s, no late clicks, so labels are exactly Bernoulli(true p)), and
60 s allowed lateness: a negative matures ~360 s (~54 impressions) after its impression.
recal runs with its defaults (``PolicyConfig()``; ``--recalibrate-every`` is the replay
flag, default 1,000) except the sketch half-life, 7 days instead of 24 h: the default is
meant for production rates (>= 10 impressions/s, millions of events a day), while at
0.15/s a day holds 13k events, too few for a calibrator precise to the ECE floor of
400k events (~0.002). Abrupt changes do not depend on the half-life: the policy's change
test restarts the sketch at a detected change point.

Methods (rows):

- ``identity``: no recalibration, the served score;
- ``weekly-T``: a batch temperature refit at every 7-day boundary of event time on the
  previous week's feedback (labels known by then), applied from that boundary on (not shown
  for the 6-day realistic stream, where it never refits);
- ``daily-T``: the same at every UTC day boundary on the previous day's feedback;
- ``iso-50k``: a batch isotonic refit every 50,000 feedback events on the previous 50,000,
  applied from the event time of the refit on;
- ``online-platt``: ``OnlinePlatt`` (online Newton step, its defaults) fed each label when
  it matures (feedback order), each impression scored with the (a, b) it had at the
  impression's ``ts``: the same label delay as everything else;
- ``online-contextual``: ``OnlineContextual`` (the ``contextual`` method's online learner,
  its defaults: UTC hour of day, position buckets, segment, plus the impression's
  ``context.device``, the only context field the realistic stream carries besides the hour
  and ``true_p``, which is the truth and never a feature), fed and scored exactly as
  ``online-platt``, each impression with the map it had at its ``ts`` in its own context;
- ``recal``: the versions of ``calibrators.jsonl``;
- ``oracle-T`` and ``oracle``: hindsight oracles, a temperature (``oracle-T``) or a Platt
  calibrator (temperature and intercept, ``oracle``) per segment fitted on the evaluated
  window itself (in-sample: they cannot be served, they mark what one calibrator per
  segment could have achieved on exactly these events). The criterion uses the Platt one,
  the stricter: the new-user segment's miscalibration is a bias that no temperature
  removes. Being fitted in-sample, it can score below the true probabilities themselves.

Windows: all feedback, the 20,000 impressions from the drift point (on the stationary stream:
the same impression indices; on the realistic one: from the retrain), the new-user segment,
and on the realistic stream ``mornings``, the overconfident hours (04:15-08:45 UTC).
``true p`` is the ECE of the true probabilities on the same events (the realised floor),
``floor95`` the 95th percentile of a perfectly calibrated predictor's ECE there
(``ece_floor_quantile`` of the true probabilities). Cells are ECE (15 bins) and NLL of each
method on the window's events.

Done criteria (PASS/FAIL): on the drift stream, recal's ECE over the 20k impressions after
the drift <= 1.5 x the oracle's; on the stationary stream, recal's overall ECE <= floor95.
recal runs as ``recal replay`` does: the policy's scheduled refits plus the drift
detectors, whose alerts request an immediate refit (the versions say ``drift``).

Run:  .venv/bin/python bench/prequential.py [--quick] [--seeds 7,8,9] [--out DIR] [--events N]
      [--streams drift,stationary,realistic] [--realistic-events N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.core.calibrators import (
    Calibrator,
    ContextualCalibrator,
    IsotonicCalibrator,
    OnlineContextual,
    OnlinePlatt,
    PlattCalibrator,
    TemperatureCalibrator,
    calibrator_from_dict,
)
from worker.core.mathfn import clamp_logit_array, sigmoid_array
from worker.core.metrics import calibration_metrics, ece_floor_quantile
from worker.core.pipeline import PipelineConfig
from worker.core.policy import PolicyConfig
from worker.replay import run_replay
from worker.sim.scenario import REALISTIC_EVENTS, Scenario, Segment, realistic
from worker.sim.streamrec import write_jsonl

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
WINDOW_MS = 300_000
POST_DRIFT = 20_000
ISO_EVERY = 50_000
POLICY = PolicyConfig(half_life_ms=7 * 86_400_000.0)
#: The impression ``context`` fields the contextual learner sees (never ``true_p``).
CONTEXT_FIELDS = ("device",)


def scenario(kind: str, n_events: int, seed: int = 7) -> Scenario:
    """The bench's StreamRec scenario (see the module docstring)."""
    if kind == "realistic":
        return realistic(n_events, seed=seed)
    drift = kind == "drift"
    return Scenario(
        n_events=n_events,
        n_users=20_000,
        n_items=2_000,
        seed=seed,
        events_per_second=0.15,
        segments=(Segment("web", 0.6), Segment("app", 0.4)),
        new_user_share=0.1,
        new_users_from=0.25,
        new_user_mean_events=5.0,
        new_user_model_bias=0.6,
        temperature=1.0,
        drift_at_event=n_events // 2 if drift else None,
        drift_temperature=1.6 if drift else None,
        attribution_window_ms=WINDOW_MS,
        click_delay_mean_ms=20_000.0,
        late_click_share=0.0,
        score_field="both",
    )


# ---------------------------------------------------------------------- data


@dataclass
class Stream:
    """The feedback of one replay, in emission order, with the truth joined back."""

    index: np.ndarray  # impression index in the generated sequence
    ts: np.ndarray
    label_ts: np.ndarray
    logit: np.ndarray
    score: np.ndarray
    y: np.ndarray
    true_p: np.ndarray
    segment: np.ndarray  # object array of names
    user: np.ndarray  # object array of ids
    position: list[int | None]
    context: list[dict[str, Any]]  # the CONTEXT_FIELDS of each impression
    calibrators: list[dict[str, Any]]
    summary: dict[str, Any]


def true_probabilities(events: Path, n: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``context.true_p`` of every impression, and its ``CONTEXT_FIELDS``, by index."""
    out = np.full(n, np.nan)
    ctx: list[dict[str, Any]] = [{} for _ in range(n)]
    with open(events, "rb") as fh:
        for line in fh:
            if b'"impression"' not in line[:30]:
                continue
            obj = orjson.loads(line)
            i = int(obj["impression_id"].rsplit("-", 1)[1])
            out[i] = obj["context"]["true_p"]
            ctx[i] = {k: obj["context"][k] for k in CONTEXT_FIELDS if k in obj["context"]}
    return out, ctx


def replay_stream(sc: Scenario, work: Path, recalibrate_every: int,
                  policy: PolicyConfig | None, log: Callable[[str], None],
                  out_name: str = "out") -> Stream:
    events = work / "events.jsonl"
    if not events.exists():
        t0 = time.perf_counter()
        write_jsonl(sc, events)
        log(f"  generated {sc.n_events:,} impressions in {time.perf_counter() - t0:.1f}s")
    out = work / out_name
    base = policy if policy is not None else PolicyConfig()
    # The stream's context fields (the realistic one's device) are kept by the decoder and
    # read by the policy's contextual learner, as the worker's one setting does for both.
    fields = CONTEXT_FIELDS if sc.context_fields else ()
    config = PipelineConfig(window_ms=sc.attribution_window_ms, context_fields=fields,
                            policy=replace(base, recalibrate_every=recalibrate_every,
                                           context_fields=fields))
    t0 = time.perf_counter()
    summary = run_replay(events, out, config).to_dict()
    log(f"  replayed ({out_name}, online_method={base.online_method}) in "
        f"{time.perf_counter() - t0:.1f}s ({summary['calibrators_total']} calibrator "
        f"versions: {summary['calibrators']})")
    truth, ctx = true_probabilities(events, sc.n_events)
    rows = [orjson.loads(line) for line in (out / "feedback.jsonl").read_bytes().splitlines()]
    cal = [orjson.loads(line) for line in (out / "calibrators.jsonl").read_bytes().splitlines()]
    index = np.array([int(r["impression_id"].rsplit("-", 1)[1]) for r in rows])
    return Stream(
        index=index,
        ts=np.array([r["ts"] for r in rows], dtype=np.int64),
        label_ts=np.array([r["label_ts"] for r in rows], dtype=np.int64),
        logit=np.array([r["logit"] for r in rows]),
        score=np.array([r["score"] for r in rows]),
        y=np.array([r["label"] for r in rows], dtype=np.float64),
        true_p=truth[index],
        segment=np.array([r["segment"] for r in rows], dtype=object),
        user=np.array([r["user_id"] for r in rows], dtype=object),
        position=[r.get("position") for r in rows],
        context=[ctx[i] for i in index.tolist()],
        calibrators=cal,
        summary=summary,
    )


# ---------------------------------------------------------------------- prequential scoring


def apply_versions(versions: list[tuple[int, Calibrator]], ts: np.ndarray,
                   score: np.ndarray, rows: np.ndarray, out: np.ndarray,
                   done: np.ndarray, contexts: list[dict[str, Any]] | None = None) -> None:
    """For ``rows`` not yet ``done``: apply the newest version with event_ts <= ts (a
    ``contextual`` version in each event's serving context, as the client applies it)."""
    if not versions or rows.size == 0:
        return
    rows = rows[~done[rows]]
    if rows.size == 0:
        return
    times = np.array([t for t, _ in versions], dtype=np.int64)
    which = np.searchsorted(times, ts[rows], side="right") - 1
    for k in np.unique(which):
        if k < 0:
            continue
        sel = rows[which == k]
        cal = versions[int(k)][1]
        if isinstance(cal, ContextualCalibrator) and contexts is not None:
            out[sel] = cal.apply(score[sel], [contexts[i] for i in sel.tolist()])
        else:
            out[sel] = cal.apply(score[sel])
        done[sel] = True


def served_by_recal(s: Stream, calibrators: list[dict[str, Any]] | None = None) -> np.ndarray:
    """What serving would have returned for every feedback event: user -> segment -> global
    -> identity, each the newest version with ``event_ts <= ts`` (``calibrators``: another
    replay's versions of the same stream; default the stream's own)."""
    ctx = serving_contexts(s)
    by_key: dict[str, list[tuple[int, Calibrator]]] = defaultdict(list)
    for m in (s.calibrators if calibrators is None else calibrators):
        by_key[m["scope"]].append((int(m["event_ts"]), calibrator_from_dict(m)))
    for v in by_key.values():
        v.sort(key=lambda e: e[0])  # stable: emission order among equal event_ts
    n = s.ts.size
    out = s.score.copy()
    done = np.zeros(n, dtype=bool)
    users = [k for k in by_key if k.startswith("user:")]
    if users:
        pos: dict[str, list[int]] = defaultdict(list)
        wanted = {k[len("user:"):] for k in users}
        for i, u in enumerate(s.user.tolist()):
            if u in wanted:
                pos[u].append(i)
        for u, idx in pos.items():
            apply_versions(by_key["user:" + u], s.ts, s.score, np.array(idx), out, done, ctx)
    for seg in sorted(set(s.segment.tolist())):
        rows = np.flatnonzero(s.segment == seg)
        apply_versions(by_key.get("segment:" + seg, []), s.ts, s.score, rows, out, done, ctx)
    apply_versions(by_key.get("global", []), s.ts, s.score, np.arange(n), out, done, ctx)
    return out


def weekly_temperature(s: Stream) -> np.ndarray:
    """Batch temperature refit at every week boundary on the previous week's feedback."""
    return periodic_temperature(s, WEEK_MS, int(s.ts.min()) + WEEK_MS)


def daily_temperature(s: Stream) -> np.ndarray:
    """Batch temperature refit at every UTC day boundary on the previous day's feedback."""
    return periodic_temperature(s, DAY_MS, (int(s.ts.min()) // DAY_MS + 1) * DAY_MS)


def periodic_temperature(s: Stream, period_ms: int, first: int) -> np.ndarray:
    """A temperature refit at ``first`` and every ``period_ms`` after, each on the previous
    period's impressions whose labels were known by then, applied from that boundary on."""
    versions: list[tuple[int, Calibrator]] = []
    b = first
    while b <= int(s.ts.max()):
        sel = (s.label_ts <= b) & (s.ts >= b - period_ms) & (s.ts < b)
        if sel.sum() > 100:
            versions.append((b, TemperatureCalibrator.fit_scores(s.score[sel], s.y[sel])))
        b += period_ms
    out = s.score.copy()
    apply_versions(versions, s.ts, s.score, np.arange(s.ts.size), out,
                   np.zeros(s.ts.size, dtype=bool))
    return out


def isotonic_every(s: Stream, every: int = ISO_EVERY) -> np.ndarray:
    """Batch isotonic refit every ``every`` feedback events on the previous ``every``."""
    versions: list[tuple[int, Calibrator]] = []
    watermark = np.maximum.accumulate(np.maximum(s.label_ts, s.ts))
    for end in range(every, s.ts.size + 1, every):
        sl = slice(end - every, end)
        versions.append((int(watermark[end - 1]),
                         IsotonicCalibrator.fit_scores(s.score[sl], s.y[sl])))
    out = s.score.copy()
    apply_versions(versions, s.ts, s.score, np.arange(s.ts.size), out,
                   np.zeros(s.ts.size, dtype=bool))
    return out


def online_platt(s: Stream) -> np.ndarray:
    """``OnlinePlatt`` fed every label as it matures (feedback order, which is label order),
    each impression scored with the (a, b) it had at the impression's ``ts``.

    The (a, b) after each label is stamped with the running maximum of ``label_ts`` (a label
    emitted after a later-stamped one is usable only from that later time), and an impression
    gets the last snapshot stamped <= its ``ts``, identity before the first: the prequential
    rule of ``apply_versions`` with one version per label.
    """
    z = clamp_logit_array(s.logit)
    ons = OnlinePlatt()
    a = np.empty(z.size)
    b = np.empty(z.size)
    for i, (zi, yi) in enumerate(zip(z.tolist(), s.y.tolist(), strict=True)):
        ons.update(zi, yi)
        a[i], b[i] = ons.params
    stamp = np.maximum.accumulate(s.label_ts)
    which = np.searchsorted(stamp, s.ts, side="right") - 1
    known = which >= 0
    out = s.score.copy()
    out[known] = sigmoid_array(a[which[known]] * z[known] + b[which[known]])
    return out


def serving_contexts(s: Stream) -> list[dict[str, Any]]:
    """Each feedback event's serving-time context: ``ts``, ``position``, ``segment`` and its
    ``CONTEXT_FIELDS`` (what ``Impression.serving_context`` gives the policy)."""
    out = []
    for ts, pos, seg, extra in zip(s.ts.tolist(), s.position, s.segment.tolist(), s.context,
                                   strict=True):
        c: dict[str, Any] = {"ts": ts, "segment": seg, **extra}
        if pos is not None:
            c["position"] = pos
        out.append(c)
    return out


def online_contextual(s: Stream, **config: Any) -> np.ndarray:
    """``OnlineContextual`` fed and scored as ``online_platt`` is: after each label a snapshot
    (stamped with the running maximum of ``label_ts``), and each impression scored in its
    own context with the last snapshot stamped <= its ``ts`` (identity before the first).

    Snapshots are taken only when a later impression needs them (the map's parameters are
    copied, not the whole learner), which keeps this linear in the stream.
    """
    z = clamp_logit_array(s.logit)
    ctx = serving_contexts(s)
    stamp = np.maximum.accumulate(s.label_ts)
    which = np.searchsorted(stamp, s.ts, side="right") - 1
    # Impressions by the snapshot (label index) that scores them.
    order = np.argsort(which, kind="stable")
    out = s.score.copy()
    learner = OnlineContextual(fields=CONTEXT_FIELDS, **config)
    k = 0
    n = z.size
    while k < n and which[order[k]] < 0:
        k += 1  # before the first label: identity
    for i in range(n):
        learner.update(float(z[i]), float(s.y[i]), ctx[i])
        if k < n and which[order[k]] == i:
            cal = learner.calibrator()
            while k < n and which[order[k]] == i:
                j = int(order[k])
                out[j] = cal.apply_logit(float(z[j]), ctx[j])
                k += 1
    return out


def oracle(s: Stream, rows: np.ndarray, cls: type[Calibrator] = PlattCalibrator) -> np.ndarray:
    """Hindsight: a calibrator per segment fitted on the evaluated rows themselves."""
    out = np.empty(rows.size)
    segs = s.segment[rows]
    for seg in sorted(set(segs.tolist())):
        sel = segs == seg
        r = rows[sel]
        out[sel] = cls.fit_scores(s.score[r], s.y[r]).apply(s.score[r])
    return out


# ---------------------------------------------------------------------- report


@dataclass
class Cell:
    ece: float
    nll: float


@dataclass
class Window:
    name: str
    n: int
    floor: float
    floor95: float
    cells: dict[str, Cell]


def predictions(s: Stream, no_context: list[dict[str, Any]] | None = None
                ) -> dict[str, np.ndarray]:
    """Every servable method's prequential probability for every feedback event
    (``no_context``: the versions of recal's replay without context, for ``recal-noctx``)."""
    out = {
        "identity": s.score,
        "weekly-T": weekly_temperature(s),
        "daily-T": daily_temperature(s),
        "iso-50k": isotonic_every(s),
        "online-platt": online_platt(s),
        "online-contextual": online_contextual(s),
        "recal": served_by_recal(s),
    }
    if no_context is not None:
        out["recal-noctx"] = served_by_recal(s, no_context)
    return out


def evaluate(s: Stream, sc: Scenario, n_sims: int,
             preds: dict[str, np.ndarray]) -> list[Window]:
    # The realistic stream's change is its retrain; the others' windows sit at the midpoint
    # (the drift stream's drift, the same indices on the stationary one).
    drift_at = sc.drift_at_event if sc.drift_at_event is not None else sc.n_events // 2
    windows = {
        "all": np.arange(s.ts.size),
        f"{POST_DRIFT // 1000}k after drift": np.flatnonzero(
            (s.index >= drift_at) & (s.index < drift_at + POST_DRIFT)
        ),
        "new users": np.flatnonzero(s.segment == "new"),
    }
    if sc.diurnal_temperature_factor != 1.0:
        # The daily overconfident hours (the bump's +-2.5 widths around its peak).
        hour = (s.ts % DAY_MS) / 3_600_000.0
        dh = np.abs((hour - sc.diurnal_miscal_peak_hour + 12.0) % 24.0 - 12.0)
        windows["mornings"] = np.flatnonzero(dh <= 2.5 * sc.diurnal_miscal_width_hours)
    out = []
    for name, rows in windows.items():
        y = s.y[rows]
        cells = {}
        hindsight: dict[str, type[Calibrator]] = {
            "oracle-T": TemperatureCalibrator, "oracle": PlattCalibrator
        }
        for method, p in [*preds.items(), ("oracle-T", None), ("oracle", None)]:
            q = oracle(s, rows, hindsight[method]) if p is None else p[rows]
            r = calibration_metrics(q, y)
            cells[method] = Cell(r.ece, r.nll)
        floor = calibration_metrics(s.true_p[rows], y)
        f95 = ece_floor_quantile(s.true_p[rows], q=0.95, n_sims=n_sims, seed=0)
        out.append(Window(name, int(rows.size), floor.ece, f95, cells))
    return out


METHODS = ("identity", "weekly-T", "daily-T", "iso-50k", "online-platt", "online-contextual",
           "recal-noctx", "recal", "oracle-T", "oracle")
# On the realistic stream (6 days) weekly-T never refits: it would repeat identity.
REALISTIC_METHODS = tuple(m for m in METHODS if m != "weekly-T")
DAY_METHODS = ("identity", "daily-T", "online-platt", "online-contextual", "recal-noctx",
               "recal")


def table(kind: str, windows: list[Window], methods: Sequence[str] = METHODS) -> str:
    lines = [f"stream: {kind}",
             f"{'window':<20}{'n':>8}{'true p':>8}{'floor95':>9}  " + "".join(
                 f"{m:>18}" for m in methods),
             f"{'':<20}{'':>8}{'':>8}{'':>9}  " + "".join(f"{'ECE    NLL':>18}"
                                                          for _ in methods)]
    for w in windows:
        cells = "".join(f"{w.cells[m].ece:>10.4f}{w.cells[m].nll:>8.4f}" for m in methods)
        lines.append(f"{w.name:<20}{w.n:>8,}{w.floor:>8.4f}{w.floor95:>9.4f}  {cells}")
    return "\n".join(lines)


def day_table(s: Stream, preds: dict[str, np.ndarray]) -> tuple[str, dict[str, int]]:
    """NLL per UTC day of the impression's ``ts``; ``*`` marks a day worse than identity.

    Also returns, per method, the number of days worse than identity (the issue's target:
    never worse than the raw model on any day).
    """
    day = s.ts // DAY_MS
    lines = ["  NLL per UTC day (* = worse than identity)",
             f"  {'day':<12}{'n':>8}{'CTR':>8}" + "".join(f"{m:>18}" for m in DAY_METHODS)]
    worse = dict.fromkeys(DAY_METHODS, 0)
    for d in np.unique(day):
        rows = np.flatnonzero(day == d)
        y = s.y[rows]
        nll = {m: calibration_metrics(preds[m][rows], y).nll for m in DAY_METHODS}
        cells = []
        for m in DAY_METHODS:
            bad = nll[m] > nll["identity"]
            worse[m] += int(bad)
            cells.append(f"{nll[m]:>17.5f}{'*' if bad else ' '}")
        date = time.strftime("%Y-%m-%d", time.gmtime(int(d) * 86_400))
        lines.append(f"  {date:<12}{rows.size:>8,}{y.mean():>8.4f}" + "".join(cells))
    lines.append(f"  {'days worse':<28}" + "".join(f"{worse[m]:>18}" for m in DAY_METHODS))
    return "\n".join(lines), worse


def versions_summary(s: Stream) -> str:
    by: dict[str, list[str]] = defaultdict(list)
    for m in s.calibrators:
        by[m["scope"]].append(f"v{m['version']}:{m['method']}/{m['reason'][:5]}")
    parts = [f"{k} ({len(v)}): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
             for k, v in sorted(by.items()) if not k.startswith("user:")]
    users = sum(1 for k in by if k.startswith("user:"))
    lines = ["  versions: " + p for p in parts]
    return "\n".join([*lines, f"  user scopes with versions: {users}"])


def _non_defaults(cfg: PolicyConfig) -> str:
    base = PolicyConfig().to_dict()
    diff = {k: v for k, v in cfg.to_dict().items() if base[k] != v}
    return ", ".join(f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in diff.items()) or "none"


def criteria(kind: str, windows: list[Window]) -> tuple[bool, str] | None:
    """The done criterion of a stream, as (passed, message)."""
    w = {x.name: x for x in windows}
    if kind == "drift":
        post = w[f"{POST_DRIFT // 1000}k after drift"]
        rec, orc = post.cells["recal"].ece, post.cells["oracle"].ece
        return rec <= 1.5 * orc, (
            f"drift: recal ECE over the {POST_DRIFT:,} impressions after the drift {rec:.4f} "
            f"<= 1.5 x oracle {orc:.4f} = {1.5 * orc:.4f} (oracle-T "
            f"{post.cells['oracle-T'].ece:.4f}, true p {post.floor:.4f})"
        )
    if kind == "stationary":
        a = w["all"]
        return a.cells["recal"].ece <= a.floor95, (
            f"stationary: recal ECE {a.cells['recal'].ece:.4f} <= floor95 {a.floor95:.4f} "
            f"(n={a.n:,}; true p {a.floor:.4f})"
        )
    return None


def realistic_target(seed: int, windows: list[Window], worse: dict[str, int]) -> str:
    """Issue 10's target on the realistic stream, reported but not yet a PASS/FAIL gate:
    recal's ECE and NLL <= online Platt's, daily-T's and the raw model's, and no day worse
    than the raw model."""
    c = windows[0].cells
    rec = c["recal"]
    beats = all(rec.ece <= c[m].ece and rec.nll <= c[m].nll
                for m in ("identity", "daily-T", "online-platt"))
    met = beats and worse["recal"] == 0
    # Issue 10 item 4: the contextual learner against the context-free one, both online.
    cx = c["online-contextual"]
    ctx_beats = cx.ece <= c["online-platt"].ece and cx.nll <= c["online-platt"].nll
    return (f"{'TARGET met   ' if met else 'TARGET missed'}  seed {seed}: realistic: recal ECE "
            f"{rec.ece:.4f} NLL {rec.nll:.5f} vs online-platt {c['online-platt'].ece:.4f} "
            f"{c['online-platt'].nll:.5f}, daily-T {c['daily-T'].ece:.4f} "
            f"{c['daily-T'].nll:.5f}, identity {c['identity'].ece:.4f} "
            f"{c['identity'].nll:.5f}; days worse than identity: recal {worse['recal']}, "
            f"online-platt {worse['online-platt']}, daily-T {worse['daily-T']} "
            "(issue 10; not gating)\n"
            f"{'contextual ' + ('beats' if ctx_beats else 'misses')}  seed {seed}: "
            f"online-contextual ECE {cx.ece:.4f} NLL {cx.nll:.5f} vs online-platt "
            f"{c['online-platt'].ece:.4f} {c['online-platt'].nll:.5f}; days worse than "
            f"identity: {worse['online-contextual']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=400_000, help="impressions per stream")
    ap.add_argument("--recalibrate-every", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 60k impressions")
    ap.add_argument("--out", type=Path, default=None, help="keep the replay outputs here")
    ap.add_argument("--streams", default="drift,stationary",
                    help="comma-separated: drift, stationary, realistic")
    ap.add_argument("--realistic-events", type=int, default=REALISTIC_EVENTS,
                    help="impressions of the realistic stream (always 6 days)")
    ap.add_argument("--seeds", default="7", help="comma-separated scenario seeds")
    args = ap.parse_args(argv)
    n = 60_000 if args.quick else args.events
    n_real = 60_000 if args.quick else args.realistic_events
    n_sims = 300 if args.quick else 2000
    log = print
    log(__doc__.split("\n")[0])
    if set(args.streams.split(",")) - {"realistic"}:
        log(f"impressions per stream: {n:,}; recalibrate_every={args.recalibrate_every}; "
            f"attribution window {WINDOW_MS // 1000}s; 0.15 impressions/s "
            f"({n / 0.15 / 86400:.1f} days); policy: defaults except {_non_defaults(POLICY)}")
    verdicts: list[tuple[bool, str]] = []
    targets: list[str] = []
    with tempfile.TemporaryDirectory(prefix="recal-prequential-") as tmp:
        base = args.out if args.out is not None else Path(tmp)
        for seed in (int(x) for x in args.seeds.split(",")):
            for kind in args.streams.split(","):
                real = kind == "realistic"
                sc = scenario(kind, n_real if real else n, seed=seed)
                log(f"\n[{kind}, seed {seed}]")
                if real:
                    days = sc.n_events / sc.events_per_second / 86_400
                    log(f"  {sc.n_events:,} impressions over {days:.0f} days; attribution "
                        f"window {sc.attribution_window_ms // 1000}s; policy: all defaults")
                work = base / f"{kind}-{seed}"
                work.mkdir(parents=True, exist_ok=True)
                # The realistic stream runs recal as a new user would, with every default.
                policy = PolicyConfig() if real else POLICY
                s = replay_stream(sc, work, args.recalibrate_every, policy, log)
                # recal without context: the same defaults with the context-free learner.
                noctx = replay_stream(sc, work, args.recalibrate_every,
                                      replace(policy, online_method="platt"), log, "out-noctx")
                preds = predictions(s, noctx.calibrators)
                windows = evaluate(s, sc, n_sims, preds)
                log(table(kind, windows, REALISTIC_METHODS if real else METHODS))
                if real:
                    text, worse = day_table(s, preds)
                    log(text)
                    targets.append(realistic_target(seed, windows, worse))
                log(versions_summary(s))
                verdict = criteria(kind, windows)
                if verdict is not None:
                    verdicts.append((verdict[0], f"seed {seed}: {verdict[1]}"))
    suffix = "  (quick smoke run: indicative only)" if args.quick else ""
    log("")
    for ok, text in verdicts:
        log(f"{'PASS' if ok else 'FAIL'}  {text}{suffix}")
    for text in targets:
        log(f"{text}{suffix}")
    return 0 if all(ok for ok, _ in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
