"""StreamRec: a deterministic, streaming generator of impression/click JSONL with ground truth.

``generate(scenario)`` yields ``SimEvent``s in arrival order (the order a replay file or one
Kafka partition would deliver them). Every impression carries its true click probability in
``context.true_p`` (the decoder ignores ``context``, DESIGN §3), so calibration studies can
compute the ECE floor and the best achievable log loss.

Ids are stable and readable: impressions ``imp-<seed>-<index>`` (``index`` = position in
the generated impression sequence, 0-based), orphan clicks ``ghost-<seed>-<index>``, malformed
records ``bad-<seed>-<n>``; users ``u<n>``, items ``it<n>``.

The generator works in chunks of impressions with vectorised numpy draws, and holds back only
the lines that may still be overtaken (clicks waiting for their delay, the reorder window), so
memory does not grow with ``n_events``.

>>> sc = Scenario(n_events=200, n_users=20, n_items=10, seed=3)
>>> events = list(generate(sc))
>>> first = next(e for e in events if e.kind == "impression")
>>> first.obj["impression_id"], first.key == first.obj["user_id"], 0 < first.obj["score"] < 1
('imp-3-0', True, True)
>>> sum(e.kind == "impression" for e in events)
200
"""

from __future__ import annotations

import gc
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar, cast

import numpy as np
import orjson

from worker.core.codec.output_encoder import dumps_sized_many
from worker.core.mathfn import sigmoid_array
from worker.sim.corruption import (
    MALFORMED_KINDS,
    MALFORMED_WEIGHTS,
    ReorderBuffer,
    jitter,
    make_malformed,
)
from worker.sim.scenario import NEW_USER_SEGMENT, Scenario

#: Impressions per vectorised chunk. Part of the output's definition: changing it changes the
#: random draws, hence the bytes produced for a seed.
CHUNK = 8_192
#: A new user is drawn only while within this fraction of the late part of the stream after
#: first being seen, so new users look like short bursts of activity.
_NEW_USER_SPAN_FRACTION = 0.1
#: Cap on the share of late impressions that go to new users (the rest keep the base alive).
_NEW_USER_MAX_SHARE = 0.5
#: Positions drawn uniformly in [0, _POSITIONS); they move the click probability only with
#: ``position_decay``.
_POSITIONS = 10
#: ``context.device`` values and their shares among users (``context_fields``).
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
_DEVICE_SHARES = np.array([0.6, 0.3, 0.1])
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
#: Bisection steps that invert the diurnal traffic clock: the bracket (< 1 day wide) halves
#: each step, so 60 steps reach far below a millisecond.
_CLOCK_BISECTIONS = 60

MANIFEST_VERSION = 1


class SimEvent(NamedTuple):
    """One line of the simulated stream, in arrival order.

    - ``raw``: the line's bytes, no trailing newline (a replay line, with ``"type"``);
    - ``kind``: ``"impression"``, ``"click"`` or ``"malformed"``;
    - ``expected_reason``: the decoder's dead-letter reason for malformed lines, else None
      (orphan clicks decode fine; the *join* dead-letters them later: see ``tag``);
    - ``key``: the Kafka key (the user_id) when known;
    - ``obj``: the parsed object (None when ``raw`` is not valid JSON); shared, do not mutate;
    - ``tag``: finer role: ``impression``, ``click`` (delay within the window), ``late_click``
      (delay > window), ``skewed_click`` (stamped before its impression), ``orphan_click``, or
      the malformed kind's name (``worker.sim.corruption.MALFORMED_KINDS``);
    - ``target``: ``"impression"`` or ``"click"``, the input topic the line belongs to;
    - ``duplicate``: True for the byte-identical copy of an earlier line.
    """

    raw: bytes
    kind: str
    expected_reason: str | None
    key: str | None
    obj: dict[str, Any] | None
    tag: str
    target: str
    duplicate: bool = False


#: Roles of a line; with the target and the duplicate flag they make the line's ``code``.
_TAGS: tuple[str, ...] = (
    "impression",
    "click",
    "late_click",
    "skewed_click",
    "orphan_click",
    *(k.name for k in MALFORMED_KINDS),
)
_TAG_INDEX = {t: i for i, t in enumerate(_TAGS)}
_REASON_OF_TAG = {k.name: k.reason for k in MALFORMED_KINDS}


def _code(tag: str, target: str, duplicate: bool) -> int:
    return (_TAG_INDEX[tag] * 2 + (target == "click")) * 2 + int(duplicate)


def _meta(code: int) -> tuple[str, str | None, str, str, bool]:
    duplicate = bool(code & 1)
    target = "click" if code >> 1 & 1 else "impression"
    tag = _TAGS[code >> 2]
    reason = _REASON_OF_TAG.get(tag)
    kind = "malformed" if reason is not None else target
    return kind, reason, tag, target, duplicate


# Each line travels as a small int (kind, tag, target, duplicate) so that reordering and
# counting stay vectorised; META decodes it: (kind, expected_reason, tag, target, duplicate).
_N_CODES = len(_TAGS) * 4
META: tuple[tuple[str, str | None, str, str, bool], ...] = tuple(
    _meta(c) for c in range(_N_CODES)
)
_IMPRESSION = _code("impression", "impression", False)


@dataclass
class SimSummary:
    """What a generated stream contains, counted while it was produced.

    ``impressions``, ``clicks`` and ``orphan_clicks`` count distinct records (duplicates apart);
    ``positives`` is the number of label-1 feedback records the join must produce (clicks with
    ``delay <= attribution_window_ms``, clock skew counting as 0, impression sent), provided the
    reorder window stays below the join's allowed lateness. ``expected_reasons`` counts the
    decoder's dead-letter reasons of malformed lines; ``expected_dlq`` adds the orphan clicks
    that the join dead-letters (``orphan_click``).

    >>> s = SimSummary(Scenario(n_events=3))
    >>> s.add_many(generate(s.scenario))
    >>> s.impressions, s.lines_by_kind["impression"]
    (3, 3)
    """

    scenario: Scenario
    lines: int = 0
    bytes: int = 0
    # One counter keyed by (kind, tag, duplicate, expected_reason): a single C-level update
    # per line keeps counting off the generator's hot path; the fields derive from it.
    counts: Counter[tuple[str, str, bool, str | None]] = field(default_factory=Counter)

    def add(self, ev: SimEvent) -> None:
        """Count one event (use this when sending events somewhere other than a file)."""
        self.lines += 1
        self.bytes += len(ev.raw) + 1
        self.counts[(ev.kind, ev.tag, ev.duplicate, ev.expected_reason)] += 1

    def add_many(self, events: Iterable[SimEvent]) -> None:
        """Count many events at once."""
        evs = events if isinstance(events, list) else list(events)
        self.lines += len(evs)
        self.bytes += sum(map(len, [e[0] for e in evs])) + len(evs)
        self.counts.update((e[1], e[5], e[7], e[2]) for e in evs)

    def add_codes(self, codes: np.ndarray, n_bytes: int) -> None:
        """Count lines given as ``META`` codes (the generator's internal, vectorised path)."""
        self.lines += len(codes)
        self.bytes += n_bytes
        for code, n in enumerate(np.bincount(codes, minlength=_N_CODES).tolist()):
            if n:
                m = META[code]
                self.counts[(m[0], m[2], m[4], m[1])] += n

    def _sum(self, kind: str, tag: str | None = None, duplicate: bool | None = None) -> int:
        return sum(
            n
            for (k, t, d, _), n in self.counts.items()
            if k == kind and (tag is None or t == tag) and (duplicate is None or d == duplicate)
        )

    @property
    def lines_by_kind(self) -> dict[str, int]:
        """All lines (duplicates included) by kind."""
        return {k: self._sum(k) for k in ("impression", "click", "malformed")}

    @property
    def impressions(self) -> int:
        """Distinct impressions sent."""
        return self._sum("impression", duplicate=False)

    @property
    def clicks(self) -> int:
        """Distinct clicks on sent impressions (late and skewed ones included)."""
        return sum(self._sum("click", t, False) for t in ("click", "late_click", "skewed_click"))

    @property
    def orphan_clicks(self) -> int:
        """Distinct clicks on impressions that are never sent."""
        return self._sum("click", "orphan_click", False)

    @property
    def late_clicks(self) -> int:
        """Distinct clicks with delay beyond the attribution window (label stays 0)."""
        return self._sum("click", "late_click", False)

    @property
    def skewed_clicks(self) -> int:
        """Distinct clicks stamped before their impression (delay counts as 0)."""
        return self._sum("click", "skewed_click", False)

    @property
    def positives(self) -> int:
        """Label-1 feedback records the join must emit."""
        return self._sum("click", "click", False) + self.skewed_clicks

    @property
    def duplicate_impressions(self) -> int:
        """Byte-identical repeats of impression lines."""
        return self._sum("impression", duplicate=True)

    @property
    def duplicate_clicks(self) -> int:
        """Byte-identical repeats of click lines (orphans included)."""
        return self._sum("click", duplicate=True)

    @property
    def malformed(self) -> int:
        """Invalid lines."""
        return self._sum("malformed")

    @property
    def malformed_by_kind(self) -> dict[str, int]:
        """Invalid lines by the way they are broken."""
        out: Counter[str] = Counter()
        for (k, t, _, _), n in self.counts.items():
            if k == "malformed":
                out[t] += n
        return dict(sorted(out.items()))

    @property
    def expected_reasons(self) -> dict[str, int]:
        """The decoder's dead-letter reasons for the malformed lines, with counts."""
        out: Counter[str] = Counter()
        for (k, _, _, r), n in self.counts.items():
            if k == "malformed":
                out[r or "unknown"] += n
        return dict(sorted(out.items()))

    @property
    def expected_dlq(self) -> dict[str, int]:
        """Dead letters expected downstream: decoder reasons plus ``orphan_click``."""
        out = self.expected_reasons
        if self.orphan_clicks:
            out["orphan_click"] = self.orphan_clicks
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (the scenario goes in the manifest next to them)."""
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "lines_by_kind": self.lines_by_kind,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "orphan_clicks": self.orphan_clicks,
            "late_clicks": self.late_clicks,
            "skewed_clicks": self.skewed_clicks,
            "positives": self.positives,
            "duplicate_impressions": self.duplicate_impressions,
            "duplicate_clicks": self.duplicate_clicks,
            "malformed": self.malformed,
            "malformed_by_kind": self.malformed_by_kind,
            "expected_reasons": self.expected_reasons,
            "expected_dlq": self.expected_dlq,
        }


# SimEvent(...) goes through a generated Python __new__ with defaults; building the tuple
# with tuple.__new__ directly is ~40 % cheaper, which matters at one event per line.
_tuple_new = tuple.__new__


@dataclass
class _Population:
    """The fixed world of a scenario: users, items, segments, arms (O(users + items) memory)."""

    n_est: int
    user_seg: np.ndarray  # segment index per user
    user_base_logit: np.ndarray
    user_arm: np.ndarray | None  # (n_users, n_arms) float32
    est_cdf: np.ndarray  # activity CDF over established users
    new_first_seen: np.ndarray  # sorted impression index at which each new user appears
    new_from: int
    new_p: float
    new_span: int
    item_cdf: np.ndarray
    item_arm: np.ndarray
    item_eff: np.ndarray
    seg_names: list[str]
    seg_offset: np.ndarray
    seg_bias: np.ndarray
    arm_names: list[str]
    arm_offset: np.ndarray
    user_effect: np.ndarray | None = None  # per-user true-logit effect the model misses
    user_device: np.ndarray | None = None  # index into DEVICES, with context_fields


def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    # side="right" with u in [0, 1) never returns len(cdf); the clip guards float round-off.
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _population(sc: Scenario, rng: np.random.Generator) -> _Population:
    n_new = sc.n_new_users
    n_est = sc.n_users - n_new
    seg_names = [s.name for s in sc.segments] + [NEW_USER_SEGMENT]
    seg_offset = np.array([s.logit_offset for s in sc.segments] + [0.0])
    seg_bias = np.array([s.model_bias for s in sc.segments] + [sc.new_user_model_bias])
    shares = np.array([s.share for s in sc.segments])
    user_seg = np.empty(sc.n_users, dtype=np.int64)
    user_seg[:n_est] = _draw(_cdf(shares), rng.random(n_est))
    user_seg[n_est:] = len(sc.segments)
    base = np.clip(rng.beta(sc.ctr_alpha, sc.ctr_beta, sc.n_users), 1e-6, 1 - 1e-6)
    user_base_logit = np.log(base) - np.log1p(-base)
    n_arms = len(sc.arms)
    user_arm = (
        rng.normal(0.0, sc.user_arm_logit_sd, (sc.n_users, n_arms)).astype(np.float32)
        if n_arms
        else None
    )
    if sc.user_activity_pareto_shape is None:
        activity = rng.lognormal(0.0, sc.user_activity_sigma, n_est)
    else:
        activity = 1.0 + rng.pareto(sc.user_activity_pareto_shape, n_est)
    ranks = np.arange(1, sc.n_items + 1, dtype=np.float64)
    item_cdf = _cdf(ranks ** (-sc.item_popularity_exponent))
    item_arm = rng.integers(0, max(n_arms, 1), sc.n_items)
    item_eff = rng.normal(0.0, sc.item_logit_sd, sc.n_items)
    # Drawn only when asked for, so that the draws of older scenarios stay where they were.
    user_effect = rng.normal(0.0, sc.user_logit_sd, sc.n_users) if sc.user_logit_sd > 0 else None
    user_device = _draw(_cdf(_DEVICE_SHARES), rng.random(sc.n_users)) if sc.context_fields else None
    # Drawn last: the arrival schedule depends on n_events, everything above must not.
    new_from = math.ceil(sc.new_users_from * sc.n_events)
    late = sc.n_events - new_from
    if n_new and late > 0:
        new_first_seen = np.sort(new_from + rng.integers(0, late, n_new))
        new_p = min(_NEW_USER_MAX_SHARE, sc.new_user_mean_events * n_new / late)
        new_span = max(1, round(_NEW_USER_SPAN_FRACTION * late))
    else:
        new_first_seen, new_p, new_span = np.empty(0, dtype=np.int64), 0.0, 1
    return _Population(
        n_est=n_est,
        user_seg=user_seg,
        user_base_logit=user_base_logit,
        user_arm=user_arm,
        est_cdf=_cdf(activity),
        new_first_seen=new_first_seen,
        new_from=new_from,
        new_p=new_p,
        new_span=new_span,
        item_cdf=item_cdf,
        item_arm=item_arm,
        item_eff=item_eff,
        seg_names=seg_names,
        seg_offset=seg_offset,
        seg_bias=seg_bias,
        arm_names=[a.name for a in sc.arms],
        arm_offset=np.array([a.logit_offset for a in sc.arms]),
        user_effect=user_effect,
        user_device=user_device,
    )


_T = TypeVar("_T")


def _paused_gc(fn: Callable[..., _T], *args: Any) -> _T:
    """Call ``fn`` with the cyclic GC paused, restoring its previous state afterwards.

    Building a chunk allocates several container objects per line that all survive until
    released, so the GC would otherwise run dozens of young and some full collections per chunk
    for nothing (they hold no cycles): measured at 30-45 % of the generator's time. Paused for
    the few milliseconds of building, it runs about once per chunk instead. A caller that
    disabled GC itself keeps it disabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    finally:
        if was_enabled:
            gc.enable()


def _events(batch: list[np.ndarray]) -> list[SimEvent]:
    codes, raws, keys, objs = batch
    meta = META
    return [
        _tuple_new(SimEvent, (r, m[0], m[1], k, o, m[2], m[3], m[4]))
        for r, k, o, m in zip(
            raws.tolist(),
            keys.tolist(),
            objs.tolist(),
            map(meta.__getitem__, codes.tolist()),
            strict=True,
        )
    ]


def _hour_of_day(ts: np.ndarray) -> np.ndarray:
    """UTC hour of day (fractional) of epoch-ms times."""
    return (ts % _DAY_MS) / _HOUR_MS


def _encode(objs: list[dict[str, Any]]) -> list[bytes]:
    """Each object as exactly sized JSON bytes: the lines are held in the reorder buffer and
    in callers' lists (orjson's own buffers would be ~15x the memory: 100k lines, +390 MB RSS
    measured; see ``dumps_sized``)."""
    return dumps_sized_many(objs)


def _objects(values: list[Any]) -> np.ndarray:
    # fromiter never looks inside the elements (np.array would probe them as sequences).
    return np.fromiter(values, dtype=object, count=len(values))


class _Generator:
    """The chunk loop; one instance per stream.

    ``keep_objects=False`` (the file writer) drops each record's dict right after encoding it:
    the lines then hold no GC-tracked objects, which is most of the cost saved.
    """

    def __init__(self, sc: Scenario, *, keep_objects: bool = True) -> None:
        self.sc = sc
        self.keep_objects = keep_objects
        # Two independent streams: the world does not depend on n_events, so the same seed
        # gives the same users and items for a short test and a long benchmark.
        world_seed, stream_seed = np.random.SeedSequence(sc.seed).spawn(2)
        self.pop = _population(sc, np.random.default_rng(world_seed))
        self.rng = np.random.default_rng(stream_seed)
        self.clock_ms = 0.0  # event time since start_ts_ms, fractional (at the mean rate)
        self.last_event_ms = 0.0  # the diurnal clock's last event time since start_ts_ms
        self.seq = 0
        self.n_bad = 0
        # Columns: codes (ndarray), raw lines, keys (user ids), objects (or None).
        self.buffer = ReorderBuffer(4)
        self.gap_mean_ms = 1000.0 / sc.events_per_second
        mode = {"score": 0, "logit": 1, "both": 2}
        self.fixed_mode = mode.get(sc.score_field)  # None for "mixed"

    def batches(self) -> Iterator[list[np.ndarray]]:
        """Released lines, chunk by chunk, as columns ``[codes, raws, keys, objs]``.

        ``codes`` is an int array (see ``META``); the others are ``dtype=object`` arrays.
        """
        sc = self.sc
        skew_slack = sc.skew_max_ms if sc.skew_share > 0 else 0
        for i0 in range(0, sc.n_events, CHUNK):
            i1 = min(i0 + CHUNK, sc.n_events)
            last_ts = _paused_gc(self._chunk, i0, i1)
            # Every later line has ts >= last_ts - skew_slack (impression times never go
            # back; a click is at most skew_max_ms before its impression) and key >= ts.
            released = self.buffer.pop_before(last_ts - skew_slack)
            if released and len(released[0]):
                yield released
        if len(self.buffer):
            yield self.buffer.flush()

    def run(self) -> Iterator[SimEvent]:
        """Released lines as ``SimEvent``s."""
        for batch in self.batches():
            yield from _paused_gc(_events, batch)

    def _users(self, idx: np.ndarray) -> np.ndarray:
        pop, rng, n = self.pop, self.rng, len(idx)
        users = _draw(pop.est_cdf, rng.random(n))
        if pop.new_p > 0 and idx[-1] >= pop.new_from:
            pick_new = (rng.random(n) < pop.new_p) & (idx >= pop.new_from)
            at = idx[pick_new]
            # Candidates: new users first seen within the last new_span impressions.
            hi = np.searchsorted(pop.new_first_seen, at, side="right")
            lo = np.searchsorted(pop.new_first_seen, at - pop.new_span, side="left")
            count = hi - lo
            chosen = lo + np.floor(rng.random(len(at)) * count).astype(np.int64)
            has = count > 0  # nobody has arrived yet: the impression stays with the base
            sel = np.flatnonzero(pick_new)[has]
            users[sel] = pop.n_est + chosen[has]
        return users

    def _chunk(self, i0: int, i1: int) -> int:
        sc, pop, rng = self.sc, self.pop, self.rng
        n = i1 - i0
        idx = np.arange(i0, i1)
        clock = self.clock_ms + np.cumsum(rng.exponential(self.gap_mean_ms, n))
        self.clock_ms = float(clock[-1])
        if sc.diurnal_traffic_amplitude > 0:
            clock = self._diurnal_clock(clock)
        ts = sc.start_ts_ms + np.floor(clock).astype(np.int64)

        users = self._users(idx)
        items = _draw(pop.item_cdf, rng.random(n))
        seg = pop.user_seg[users]
        arm = pop.item_arm[items]
        z = pop.user_base_logit[users] + pop.seg_offset[seg] + pop.item_eff[items]
        if pop.user_arm is not None:
            z += pop.arm_offset[arm] + pop.user_arm[users, arm]
        # The served model scores the world it was trained on: it does not see the shift.
        z_model = z
        if sc.base_rate_shift_at is not None:
            z = z + np.where(idx >= sc.base_rate_shift_at, math.log(sc.base_rate_shift_odds), 0.0)
        # Draws in the order that defines the bytes of every older scenario; the terms that
        # need the positions are added after all of them.
        noise = rng.normal(0.0, sc.model_noise_sd, n) if sc.model_noise_sd > 0 else None
        mode = (
            np.full(n, self.fixed_mode) if self.fixed_mode is not None else rng.integers(0, 3, n)
        )
        pos = rng.integers(0, _POSITIONS, n)
        z, z_model = self._realistic_terms(z, z_model, users, ts, pos)
        p = sigmoid_array(z)

        t0, b0 = sc.temperature_bias_at(i0)
        temp = np.full(n, t0)
        bias = np.full(n, b0)
        if sc.drift_at_event is not None and i1 > sc.drift_at_event:
            t1, b1 = sc.temperature_bias_at(sc.drift_at_event)
            after = idx >= sc.drift_at_event
            temp[after], bias[after] = t1, b1
        if sc.diurnal_temperature_factor != 1 or sc.diurnal_bias_shift != 0:
            bump = sc.miscal_bump(_hour_of_day(ts))
            temp = temp * sc.diurnal_temperature_factor**bump
            bias = bias + sc.diurnal_bias_shift * bump
        noisy = z_model + noise if noise is not None else z_model
        if sc.temperature_pivot != 0:
            noisy = noisy - sc.temperature_pivot
            bias = bias + sc.temperature_pivot
        logit = temp * noisy + bias + pop.seg_bias[seg]
        score = sigmoid_array(logit)

        clicked = np.flatnonzero(rng.random(n) < p)
        nc = len(clicked)
        r = rng.random(nc)
        base_delay = np.floor(rng.exponential(sc.click_delay_mean_ms, nc)).astype(np.int64)
        skew = -rng.integers(1, sc.skew_max_ms + 1, nc)
        delay = np.where(
            r < sc.late_click_share,
            sc.attribution_window_ms + 1 + base_delay,
            np.where(r < sc.late_click_share + sc.skew_share, skew, base_delay),
        )
        click_ts = ts[clicked] + delay
        orphan_p = sc.orphan_click_share / (1.0 - sc.orphan_click_share)
        orphans = clicked[rng.random(nc) < orphan_p] if orphan_p > 0 else clicked[:0]
        orphan_ts = ts[orphans] + np.floor(
            rng.exponential(sc.click_delay_mean_ms, len(orphans))
        ).astype(np.int64)

        raws, keys, objs = self._impressions(i0, ts, users, items, seg, arm, p, score, logit,
                                             mode, pos)
        uids = keys[:]
        window = sc.attribution_window_ms
        click_tag = np.where(
            delay > window, _TAG_INDEX["late_click"],
            np.where(delay < 0, _TAG_INDEX["skewed_click"], _TAG_INDEX["click"]),
        )
        for which, when, prefix in (
            (clicked, click_ts, f"imp-{sc.seed}-"),
            (orphans, orphan_ts, f"ghost-{sc.seed}-"),
        ):
            r2, k2, o2 = self._clicks(i0, which, when, uids, items, prefix)
            raws += r2
            keys += k2
            objs += o2
        codes = np.concatenate([
            np.full(n, _IMPRESSION),
            (click_tag * 2 + 1) * 2,
            np.full(len(orphans), _code("orphan_click", "click", False)),
        ])
        event_ts = np.concatenate([ts, click_ts, orphan_ts])
        arrival = jitter(rng, event_ts, sc.reorder_within_ms)

        if sc.duplicate_share > 0:
            dup = np.flatnonzero(rng.random(len(raws)) < sc.duplicate_share)
            dl = dup.tolist()
            raws += [raws[j] for j in dl]
            keys += [keys[j] for j in dl]
            objs += [objs[j] for j in dl]
            codes = np.concatenate([codes, codes[dup] | 1])
            arrival = np.concatenate([arrival, jitter(rng, event_ts[dup], sc.reorder_within_ms)])
            event_ts = np.concatenate([event_ts, event_ts[dup]])

        if sc.malformed_share > 0:
            n_bad = int(rng.binomial(len(raws), sc.malformed_share / (1 - sc.malformed_share)))
            companion = rng.integers(0, len(raws), n_bad)
            kinds = _draw(np.cumsum(MALFORMED_WEIGHTS), rng.random(n_bad))
            bad_codes = []
            for k, c in zip(kinds.tolist(), companion.tolist(), strict=True):
                code, raw, key, obj = self._malformed(k, keys[c], int(event_ts[c]))
                bad_codes.append(code)
                raws.append(raw)
                keys.append(key)
                objs.append(obj)
            codes = np.concatenate([codes, np.array(bad_codes, dtype=codes.dtype)])
            # A malformed line travels with a well-formed neighbour: same arrival key.
            arrival = np.concatenate([arrival, arrival[companion]])

        seqs = np.arange(self.seq, self.seq + len(raws))
        self.seq += len(raws)
        self.buffer.push(arrival, seqs, [codes, _objects(raws), _objects(keys), _objects(objs)])
        return int(ts[-1])

    def _diurnal_clock(self, clock: np.ndarray) -> np.ndarray:
        """Map a steady-rate clock onto event time with the diurnal traffic curve.

        ``clock`` (ms since start) is a Poisson process of the mean rate; the event time ``t``
        with ``Lambda(t) = clock``, ``Lambda`` the integrated relative rate
        ``1 + A cos(w (start + t - peak))``, makes it a Poisson process of the diurnal rate
        (time change). ``Lambda`` is increasing and within ``2A / w`` of ``t``, so bisection
        on that bracket is exact to well below a millisecond, vectorised and deterministic.
        """
        sc = self.sc
        amp = sc.diurnal_traffic_amplitude
        omega = 2.0 * math.pi / _DAY_MS
        phase0 = sc.start_ts_ms - sc.diurnal_traffic_peak_hour * _HOUR_MS
        sin0 = math.sin(omega * phase0)
        reach = 2.0 * amp / omega
        lo, hi = clock - reach, clock + reach
        for _ in range(_CLOCK_BISECTIONS):
            mid = 0.5 * (lo + hi)
            integrated = mid + amp / omega * (np.sin(omega * (phase0 + mid)) - sin0)
            below = integrated < clock
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        # Float round-off must never send an impression back in time (nor before the start).
        t = np.maximum.accumulate(np.maximum(0.5 * (lo + hi), self.last_event_ms))
        self.last_event_ms = float(t[-1])
        return t

    def _realistic_terms(
        self, z: np.ndarray, z_model: np.ndarray, users: np.ndarray, ts: np.ndarray,
        pos: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the time-of-day, drift, per-user and position terms to the true/model logits."""
        sc, pop = self.sc, self.pop
        if sc.diurnal_ctr_amplitude > 0:
            z = z + sc.ctr_cycle(_hour_of_day(ts))
        if sc.base_rate_drift_per_day != 0:
            z = z + sc.base_rate_drift_per_day * (ts - sc.start_ts_ms) / _DAY_MS
        if pop.user_effect is not None:
            z = z + pop.user_effect[users]
        if sc.position_decay > 0:
            effect = -sc.position_decay * np.log1p(pos)
            z = z + effect
            # The served model learnt the average position bias but only part of its slope,
            # so it is right on average and wrong at the top and the bottom of the list.
            mean_effect = -sc.position_decay * float(np.mean(np.log1p(np.arange(_POSITIONS))))
            share = sc.position_model_share
            z_model = z_model + share * effect + (1.0 - share) * mean_effect
        return z, z_model

    def _impressions(
        self,
        i0: int,
        ts: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        seg: np.ndarray,
        arm: np.ndarray,
        p: np.ndarray,
        score: np.ndarray,
        logit: np.ndarray,
        mode: np.ndarray,
        pos: np.ndarray,
    ) -> tuple[list[bytes], list[str | None], list[dict[str, Any] | None]]:
        """The chunk's impression lines, their keys (user ids) and objects."""
        sc, pop = self.sc, self.pop
        n = len(ts)
        prefix = f"imp-{sc.seed}-"
        model_id = sc.model_id
        seg_names = pop.seg_names
        arm_names = pop.arm_names
        # Column-wise comprehensions over .tolist() values: this is the generator's hot path,
        # and per-row numpy scalar indexing or explicit appends cost several times more.
        uids: list[str | None] = [f"u{u}" for u in users.tolist()]
        arms_col = [arm_names[a] for a in arm.tolist()] if arm_names else [None] * n
        objs: list[dict[str, Any]] = [
            {
                "type": "impression",
                "impression_id": f"{prefix}{i}",
                "user_id": uid,
                "item_id": f"it{it}",
                "ts": t,
                "model_id": model_id,
                "score": sco,
                "logit": lg,
                "segment": seg_names[sg],
                "arm": a,
                "position": ps,
                "context": {"true_p": tp},
            }
            for i, uid, it, t, sco, lg, sg, a, ps, tp in zip(
                range(i0, i0 + n),
                uids,
                items.tolist(),
                ts.tolist(),
                score.tolist(),
                logit.tolist(),
                seg.tolist(),
                arms_col,
                pos.tolist(),
                p.tolist(),
                strict=True,
            )
        ]
        # Dropping a key afterwards is cheaper than one comprehension per field layout.
        if self.fixed_mode == 0:
            for o in objs:
                del o["logit"]
        elif self.fixed_mode == 1:
            for o in objs:
                del o["score"]
        elif self.fixed_mode is None:
            for o, m in zip(objs, mode.tolist(), strict=True):
                if m == 0:
                    del o["logit"]
                elif m == 1:
                    del o["score"]
        if not arm_names:
            for o in objs:
                del o["arm"]
        if pop.user_device is not None:
            hours = (ts % _DAY_MS // _HOUR_MS).tolist()
            devices = [DEVICES[d] for d in pop.user_device[users].tolist()]
            for o, h, dv in zip(objs, hours, devices, strict=True):
                ctx = o["context"]
                ctx["hour"] = h
                ctx["device"] = dv
        return _encode(objs), uids, self._kept(objs)

    def _kept(self, objs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if self.keep_objects:
            return cast("list[dict[str, Any] | None]", objs)
        return [None] * len(objs)

    def _clicks(
        self,
        i0: int,
        which: np.ndarray,
        click_ts: np.ndarray,
        uids: list[str | None],
        items: np.ndarray,
        id_prefix: str,
    ) -> tuple[list[bytes], list[str | None], list[dict[str, Any] | None]]:
        """Click lines for the impressions at chunk offsets ``which``.

        ``id_prefix`` is ``imp-<seed>-`` for real clicks and ``ghost-<seed>-`` for orphans,
        whose impression (same index, other prefix) is never sent.
        """
        wl = which.tolist()
        keys = [uids[k] for k in wl]
        objs: list[dict[str, Any]] = [
            {
                "type": "click",
                "impression_id": f"{id_prefix}{i0 + k}",
                "user_id": uid,
                "ts": t,
                "item_id": f"it{it}",
            }
            for k, uid, t, it in zip(wl, keys, click_ts.tolist(), items[which].tolist(),
                                     strict=True)
        ]
        return _encode(objs), keys, self._kept(objs)

    def _malformed(
        self, kind_index: int, key: str | None, ts: int
    ) -> tuple[int, bytes, str | None, dict[str, Any] | None]:
        kind = MALFORMED_KINDS[kind_index]
        rng = self.rng
        target = kind.targets[int(rng.integers(0, len(kind.targets)))]
        bad_id = f"bad-{self.sc.seed}-{self.n_bad}"
        self.n_bad += 1
        # Fresh ids: the broken record must not collide with (and so disturb) a valid one.
        template: dict[str, Any] = {
            "type": target,
            "impression_id": bad_id,
            "user_id": key or "u0",
            "ts": ts,
        }
        if target == "impression":
            template["item_id"] = "it0"
            template["model_id"] = self.sc.model_id
            template["score"] = float(rng.random())
        line = make_malformed(kind.name, template, rng)
        obj = line.obj if self.keep_objects else None
        return _code(kind.name, target, False), line.raw, line.key, obj


def generate(scenario: Scenario) -> Iterator[SimEvent]:
    """Yield the scenario's lines in arrival order; deterministic for a scenario.

    Lines are produced a chunk (~8k impressions) at a time and released once no later line
    can sort before them, so memory stays flat however long the stream.

    >>> sc = Scenario(n_events=50, n_users=5, seed=1, malformed_share=0.2)
    >>> [e.raw for e in generate(sc)] == [e.raw for e in generate(sc)]
    True
    """
    return _Generator(scenario).run()


ProgressFn = Callable[[int, int], None]


def _open_out(path: str | os.PathLike[str] | IO[bytes]) -> tuple[IO[bytes], bool]:
    if isinstance(path, (str, os.PathLike)):
        if os.fspath(path) == "-":
            return sys.stdout.buffer, False
        return open(path, "wb"), True
    return path, False


def write_jsonl(
    scenario: Scenario,
    path: str | os.PathLike[str] | IO[bytes],
    *,
    manifest: bool = True,
    progress: ProgressFn | None = None,
) -> SimSummary:
    """Write the scenario as JSONL (one line per event, arrival order) and return its counts.

    ``path`` is a file path, ``"-"`` for stdout, or a binary file object. For a file path the
    manifest sidecar ``<path>.expected.json`` is written too unless ``manifest=False``.
    ``progress(impressions_done, lines)`` is called after every chunk.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = write_jsonl(Scenario(n_events=100, n_users=10, seed=2), Path(d) / "ev.jsonl")
    ...     s.impressions, (Path(d) / "ev.jsonl.expected.json").exists()
    (100, True)
    """
    summary = SimSummary(scenario)
    out, owned = _open_out(path)
    impressions = 0
    try:
        for codes, raws, _keys, _objs in _Generator(scenario, keep_objects=False).batches():
            data = b"\n".join(raws.tolist()) + b"\n"
            out.write(data)
            summary.add_codes(codes, len(data))
            if progress is not None:
                impressions += int(np.count_nonzero(codes == _IMPRESSION))
                progress(impressions, summary.lines)
        out.flush()
    finally:
        if owned:
            out.close()
    if progress is not None:
        progress(summary.impressions, summary.lines)
    if manifest and owned:
        write_manifest(summary, path)  # type: ignore[arg-type]  # owned => a path
    return summary


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of a JSONL file: ``<path>.expected.json``.

    >>> manifest_path("/tmp/ev.jsonl").name
    'ev.jsonl.expected.json'
    """
    p = Path(path)
    return p.with_name(p.name + ".expected.json")


def write_manifest(summary: SimSummary, path: str | os.PathLike[str]) -> Path:
    """Write the expected-outcomes sidecar of the JSONL file ``path``; return its path.

    The sidecar holds the scenario, the counts of ``SimSummary.to_dict`` and ``expected_dlq``
    (dead letters by reason), so a replay or Kafka run can be checked against it.
    """
    target = manifest_path(path)
    doc = {
        "version": MANIFEST_VERSION,
        "file": Path(path).name,
        "scenario": summary.scenario.to_dict(),
        **summary.to_dict(),
    }
    target.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return target


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the sidecar of the JSONL file ``path`` (or the sidecar path itself)."""
    p = Path(path)
    if not p.name.endswith(".expected.json"):
        p = manifest_path(p)
    doc: dict[str, Any] = orjson.loads(p.read_bytes())
    return doc


def lines(scenario: Scenario) -> Iterator[bytes]:
    """Just the raw lines (no newline), in arrival order; cheaper than ``generate``.

    >>> sc = Scenario(n_events=30, seed=4)
    >>> list(lines(sc)) == [e.raw for e in generate(sc)]
    True
    """
    for batch in _Generator(scenario, keep_objects=False).batches():
        yield from batch[1].tolist()
