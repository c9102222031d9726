"""One partition's core: decoded inputs in, every output out (DESIGN §2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from worker.core.calibrators.context_features import check_fields
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.pipeline.feedback_stage import MONITOR_KEY, FeedbackStage
from worker.core.pipeline.input_batch import IMPRESSION, REJECTED, InputBatch
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.pipeline.outputs import Outputs, Rejection
from worker.core.policy import PolicyConfig, RecalibrationPolicy
from worker.core.records.dead_letter import future_ts_error, orphan_click_error
from worker.core.records.impression import Impression
from worker.core.records.timefmt import iso_utc_ms

_NEG_INF = float("-inf")

#: Record keys of the pipeline's own state; the stage's are in ``FeedbackStage``.
CONFIG_KEY = "config"
CLOCK_KEY = "clock"
JOIN_PREFIX = "join:"
_FED = (CLOCK_KEY, MONITOR_KEY)


@dataclass(frozen=True)
class PipelineConfig:
    """The hyper-parameters of one partition's pipeline: the join's, the monitor's and the
    policy's (validated by their own constructors)."""

    window_ms: int = 1_800_000
    allowed_lateness_ms: int = 60_000
    idle_timeout_ms: int = 30_000
    #: How far one event may move the partition's clock before later events must confirm
    #: it (``ClockGuard``); None: the attribution window.
    max_clock_jump_ms: int | None = None
    clock_confirmations: int = 3
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: The impression ``context`` fields the decoder keeps (``InputDecoder``), the inputs of
    #: the ``contextual`` calibrator; empty: ``context`` is not read.
    context_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "context_fields", check_fields("context_fields", self.context_fields)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_ms": self.window_ms,
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "idle_timeout_ms": self.idle_timeout_ms,
            "max_clock_jump_ms": self.max_clock_jump_ms,
            "clock_confirmations": self.clock_confirmations,
            "monitor": self.monitor.to_dict(),
            "policy": self.policy.to_dict(),
            "context_fields": list(self.context_fields),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Inverse of ``to_dict``; unknown or invalid settings raise ``ConfigError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown pipeline settings: {unknown}")
        kwargs = dict(data)
        if "monitor" in kwargs:
            kwargs["monitor"] = MonitorConfig.from_dict(kwargs["monitor"])
        if "policy" in kwargs:
            kwargs["policy"] = PolicyConfig.from_dict(kwargs["policy"])
        return cls(**kwargs)


class Pipeline:
    """The join, then everything after it, for one partition (DESIGN §2, §4–§7).

    ``process(batch)`` takes an ``InputBatch`` (decoded impressions and clicks, and the
    inputs the decoder rejected, in arrival order) and returns one ``Outputs``: feedback,
    dead letters, calibrator versions, alerts, tier changes. ``finish()`` ends the input
    (watermark +inf: every pending label matures) and adds the final posterior snapshots;
    ``advance(wall_ms)`` lets an idle partition's watermark follow the wall clock.

    **Batch cuts never change the outputs**: the pipeline works event by event in input
    order and everything that happens at a particular event (a label maturing, a detector
    alarm, a refit) happens inside it, so the concatenated outputs of any cutting of the
    same input are identical (a property test checks this, byte for byte).

    **Clock.** The core reads no clock. The partition's event-time clock is the largest
    ``ts`` seen (and, once labels mature past it at the end, their ``label_ts``); version
    and alert messages carry it as ``created_at`` (ISO 8601 UTC), which keeps replays
    deterministic. A runtime that wants the wall clock there restamps at its sink.

    **State** is a set of JSON records under string keys, made for a compacted changelog
    (key = record key, value = record, None = delete), so that one persisted batch writes
    what it changed: O(users touched + models x segments), not O(users).

    - ``config``: the ``PipelineConfig`` (written once, with the first records);
    - ``clock``: the join's clock (watermark, counters, held events) and the partition clock;
    - ``join:<user_id>``: the join's pending impressions, clicks and tombstones of a user;
    - ``monitor``: what is bounded by models x scopes: detectors, alerts, published
      global/segment versions, the policy's scopes (sketches, rings), the posterior
      store's global and segment rates, counters;
    - ``post:<user_id>``: the posterior store's user (pooled and per-arm posteriors, tier,
      LRU place, pending snapshot marks); ``puser:<user_id>``: the policy's user across
      models (buffers, LRU places, user versions); ``parm:<arm>``: an arm's population
      posterior and per-segment rates; ``pevict:<user_id>``: an evicted user's tombstone
      keys not yet drained (see ``FeedbackStage``).

    ``changed_keys()`` names the keys changed since the last ``mark_persisted()`` (cheap:
    the owners note users as they change them, nothing is scanned); ``export(key)`` gives
    a record's current value, None for a delete (an evicted user, a user whose join state
    is empty). The Kafka runtime: process, ``changed_keys()``, ``export`` each, produce,
    ``mark_persisted()``, commit. ``mark_persisted()`` forgets exactly the keys the last
    ``changed_keys()`` returned: a change made after that call is reported again, so
    nothing is lost whatever runs in between. ``Pipeline.from_records(records)`` rebuilds
    the pipeline from the latest record of every key (what a compacted changelog
    restores) and continues byte for byte as the one that exported them. ``records()`` is
    every record (a full scan); ``snapshot()`` is ``{"v": 2, "records": records()}`` and
    marks everything persisted, ``Pipeline.restore(snapshot)`` its inverse.

    >>> from worker.core.records.impression import Impression
    >>> from worker.core.records.click import Click
    >>> pipe = Pipeline(PipelineConfig(window_ms=60_000, allowed_lateness_ms=0))
    >>> batch = InputBatch()
    >>> batch.add_impression(Impression("i1", "u1", "it", 1_000, "m", 0.2, -1.386, "web",
    ...                                 "news", None), ref=0)
    >>> batch.add_click(Click("i1", "u1", 5_000, None), ref=1)
    >>> batch.add_click(Click("i9", "u1", 6_000, None), ref=2)
    >>> out = pipe.process(batch)
    >>> [(fb.impression.impression_id, fb.label, fb.delay_ms) for fb in out.feedback]
    [('i1', 1, 4000)]
    >>> end = pipe.finish()
    >>> [(d.ref, d.reason) for d in end.dead_letters]
    [(2, 'orphan_click')]
    >>> Pipeline.restore(pipe.snapshot()).snapshot() == pipe.snapshot()
    True
    >>> fresh = Pipeline(PipelineConfig())
    >>> fresh.changed_keys()
    ['clock', 'config', 'monitor']
    >>> fresh.mark_persisted()
    >>> fresh.changed_keys()
    []
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        if config is None:
            config = PipelineConfig()
        if not isinstance(config, PipelineConfig):
            raise ConfigError(f"config must be a PipelineConfig; got {type(config).__name__}")
        self._cfg = config
        self._join = AttributionJoin(
            window_ms=config.window_ms,
            allowed_lateness_ms=config.allowed_lateness_ms,
            idle_timeout_ms=config.idle_timeout_ms,
            max_clock_jump_ms=(
                config.window_ms if config.max_clock_jump_ms is None else config.max_clock_jump_ms
            ),
            clock_confirmations=config.clock_confirmations,
        )
        self._monitor = FeedbackStage(config.monitor, RecalibrationPolicy(config.policy))
        self._max_ts = _NEG_INF
        self._clock_ts = float("nan")
        self._clock_text = ""
        # Keys of the pipeline's own records changed since ``changed_keys`` last collected
        # them (a new pipeline's were never written) ...
        self._noted: set[str] = {CONFIG_KEY, *_FED}
        # ... and every key collected since the last ``mark_persisted``.
        self._changed: set[str] = set()

    # ------------------------------------------------------------------ read-only

    @property
    def config(self) -> PipelineConfig:
        return self._cfg

    @property
    def join(self) -> AttributionJoin:
        """The attribution join (read it; feed the pipeline, not the join)."""
        return self._join

    @property
    def monitor(self) -> FeedbackStage:
        """Everything after the join (read it; feed the pipeline, not the monitor)."""
        return self._monitor

    @property
    def clock_ms(self) -> float:
        """The partition's event-time clock (-inf before the first event)."""
        return self._max_ts

    # ------------------------------------------------------------------ inputs

    def process(self, batch: InputBatch) -> Outputs:
        """Run one batch through the join and the monitor; see the class docstring."""
        out = Outputs()
        join = self._join
        stage = self._monitor
        wall_ms = batch.wall_ms
        if any(kind != REJECTED for kind in batch.kinds):
            # Every accepted event moves the join's clock record and reaches the monitor
            # (unless the clock guard holds it: a spurious write of a bounded record).
            self._noted.update(_FED)
        # Only ``stage.tick`` moves the next tick time: read once, and again after a tick.
        next_tick = stage.next_tick_ms
        for kind, event, ref in zip(batch.kinds, batch.events, batch.refs, strict=True):
            if kind == REJECTED:
                key, reason, error = event
                self._reject(out, ref, key, reason, error)
                continue
            # An event the join's clock guard holds back reaches the clock and the stage
            # only when the join releases it (``_emit``): one far-future event moves nothing.
            ts = event.ts
            held = ts > join.horizon
            if not held and ts > self._max_ts:
                self._max_ts = ts
            if kind == IMPRESSION:
                try:
                    step = join.add_impression(event, wall_ms, ref=ref)
                except InvalidInputError as exc:
                    self._reject(out, ref, event.user_id, exc.reason, str(exc))
                    continue
                if not held:
                    stage.on_impression(event, self._created_at(), out)
            else:
                if not held:
                    stage.on_click(event, self._created_at())
                step = join.add_click(event, ref=ref, wall_ms=wall_ms)
            if step:
                self._emit(step, out)
            if self._max_ts >= next_tick:
                out.extend(stage.tick(int(self._max_ts), self._created_at()))
                next_tick = stage.next_tick_ms
        return out

    def advance(self, wall_ms: int) -> Outputs:
        """An idle partition: let the watermark follow the wall clock (DESIGN §4)."""
        out = Outputs()
        before = self._join.watermark
        step = self._join.tick(wall_ms)
        if step:
            self._noted.update(_FED)
            self._emit(step, out)
        elif self._join.watermark != before:
            self._noted.add(CLOCK_KEY)
        return out

    def finish(self) -> Outputs:
        """End of input: every pending label matures, then the final posterior snapshots.

        No stall check after the join's finish: labels mature up to a window past the last
        input, where no click can follow."""
        out = Outputs()
        self._noted.update(_FED)
        self._emit(self._join.finish(), out)
        out.extend(self._monitor.finish(None, self._created_at()))
        return out

    def drain_posteriors(self) -> list[dict[str, Any]]:
        """Snapshots of the (user, arm) pairs updated since the last drain (for a batched
        compacted topic), read at the partition's clock."""
        return self._monitor.drain_posteriors(_clock_ms(self._max_ts))

    # ------------------------------------------------------------------ internals

    def _created_at(self) -> str:
        # Memoised: several monitor calls per event share one clock value.
        if self._max_ts != self._clock_ts:
            self._clock_ts = self._max_ts
            self._clock_text = iso_utc_ms(_clock_ms(self._max_ts))
        return self._clock_text

    def _reject(self, out: Outputs, ref: Any, key: str | None, reason: str, error: str) -> None:
        out.dead_letters.append(Rejection(ref, key, reason, error, _clock_ms(self._max_ts)))

    def _emit(self, step: JoinStep, out: Outputs) -> None:
        stage = self._monitor
        for event in step.released:
            # Held by the clock guard until later events confirmed its jump.
            if event.ts > self._max_ts:
                self._max_ts = event.ts
            if isinstance(event, Impression):
                stage.on_impression(event, self._created_at(), out)
            else:
                stage.on_click(event, self._created_at())
        for fb in step.feedback:
            out.feedback.append(fb)
            # Labels finalised by finish() lie beyond the last input's ts; the clock follows
            # them so a version's created_at is never before its event_ts.
            if fb.label_ts > self._max_ts:
                self._max_ts = fb.label_ts
            stage.on_feedback(fb, self._created_at(), out)
        for click, ref in step.orphans:
            self._reject(out, ref, click.user_id, "orphan_click", orphan_click_error(click))
        for event, ref in step.future:
            self._reject(out, ref, event.user_id, "future_ts", future_ts_error(event))
        for click in step.late_clicks:
            stage.on_late_click(click, self._created_at(), out)

    # ------------------------------------------------------------------ state

    def changed_keys(self) -> list[str]:
        """Record keys changed since the last ``mark_persisted()``, sorted (see the class
        docstring). Cheap: it collects the owners' change sets, it scans nothing."""
        changed = self._changed
        changed.update(self._noted)
        self._noted.clear()
        changed.update([JOIN_PREFIX + uid for uid in self._join.dirty_users()])
        changed.update(self._monitor.dirty_keys())
        return sorted(changed)

    def mark_persisted(self) -> None:
        """The records of the keys the last ``changed_keys()`` returned were persisted
        (as ``export`` gave them then or later): forget those keys. Changes made since
        that call stay pending."""
        self._changed.clear()

    def export(self, key: str) -> dict[str, Any] | None:
        """The current record of ``key`` (JSON-ready); None means "delete it". An unknown
        key raises ``StateError``."""
        if key == CLOCK_KEY:
            return {"v": 1, "join": self._join.export_clock(), "max_ts": _encode(self._max_ts)}
        if key.startswith(JOIN_PREFIX):
            return self._join.export_user(key[len(JOIN_PREFIX):])
        if key == CONFIG_KEY:
            return {"v": 1, **self._cfg.to_dict()}
        return self._monitor.export(key)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record, by key (a full scan; changes nothing)."""
        join = self._join.to_dict()
        out: dict[str, dict[str, Any]] = {
            CONFIG_KEY: {"v": 1, **self._cfg.to_dict()},
            CLOCK_KEY: {"v": 1, "join": join["clock"], "max_ts": _encode(self._max_ts)},
        }
        for user in join["users"]:
            out[JOIN_PREFIX + user["user_id"]] = user
        out.update(self._monitor.records())
        return out

    @classmethod
    def from_records(cls, records: Mapping[str, dict[str, Any] | None]) -> Pipeline:
        """A pipeline continuing exactly where the one that exported ``records`` stood:
        ``records`` maps every key to its latest exported record (None, a delete, is
        skipped), as a compacted changelog restores them; ``config`` must be among them.
        Nothing is changed afterwards. Malformed records raise ``StateError``."""
        try:
            data = dict(records[CONFIG_KEY] or {})
            if data.pop("v", None) != 1:
                raise StateError("the config record is missing or of an unknown version")
            cfg = PipelineConfig.from_dict(data)
            pipe = cls(cfg)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed pipeline config record: {exc!r}") from exc
        clock = records.get(CLOCK_KEY)
        users = []
        stage: dict[str, dict[str, Any] | None] = {}
        try:
            for key, value in records.items():
                if value is None or key in (CONFIG_KEY, CLOCK_KEY):
                    continue
                if key.startswith(JOIN_PREFIX):
                    if value["user_id"] != key[len(JOIN_PREFIX):]:
                        raise ValueError(f"record {key!r} names {value['user_id']!r}")
                    users.append(value)
                else:
                    stage[key] = value
            if clock is not None and clock.get("v") != 1:
                raise ValueError(f"unsupported clock record version {clock.get('v')!r}")
            pipe._max_ts = _NEG_INF if clock is None else _decode(clock["max_ts"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed pipeline state: {exc!r}") from exc
        pipe._join.restore(None if clock is None else clock["join"], users)
        pipe._monitor = FeedbackStage.from_records(stage, cfg.monitor, cfg.policy)
        pipe._noted.clear()
        pipe._join.dirty_users()
        return pipe

    def snapshot(self) -> dict[str, Any]:
        """The whole partition state, JSON-ready: ``{"v": 2, "records": records()}``;
        marks everything persisted (everything is in it)."""
        self.changed_keys()
        self.mark_persisted()
        return {"v": 2, "records": self.records()}

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Pipeline:
        """A pipeline continuing exactly where the one that took ``state`` stood."""
        if not isinstance(state, Mapping) or state.get("v") != 2:
            got = state.get("v") if isinstance(state, Mapping) else type(state).__name__
            raise StateError(f"unsupported pipeline state version {got!r}; want 2")
        return cls.from_records(state["records"])


def _clock_ms(ts: float) -> int:
    """The clock as integer epoch ms for stamps (the epoch before the first event)."""
    return 0 if ts == _NEG_INF else int(ts)


def _encode(ts: float) -> float | None:
    return None if ts == _NEG_INF else ts


def _decode(ts: float | None) -> float:
    return _NEG_INF if ts is None else ts
