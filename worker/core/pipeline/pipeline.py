"""One partition's core: decoded inputs in, every output out (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import ConfigError, InvalidInputError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.pipeline.feedback_stage import FeedbackStage
from worker.core.pipeline.input_batch import IMPRESSION, REJECTED, InputBatch
from worker.core.pipeline.monitor_config import MonitorConfig
from worker.core.pipeline.outputs import Outputs, Rejection
from worker.core.policy import PolicyConfig, RecalibrationPolicy
from worker.core.records.dead_letter import future_ts_error, orphan_click_error
from worker.core.records.impression import Impression
from worker.core.records.timefmt import iso_utc_ms

_NEG_INF = float("-inf")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_ms": self.window_ms,
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "idle_timeout_ms": self.idle_timeout_ms,
            "max_clock_jump_ms": self.max_clock_jump_ms,
            "clock_confirmations": self.clock_confirmations,
            "monitor": self.monitor.to_dict(),
            "policy": self.policy.to_dict(),
        }


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

    **State.** ``snapshot()`` / ``Pipeline.restore(state)`` hold the whole partition
    (join, monitor, policy, posteriors, clock); ``changed_keys()`` names the records changed
    since the last snapshot (``join:<user_id>`` per user of the join, ``clock``,
    ``monitor``) and ``export(key)`` gives one of them, for incremental persistence.

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
        self._changed: set[str] = set()
        self._touched = False

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
        self._touched = True
        for kind, event, ref in zip(batch.kinds, batch.events, batch.refs, strict=True):
            if kind == REJECTED:
                key, reason, error = event
                self._reject(out, ref, key, reason, error)
                continue
            # An event the join's clock guard holds back reaches the clock and the stage
            # only when the join releases it (``_emit``): one far-future event moves nothing.
            held = event.ts > join.horizon
            if not held and event.ts > self._max_ts:
                self._max_ts = event.ts
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
            if self._max_ts >= stage.next_tick_ms:
                out.extend(stage.tick(int(self._max_ts), self._created_at()))
        return out

    def advance(self, wall_ms: int) -> Outputs:
        """An idle partition: let the watermark follow the wall clock (DESIGN §4)."""
        out = Outputs()
        step = self._join.tick(wall_ms)
        if step:
            self._touched = True
            self._emit(step, out)
        return out

    def finish(self) -> Outputs:
        """End of input: every pending label matures, then the final posterior snapshots.

        No stall check after the join's finish: labels mature up to a window past the last
        input, where no click can follow."""
        out = Outputs()
        self._touched = True
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
        """Records changed since the last ``snapshot()`` (sorted; see the class docstring)."""
        self._changed.update(f"join:{uid}" for uid in self._join.dirty_users())
        keys = set(self._changed)
        if self._touched:
            keys.update(("clock", "monitor"))
        return sorted(keys)

    def export(self, key: str) -> dict[str, Any] | None:
        """One record named by ``changed_keys()``; None means "delete it"."""
        if key == "clock":
            return {
                "v": 1, "config": self._join_config(), "join": self._join.export_clock(),
                "max_ts": _encode(self._max_ts),
            }
        if key == "monitor":
            return self._monitor.to_dict()
        if key.startswith("join:"):
            return self._join.export_user(key[len("join:"):])
        raise ConfigError(f"unknown state key {key!r}")

    def snapshot(self) -> dict[str, Any]:
        """The whole partition state, JSON-ready (``"v": 1``); resets ``changed_keys``."""
        self._join.dirty_users()
        self._changed.clear()
        self._touched = False
        return {
            "v": 1,
            "config": self._join_config(),
            "max_ts": _encode(self._max_ts),
            "join": self._join.to_dict(),
            "monitor": self._monitor.to_dict(),
        }

    def mark_persisted(self) -> None:
        """The records named by ``changed_keys()`` were persisted: start a new change set."""
        self._join.dirty_users()
        self._changed.clear()
        self._touched = False

    @classmethod
    def from_records(cls, records: dict[str, Any]) -> Pipeline:
        """A pipeline continuing exactly where the one whose ``export`` ed records these are
        stood (the latest record per key, deleted keys absent)."""
        clock = records["clock"]
        monitor = FeedbackStage.from_dict(records["monitor"])
        cfg = PipelineConfig(
            monitor=monitor.config, policy=monitor.policy.config, **clock["config"]
        )
        pipe = cls(cfg)
        pipe._monitor = monitor
        pipe._join.restore(
            clock["join"], (v for k, v in records.items() if k.startswith("join:"))
        )
        pipe._max_ts = _decode(clock["max_ts"])
        pipe._join.dirty_users()
        return pipe

    def _join_config(self) -> dict[str, Any]:
        return {
            "window_ms": self._cfg.window_ms,
            "allowed_lateness_ms": self._cfg.allowed_lateness_ms,
            "idle_timeout_ms": self._cfg.idle_timeout_ms,
            "max_clock_jump_ms": self._cfg.max_clock_jump_ms,
            "clock_confirmations": self._cfg.clock_confirmations,
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Pipeline:
        """A pipeline continuing exactly where the one that took ``state`` stood."""
        if state.get("v") != 1:
            raise ConfigError(f"unsupported pipeline state version {state.get('v')!r}; want 1")
        monitor = FeedbackStage.from_dict(state["monitor"])
        cfg = PipelineConfig(
            monitor=monitor.config, policy=monitor.policy.config, **state["config"]
        )
        pipe = cls(cfg)
        pipe._join = AttributionJoin.from_dict(state["join"])
        pipe._monitor = monitor
        pipe._max_ts = _decode(state["max_ts"])
        pipe._join.dirty_users()
        return pipe


def _clock_ms(ts: float) -> int:
    """The clock as integer epoch ms for stamps (the epoch before the first event)."""
    return 0 if ts == _NEG_INF else int(ts)


def _encode(ts: float) -> float | None:
    return None if ts == _NEG_INF else ts


def _decode(ts: float | None) -> float:
    return _NEG_INF if ts is None else ts
