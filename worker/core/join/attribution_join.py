"""The event-time attribution join of one partition (DESIGN §4)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from operator import itemgetter
from typing import Any

from worker.core.errors import InvalidInputError, StateError
from worker.core.join.clock_guard import ClockGuard
from worker.core.join.join_stats import JoinStats
from worker.core.join.join_step import JoinStep
from worker.core.join.watermark import Watermark, _check_ms
from worker.core.records.click import Click
from worker.core.records.feedback import Feedback, new_feedback
from worker.core.records.impression import Impression

# Every (user_id, impression_id) key with state has one entry, a list that is at the same
# time the scheduled item (lists order like tuples; ``seq`` is unique, so comparisons
# never look past it). Keeping one object per key, changed in place, avoids a second
# allocation and a dict lookup per expiry, which dominate the cost of the join:
#   [deadline, seq, kind, user_id, impression_id, payload, flag, label, cached]
# ``deadline`` is ``imp.ts + W`` (impression, tombstone) or ``click.ts + W`` (waiting
# click) and never changes while scheduled; ``seq`` is the arrival number of the event
# that created the entry. By kind:
#   _IMP   payload = the Impression, flag = a late click was seen
#   _CLK   payload = the Click,      flag = the caller's ref
#   _TOMB  payload = None,           flag = a late click was seen, label = 0 or 1
#   _DEAD  replaced or removed: its scheduled item is stale and skipped
# ``cached`` is the payload's ``to_dict()`` (None until the first export, and again once
# the payload is dropped): the Kafka runtime re-exports a user's whole state whenever any
# of it changes, and converting the same unchanged impressions again and again was most
# of the worker's time. It holds only strings and numbers, so the collector never tracks it.
_DEADLINE = 0
_SEQ = 1
_KIND = 2
_USER = 3
_IID = 4
_PAYLOAD = 5
_FLAG = 6
_LABEL = 7
_CACHED = 8

_IMP = 0
_CLK = 1
_TOMB = 2
_DEAD = 3

# Bucket width of the calendar queue, as a fraction of the window: about a thousand
# buckets span the pending deadlines, so the bucket heap is tiny and one bucket at a time
# is ordered exactly.
_BUCKETS_PER_WINDOW = 1024

_EMPTY = JoinStep.EMPTY
_by_seq = itemgetter(_SEQ)
# Stands in for a user without state so lookups need no None check; never written to
# (a key found in it would be needed first, and it has none).
_NO_ENTRIES: dict[str, list[Any]] = {}


class AttributionJoin:
    """Joins impressions and clicks of one partition into mature labels, in event time.

    Rules (DESIGN §4). ``W = window_ms``, ``L = allowed_lateness_ms``; the key is
    ``(user_id, impression_id)``; the watermark is ``max ts seen - L`` (see ``Watermark``
    for the idle advance).

    - Label 1 as soon as the impression and a click with ``click.ts - imp.ts <= W`` have
      both arrived; a click stamped before its impression counts as delay 0
      (``delay_ms = max(0, click.ts - imp.ts)``, ``label_ts = max(click.ts, imp.ts)``).
    - Label 0 when the watermark is strictly greater than ``imp.ts + W`` (its deadline),
      with ``label_ts = imp.ts + W``. An impression whose deadline is already behind the
      watermark when it arrives raises ``InvalidInputError("late_impression", ...)`` and
      changes no state but the counter; one whose deadline equals the watermark is still
      joined (the two rules use the same strict comparison).
    - A click whose impression has not arrived waits until the watermark passes
      ``click.ts + W``; then it is an orphan, returned with the caller's ``ref``. While
      several distinct clicks wait on one key the earliest is kept (it is the one that can
      still be attributed), the others count as duplicates.
    - A click with delay ``> W``, or on an impression already finalized negative, is a late
      click, returned once per key; it never rewrites a label. A later click within the
      window on a still pending impression does make it positive (the label is defined by
      "some click within W").
    - Every further click on a key that already has a positive label or a late click, and
      every repeated impression, counts once as a duplicate.
    - Finalized keys stay as tombstones until the watermark passes
      ``imp.ts + W + tombstone_retention_ms`` (default ``W + L``), so repeats and late
      clicks with a delay up to ``2W + L`` are still classified; later they are forgotten.
      Each key lives until the max ts passes ``imp.ts + W + R + L`` (pending clicks:
      ``click.ts + W + L``), so the state is bounded by rate x (2W + 2L) with the default R.
    - Outputs of one call: first what the event itself produced, then what the watermark
      advance finalized, in (deadline, arrival sequence) order; the same input order gives
      the same outputs (replay is deterministic).
    - With ``max_clock_jump_ms`` set (the runtimes set it, default W), one event cannot move
      the clock: an event with ``ts`` more than that beyond the max ts (``horizon``) is held
      by a ``ClockGuard`` until ``clock_confirmations`` later events corroborate the jump
      (then it is applied, with any held event the jump brings within reach, and returned in
      ``released``) or as many refute it (returned in ``future`` with its ``ref``: a
      ``future_ts`` dead letter). An idle advance (``tick``) releases the held events it
      brings within reach; ``finish()`` applies the still undecided ones in ts order (see
      there). None (the default) keeps the unguarded clock.
    - ``finish()`` moves the watermark to +inf: every pending impression becomes a
      negative, every waiting click an orphan, and the tombstones are dropped, so no state
      is left. Events after ``finish()`` are late (impressions raise, clicks are orphans).

    Deadlines live in a calendar queue: buckets of ``W // 1024`` ms keyed in a small heap,
    and one small heap for the bucket the watermark is in (ordered by deadline, then
    arrival). Tombstone retention is a FIFO queue (keys finalize in deadline order). So
    every event costs amortised O(log n) at most, no call scans the whole state, and the
    working set stays small and warm.

    >>> from worker.core.records.click import Click
    >>> from worker.core.records.impression import Impression
    >>> j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100)
    >>> def imp(iid, ts):
    ...     return Impression(iid, "u1", "item", ts, "default", 0.5, 0.0, "default", None, None)
    >>> j.add_impression(imp("a", 0)) is JoinStep.EMPTY
    True
    >>> [(f.label, f.delay_ms) for f in j.add_click(Click("a", "u1", 400, None)).feedback]
    [(1, 400)]
    >>> _ = j.add_impression(imp("b", 500))
    >>> step = j.add_click(Click("zz", "u1", 1_700, None), ref="offset-7")
    >>> [(f.impression.impression_id, f.label, f.label_ts) for f in step.feedback]
    [('b', 0, 1500)]
    >>> j.finish().orphans
    [(Click(impression_id='zz', user_id='u1', ts=1700, item_id=None), 'offset-7')]
    >>> j.stats.feedback_positive, j.stats.feedback_negative, j.state_size()
    (1, 1, 0)
    """

    # Slots: the hot path reads and bumps these on every event.
    __slots__ = (
        "_bucket_ms",
        "_clock",
        "_dirty",
        "_far",
        "_far_ids",
        "_guard",
        "_guard_changes",
        "_horizon",
        "_jump_ms",
        "_n_click",
        "_n_dup_click",
        "_n_dup_imp",
        "_n_future",
        "_n_imp",
        "_n_late_click",
        "_n_late_imp",
        "_n_neg",
        "_n_orphan",
        "_n_pending_click",
        "_n_pending_imp",
        "_n_pos",
        "_n_tomb",
        "_near",
        "_near_id",
        "_retention_ms",
        "_seq",
        "_tomb_q",
        "_users",
        "_window_ms",
    )

    def __init__(
        self,
        window_ms: int = 1_800_000,
        allowed_lateness_ms: int = 60_000,
        idle_timeout_ms: int = 30_000,
        tombstone_retention_ms: int | None = None,
        max_clock_jump_ms: int | None = None,
        clock_confirmations: int = 3,
    ) -> None:
        self._window_ms = _check_ms("window_ms", window_ms, 1)
        self._clock = Watermark(allowed_lateness_ms, idle_timeout_ms)
        # No guard (None): one event may move the clock any distance, as before the guard
        # existed; the runtimes turn it on (see ``ClockGuard``).
        self._guard = ClockGuard(max_clock_jump_ms or 0, clock_confirmations)
        self._jump_ms: float = math.inf if max_clock_jump_ms is None else max_clock_jump_ms
        if tombstone_retention_ms is None:
            tombstone_retention_ms = window_ms + allowed_lateness_ms
        self._retention_ms = _check_ms("tombstone_retention_ms", tombstone_retention_ms, 0)
        self._bucket_ms = max(1, window_ms // _BUCKETS_PER_WINDOW)
        self._reset()

    def _reset(self) -> None:
        self._users: dict[str, dict[str, list[Any]]] = {}
        # Calendar queue of entries: buckets up to ``_near_id`` are merged into the heap
        # ``_near``; later ones wait unordered in ``_far`` (id -> entries), their ids in
        # the heap ``_far_ids``.
        self._near: list[list[Any]] = []
        self._near_id: float = -math.inf
        self._far: dict[int, list[list[Any]]] = {}
        self._far_ids: list[int] = []
        # Tombstones whose deadline passed, in deadline order; each expires when the
        # watermark passes its deadline + retention.
        self._tomb_q: deque[list[Any]] = deque()
        self._dirty: set[str] = set()
        self._guard.drain()
        self._guard_changes = 0
        # Events with ts beyond this go to the clock guard; +inf until the clock has a value.
        self._horizon: float = math.inf
        self._seq = 0
        self._n_imp = 0
        self._n_dup_imp = 0
        self._n_late_imp = 0
        self._n_future = 0
        self._n_click = 0
        self._n_dup_click = 0
        self._n_late_click = 0
        self._n_orphan = 0
        self._n_pos = 0
        self._n_neg = 0
        self._n_pending_imp = 0
        self._n_pending_click = 0
        self._n_tomb = 0

    # -- configuration -------------------------------------------------------------------

    @property
    def window_ms(self) -> int:
        """The attribution window W."""
        return self._window_ms

    @property
    def allowed_lateness_ms(self) -> int:
        """How far the watermark trails the max event time (L)."""
        return self._clock.allowed_lateness_ms

    @property
    def idle_timeout_ms(self) -> int:
        """Wall milliseconds without events before the watermark follows wall time."""
        return self._clock.idle_timeout_ms

    @property
    def tombstone_retention_ms(self) -> int:
        """How long after its deadline a finalized key is remembered (R)."""
        return self._retention_ms

    def config(self) -> dict[str, int | None]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "window_ms": self._window_ms,
            "allowed_lateness_ms": self._clock.allowed_lateness_ms,
            "idle_timeout_ms": self._clock.idle_timeout_ms,
            "tombstone_retention_ms": self._retention_ms,
            "max_clock_jump_ms": None if self._jump_ms == math.inf else self._guard.max_jump_ms,
            "clock_confirmations": self._guard.confirmations,
        }

    # -- events (hot path) ---------------------------------------------------------------

    def add_impression(
        self, imp: Impression, wall_ms: int | None = None, ref: object = None
    ) -> JoinStep:
        """Join one impression; raises ``InvalidInputError`` (``late_impression``) if its
        attribution window closed before it arrived. ``ref`` is opaque, like ``add_click``'s:
        it comes back with the impression if the clock guard rejects it (``future``)."""
        ts = imp.ts
        if ts > self._horizon:
            return self._hold(imp, ref, wall_ms)
        step = self._add_impression(imp, wall_ms)
        if self._guard.held:
            return self._vote(ts, step, wall_ms)
        return step

    def add_click(self, click: Click, ref: object = None, wall_ms: int | None = None) -> JoinStep:
        """Join one click. ``ref`` is opaque and comes back with the click if it becomes an
        orphan (or the clock guard rejects it); it must be JSON-serializable if the state
        is exported, because it is persisted while the click waits."""
        ts = click.ts
        if ts > self._horizon:
            return self._hold(click, ref, wall_ms)
        step = self._add_click(click, ref, wall_ms)
        if self._guard.held:
            return self._vote(ts, step, wall_ms)
        return step

    def _add_impression(self, imp: Impression, wall_ms: int | None) -> JoinStep:
        self._n_imp += 1
        uid = imp.user_id
        iid = imp.impression_id
        ts = imp.ts
        users = self._users
        entries = users.get(uid, _NO_ENTRIES)
        entry = entries.get(iid)
        step = None
        if entry is not None and entry[_KIND] != _CLK:
            # Checked before lateness: a redelivered impression is a duplicate, not an error.
            self._n_dup_imp += 1
        else:
            window = self._window_ms
            deadline = ts + window
            clock = self._clock
            if deadline < clock.value:
                self._n_late_imp += 1
                raise InvalidInputError(
                    "late_impression",
                    f"impression ts {ts} is behind the watermark {clock.value}: its "
                    f"attribution window (window_ms={window}) closed at {deadline}",
                )
            seq = self._seq
            self._seq = seq + 1
            if entry is None:
                new = [deadline, seq, _IMP, uid, iid, imp, False, 0, None]
                if entries is _NO_ENTRIES:
                    entries = users[uid] = {}
                self._n_pending_imp += 1
            else:
                # A click came first and was waiting for this impression.
                entry[_KIND] = _DEAD
                click = entry[_PAYLOAD]
                cts = click.ts
                self._n_pending_click -= 1
                if cts - ts <= window:
                    new = [deadline, seq, _TOMB, uid, iid, None, False, 1, None]
                    self._n_tomb += 1
                    self._n_pos += 1
                    if cts > ts:
                        fb = new_feedback(imp, 1, cts, cts, cts - ts)
                    else:
                        fb = new_feedback(imp, 1, ts, cts, 0)
                    step = JoinStep([fb])
                else:
                    new = [deadline, seq, _IMP, uid, iid, imp, True, 0, None]
                    self._n_pending_imp += 1
                    self._n_late_click += 1
                    step = JoinStep(late_clicks=[click])
            entries[iid] = new
            # Scheduling, inlined (hot path): see _schedule.
            bucket_id = deadline // self._bucket_ms
            if bucket_id <= self._near_id:
                heappush(self._near, new)
            else:
                bucket = self._far.get(bucket_id)
                if bucket is None:
                    self._far[bucket_id] = [new]
                    heappush(self._far_ids, bucket_id)
                else:
                    bucket.append(new)
            self._dirty.add(uid)
        if self._clock.observe(ts, wall_ms):
            return self._advance(step)
        return _EMPTY if step is None else step

    def _add_click(self, click: Click, ref: object, wall_ms: int | None) -> JoinStep:
        self._n_click += 1
        uid = click.user_id
        iid = click.impression_id
        cts = click.ts
        users = self._users
        entries = users.get(uid, _NO_ENTRIES)
        entry = entries.get(iid)
        step = None
        if entry is None:
            deadline = cts + self._window_ms
            if deadline < self._clock.value:
                # Its wait is over before it began (or after finish()); no state to keep.
                self._n_orphan += 1
                step = JoinStep(orphans=[(click, ref)])
            else:
                seq = self._seq
                self._seq = seq + 1
                new = [deadline, seq, _CLK, uid, iid, click, ref, 0, None]
                if entries is _NO_ENTRIES:
                    entries = users[uid] = {}
                entries[iid] = new
                self._n_pending_click += 1
                self._schedule(new)
                self._dirty.add(uid)
        else:
            kind = entry[_KIND]
            if kind == _IMP:
                imp = entry[_PAYLOAD]
                ts = imp.ts
                if cts - ts <= self._window_ms:
                    # Stays scheduled at its deadline, where its retention will start.
                    entry[_KIND] = _TOMB
                    entry[_PAYLOAD] = None
                    entry[_CACHED] = None
                    entry[_LABEL] = 1
                    self._n_pending_imp -= 1
                    self._n_tomb += 1
                    self._n_pos += 1
                    if cts > ts:
                        fb = new_feedback(imp, 1, cts, cts, cts - ts)
                    else:
                        fb = new_feedback(imp, 1, ts, cts, 0)
                    step = JoinStep([fb])
                    self._dirty.add(uid)
                elif entry[_FLAG]:
                    self._n_dup_click += 1
                else:
                    entry[_FLAG] = True
                    self._n_late_click += 1
                    step = JoinStep(late_clicks=[click])
                    self._dirty.add(uid)
            elif kind == _TOMB:
                if entry[_LABEL] or entry[_FLAG]:
                    self._n_dup_click += 1
                else:
                    entry[_FLAG] = True
                    self._n_late_click += 1
                    step = JoinStep(late_clicks=[click])
                    self._dirty.add(uid)
            else:
                self._n_dup_click += 1
                deadline = cts + self._window_ms
                # Keep the earliest click while it can still wait: it is the one that can
                # be attributed to an impression that arrives later.
                if cts < entry[_PAYLOAD].ts and deadline >= self._clock.value:
                    entry[_KIND] = _DEAD
                    seq = self._seq
                    self._seq = seq + 1
                    new = [deadline, seq, _CLK, uid, iid, click, ref, 0, None]
                    entries[iid] = new
                    self._schedule(new)
                    self._dirty.add(uid)
        if self._clock.observe(cts, wall_ms):
            return self._advance(step)
        return _EMPTY if step is None else step

    def _schedule(self, entry: list[Any]) -> None:
        bucket_id = entry[_DEADLINE] // self._bucket_ms
        if bucket_id <= self._near_id:
            heappush(self._near, entry)
        else:
            bucket = self._far.get(bucket_id)
            if bucket is None:
                self._far[bucket_id] = [entry]
                heappush(self._far_ids, bucket_id)
            else:
                bucket.append(entry)

    # -- the clock guard -----------------------------------------------------------------

    def _hold(self, event: Impression | Click, ref: object, wall_ms: int | None) -> JoinStep:
        # It votes on the events held before it, then waits for its own votes.
        guard = self._guard
        confirmed, rejected = guard.vote(event.ts)
        guard.hold(event, ref)
        self._guard_changes += 1
        return self._settle(JoinStep.EMPTY, confirmed, rejected, wall_ms)

    def _vote(self, ts: int, step: JoinStep, wall_ms: int | None) -> JoinStep:
        confirmed, rejected = self._guard.vote(ts)
        if not confirmed and not rejected:
            return step
        return self._settle(step, confirmed, rejected, wall_ms)

    def _settle(
        self,
        step: JoinStep,
        confirmed: list[tuple[Impression | Click, object]],
        rejected: list[tuple[Impression | Click, object]],
        wall_ms: int | None,
    ) -> JoinStep:
        """Apply confirmed events (and every held one the clock jump brought within reach),
        report rejected ones; outputs in that order after the triggering event's own."""
        if not confirmed and not rejected:
            return step
        self._guard_changes += 1
        feedback = list(step.feedback)
        orphans = list(step.orphans)
        late = list(step.late_clicks)
        released: list[Impression | Click] = []
        future: list[tuple[Impression | Click, object]] = list(rejected)
        self._n_future += len(rejected)
        pending = list(confirmed)
        while pending:
            for event, ref in pending:
                try:
                    if isinstance(event, Impression):
                        out = self._add_impression(event, wall_ms)
                    else:
                        out = self._add_click(event, ref, wall_ms)
                except InvalidInputError:
                    # A late impression: possible only when a later-stamped held event was
                    # confirmed first and moved the clock past this one's window. Rare; it
                    # is reported with the rejected ones so that it is not lost.
                    future.append((event, ref))
                    self._n_future += 1
                    continue
                released.append(event)
                feedback.extend(out.feedback)
                orphans.extend(out.orphans)
                late.extend(out.late_clicks)
            pending = self._guard.take_until(self._horizon)
        return JoinStep(
            feedback or None, orphans or None, late or None, future or None, released or None
        )

    # -- time ----------------------------------------------------------------------------

    def tick(self, wall_ms: int) -> JoinStep:
        """Let the watermark follow wall time on an idle partition (the runtime's timer).

        Wall time corroborates a jump as well as later events do: held events the advanced
        clock brings within reach are applied (``released``), before the next advance could
        finalize their impressions without them."""
        if not self._clock.idle(wall_ms):
            return _EMPTY
        step = self._advance(None)
        if self._guard.held:
            reached = self._guard.take_until(self._horizon)
            if reached:
                return self._settle(step, reached, [], wall_ms)
        return step

    def finish(self) -> JoinStep:
        """End of input: watermark +inf; flushes every pending label and waiting click and
        drops the tombstones, so no state is left.

        Events still held by the clock guard are applied first, in ts order (arrival order
        among equal ts), and come back in ``released``: no later event can vote on them, and
        at the end the watermark goes to +inf for everyone anyway, so applied in ts order
        none of them moves the clock past an event stamped before it. Rejecting them instead
        would dead-letter a genuine last click that came after a quiet spell (found by the
        replay fuzz test: a click 633 s after a stream's last event)."""
        held = self._guard.drain()
        first = JoinStep.EMPTY
        if held:
            held.sort(key=lambda pair: pair[0].ts)  # stable: arrival order among equal ts
            first = self._settle(JoinStep.EMPTY, held, [], None)
        self._clock.finish()
        step = self._advance(None)
        if not first:
            return step
        return JoinStep(
            [*first.feedback, *step.feedback] or None,
            [*first.orphans, *step.orphans] or None,
            [*first.late_clicks, *step.late_clicks] or None,
            list(first.future) or None,
            list(first.released) or None,
        )

    @property
    def guard_changes(self) -> int:
        """How many times the set of held events changed (not persisted): a runtime that
        persists ``export_clock`` less often than users writes it now when this moved, since
        held events live only there."""
        return self._guard_changes

    @property
    def horizon(self) -> float:
        """The clock guard's bound: an event with a larger ts is held back (+inf: no guard,
        no clock yet, or finished)."""
        return self._horizon

    @property
    def watermark(self) -> float:
        """The current watermark (-inf before any event, +inf after ``finish()``)."""
        return float(self._clock.value)

    def _advance(self, step: JoinStep | None) -> JoinStep:
        wm = self._clock.value
        # Every watermark move comes through here: ``wm + L`` is the max ts (or the idle
        # advance, which already follows wall time), and the guard's bound counts from it.
        self._horizon = wm + self._clock.allowed_lateness_ms + self._jump_ms
        near = self._near
        far_ids = self._far_ids
        queue = self._tomb_q
        retention = self._retention_ms
        bucket_ms = self._bucket_ms
        if not (
            (near and near[0][_DEADLINE] < wm)
            or (far_ids and far_ids[0] * bucket_ms < wm)
            or (queue and queue[0][_DEADLINE] + retention < wm)
        ):
            return _EMPTY if step is None else step
        # The event's own output comes first; its lists are fresh, so they can be extended.
        feedback: list[Feedback] = [] if step is None or not step.feedback else step.feedback
        orphans: list[tuple[Click, object]] = (
            [] if step is None or not step.orphans else step.orphans
        )
        users = self._users
        dirty = self._dirty
        n_negative = 0
        n_expired = 0
        while True:
            while near and near[0][_DEADLINE] < wm:
                entry = heappop(near)
                kind = entry[_KIND]
                if kind == _IMP:
                    feedback.append(new_feedback(entry[_PAYLOAD], 0, entry[_DEADLINE], None, None))
                    entry[_KIND] = _TOMB
                    entry[_PAYLOAD] = None
                    entry[_CACHED] = None
                    n_negative += 1
                    queue.append(entry)
                    dirty.add(entry[_USER])
                elif kind == _TOMB:
                    # A positive finalized early: its retention runs from the deadline, like
                    # a negative's, which keeps the queue in deadline order.
                    queue.append(entry)
                elif kind == _CLK:
                    uid = entry[_USER]
                    entries = users[uid]
                    del entries[entry[_IID]]
                    if not entries:
                        del users[uid]
                    entry[_KIND] = _DEAD
                    orphans.append((entry[_PAYLOAD], entry[_FLAG]))
                    self._n_orphan += 1
                    self._n_pending_click -= 1
                    dirty.add(uid)
            # The next bucket may hold due entries: order it and go on from there. ``near``
            # is empty now: an entry left in it is not due, and its bucket ends before the
            # next one starts, so that bucket would not be due either.
            if far_ids and far_ids[0] * bucket_ms < wm:
                bucket_id = heappop(far_ids)
                self._near_id = bucket_id
                near = self._near = self._far.pop(bucket_id)
                heapify(near)
                continue
            break
        while queue and queue[0][_DEADLINE] + retention < wm:
            entry = queue.popleft()
            if entry[_KIND] != _TOMB:
                continue
            uid = entry[_USER]
            entries = users[uid]
            del entries[entry[_IID]]
            if not entries:
                del users[uid]
            entry[_KIND] = _DEAD
            n_expired += 1
            dirty.add(uid)
        self._n_neg += n_negative
        self._n_pending_imp -= n_negative
        self._n_tomb += n_negative - n_expired
        return JoinStep(
            feedback or None, orphans or None, None if step is None else step.late_clicks
        )

    # -- observation ---------------------------------------------------------------------

    @property
    def stats(self) -> JoinStats:
        """A snapshot of the counters and state sizes."""
        return JoinStats(
            impressions=self._n_imp,
            duplicate_impressions=self._n_dup_imp,
            late_impressions=self._n_late_imp,
            clicks=self._n_click,
            duplicate_clicks=self._n_dup_click,
            late_clicks=self._n_late_click,
            orphan_clicks=self._n_orphan,
            feedback_positive=self._n_pos,
            feedback_negative=self._n_neg,
            pending_impressions=self._n_pending_imp,
            pending_clicks=self._n_pending_click,
            tombstones=self._n_tomb,
            held_events=len(self._guard),
            future_events=self._n_future,
        )

    def state_size(self) -> int:
        """Number of keys held: pending impressions, waiting clicks and tombstones."""
        return self._n_pending_imp + self._n_pending_click + self._n_tomb

    def _scheduled(self) -> int:
        # Entries in the calendar and retention queues, stale ones included (for tests).
        far = sum(len(bucket) for bucket in self._far.values())
        return len(self._near) + far + len(self._tomb_q)

    # -- persistence ---------------------------------------------------------------------

    def dirty_users(self) -> set[str]:
        """Users whose state changed since the last call (the call clears the set)."""
        dirty = self._dirty
        self._dirty = set()
        return dirty

    def export_user(self, user_id: str) -> dict[str, Any] | None:
        """One user's state as a JSON-ready dict, or None when the user has none left.

        ``impressions``: ``{"seq", "imp", "late"}``; ``clicks``: ``{"seq", "click", "ref"}``;
        ``tombstones``: ``[seq, impression_id, ts, label, late]``; each list in arrival
        order. The size grows with the user's events in the last ``2W + 2L`` of event
        time, so the runtime should write a dirty user once per batch, not per event.
        The ``imp`` and ``click`` dicts are shared with the join (each is converted once
        and reused by later exports): read them, serialize them, never change them.
        """
        entries = self._users.get(user_id)
        if not entries:
            return None
        impressions: list[dict[str, Any]] = []
        clicks: list[dict[str, Any]] = []
        tombstones: list[list[Any]] = []
        window = self._window_ms
        # Sorted by seq so the same state always serializes to the same bytes.
        for entry in sorted(entries.values(), key=_by_seq):
            kind = entry[_KIND]
            seq = entry[_SEQ]
            if kind == _IMP:
                payload = entry[_CACHED]
                if payload is None:
                    payload = entry[_CACHED] = entry[_PAYLOAD].to_dict()
                impressions.append({"seq": seq, "imp": payload, "late": entry[_FLAG]})
            elif kind == _CLK:
                payload = entry[_CACHED]
                if payload is None:
                    payload = entry[_CACHED] = entry[_PAYLOAD].to_dict()
                clicks.append({"seq": seq, "click": payload, "ref": entry[_FLAG]})
            else:
                # Positional: a heavy user keeps many tombstones, and the Kafka runtime
                # rewrites the whole user value on every change.
                tombstones.append(
                    [
                        seq,
                        entry[_IID],
                        entry[_DEADLINE] - window,
                        entry[_LABEL],
                        int(entry[_FLAG]),
                    ]
                )
        return {
            "v": 1,
            "user_id": user_id,
            "impressions": impressions,
            "clicks": clicks,
            "tombstones": tombstones,
        }

    def export_clock(self) -> dict[str, Any]:
        """The partition-wide part: watermark, max ts, arrival sequence, counters and the
        events the clock guard holds (``held``: their refs must be JSON-ready)."""
        clock = self._clock.to_dict()
        return {
            "v": 1,
            "watermark": clock["watermark"],
            "max_ts": clock["max_ts"],
            "seq": self._seq,
            "counters": {
                "impressions": self._n_imp,
                "duplicate_impressions": self._n_dup_imp,
                "late_impressions": self._n_late_imp,
                "clicks": self._n_click,
                "duplicate_clicks": self._n_dup_click,
                "late_clicks": self._n_late_click,
                "orphan_clicks": self._n_orphan,
                "feedback_positive": self._n_pos,
                "feedback_negative": self._n_neg,
                "future_events": self._n_future,
            },
            "held": self._guard.to_dict(),
        }

    def restore(self, clock: dict[str, Any] | None, users: Iterable[dict[str, Any] | None]) -> None:
        """Replace the whole state by exported parts (``export_clock`` and ``export_user``
        dicts, in any order; None items are skipped). The schedule is rebuilt, so the join
        continues exactly as the exporting one would have. Unreadable parts raise
        ``StateError``."""
        try:
            self._restore(clock, users)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed join state: {exc!r}") from exc

    def _restore(
        self, clock: dict[str, Any] | None, users: Iterable[dict[str, Any] | None]
    ) -> None:
        self._reset()
        if clock is not None:
            if clock.get("v") != 1:
                raise StateError(f"unsupported join clock version {clock.get('v')!r}; want 1")
            self._clock.load({"v": 1, "watermark": clock["watermark"], "max_ts": clock["max_ts"]})
            self._seq = int(clock["seq"])
            counters = clock["counters"]
            self._n_imp = counters["impressions"]
            self._n_dup_imp = counters["duplicate_impressions"]
            self._n_late_imp = counters["late_impressions"]
            self._n_click = counters["clicks"]
            self._n_dup_click = counters["duplicate_clicks"]
            self._n_late_click = counters["late_clicks"]
            self._n_orphan = counters["orphan_clicks"]
            self._n_pos = counters["feedback_positive"]
            self._n_neg = counters["feedback_negative"]
            # Absent in state written before the clock guard existed.
            self._n_future = counters.get("future_events", 0)
            self._guard.load(clock.get("held", []))
        else:
            self._clock.load({"v": 1, "watermark": None, "max_ts": None})
        wm = self._clock.value
        if wm > -math.inf:
            self._horizon = wm + self._clock.allowed_lateness_ms + self._jump_ms
        window = self._window_ms
        retired: list[list[Any]] = []
        next_seq = self._seq
        for data in users:
            if data is None:
                continue
            if data.get("v") != 1:
                raise StateError(f"unsupported join user state version {data.get('v')!r}")
            uid = data["user_id"]
            entries: dict[str, list[Any]] = {}
            for item in data["impressions"]:
                imp = Impression.from_dict(item["imp"])
                entry = [imp.ts + window, item["seq"], _IMP, uid, imp.impression_id, imp]
                entry += [bool(item["late"]), 0, None]
                entries[imp.impression_id] = entry
                self._schedule(entry)
                self._n_pending_imp += 1
            for item in data["clicks"]:
                click = Click.from_dict(item["click"])
                entry = [click.ts + window, item["seq"], _CLK, uid, click.impression_id, click]
                entry += [item["ref"], 0, None]
                entries[click.impression_id] = entry
                self._schedule(entry)
                self._n_pending_click += 1
            for seq, iid, ts, label, late in data["tombstones"]:
                entry = [ts + window, seq, _TOMB, uid, iid, None, bool(late), label, None]
                entries[iid] = entry
                # Mirror where the original holds it: a positive tombstone whose deadline
                # has not passed is still scheduled, to start its retention then.
                if entry[_DEADLINE] < wm:
                    retired.append(entry)
                else:
                    self._schedule(entry)
                self._n_tomb += 1
            for entry in entries.values():
                next_seq = max(next_seq, entry[_SEQ] + 1)
            if entries:
                self._users[uid] = entries
        self._seq = next_seq
        retired.sort()
        self._tomb_q.extend(retired)

    def to_dict(self) -> dict[str, Any]:
        """The whole state (hyper-parameters, clock and every user), JSON-ready."""
        return {
            "v": 1,
            "config": self.config(),
            "clock": self.export_clock(),
            "users": [self.export_user(uid) for uid in sorted(self._users)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionJoin:
        """Inverse of ``to_dict``."""
        if data.get("v") != 1:
            raise StateError(f"unsupported join state version {data.get('v')!r}; want 1")
        out = cls(**data["config"])
        out.restore(data["clock"], data["users"])
        return out
