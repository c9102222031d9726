"""Configuration: `RECAL_*` environment variables, the same settings as CLI flags (DESIGN §8).

Precedence: CLI flag > environment variable > config file (`--config FILE`, JSON with the
setting names as keys) > default. Invalid values fail fast with a message naming the setting,
and `recal` exits 2. `describe()` gives the settings for the start-up log with secrets masked.

Two kinds of settings, each declared once:

- the process's own (Kafka, security, join, web): the fields of `Settings`, with their help
  text in the field metadata;
- the core's hyper-parameters, *derived* from the core config classes so that a knob added
  there is configurable with no second declaration: every field of `PolicyConfig` as
  `policy_<field>`, every scalar field of `MonitorConfig` as `monitor_<field>`, every
  constructor argument of a monitor component (`MonitorConfig`'s keyword-argument knobs,
  `worker.core.pipeline.monitor_config.COMPONENTS`) as `<knob>_<argument>` (e.g.
  `stall_window_ms`, `posteriors_prior_strength`), and each alert kind's severity as
  `severity_<kind>`. Their values live in `Settings.knobs`; `policy_config()` and
  `monitor_config()` build the validated core objects (the core constructors validate; a bad
  value is reported against the variable or flag that set it).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from worker.core.alerts import KINDS, SEVERITIES
from worker.core.calibrators.context_features import check_fields
from worker.core.errors import ConfigError
from worker.core.pipeline.monitor_config import COMPONENTS, PINNED, MonitorConfig
from worker.core.pipeline.pipeline import PipelineConfig
from worker.core.policy import PolicyConfig

log = logging.getLogger(__name__)

_SECRET_MASK = "***"
#: The broker's default `group.min.session.timeout.ms` / `group.max.session.timeout.ms`: a
#: session timeout outside them is refused at join time, and the worker would run forever
#: without partitions (live, never ready).
_MIN_SESSION_TIMEOUT_S = 6.0
_MAX_SESSION_TIMEOUT_S = 1800.0


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0; got {value!r}")


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None:
        _positive(name, value)


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0; got {value!r}")


def _session_timeout(name: str, value: float) -> None:
    if not _MIN_SESSION_TIMEOUT_S <= value <= _MAX_SESSION_TIMEOUT_S:
        raise ConfigError(
            f"{name} must be in [{_MIN_SESSION_TIMEOUT_S:g}, {_MAX_SESSION_TIMEOUT_S:g}] seconds "
            "(the broker's default group.min.session.timeout.ms and "
            f"group.max.session.timeout.ms); got {value!r}"
        )


def _context_fields(name: str, value: tuple[str, ...]) -> None:
    check_fields(name, value)


def _port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a TCP port in [0, 65535]; got {value!r}")


class _OneOf:
    """A check that a value is one of `allowed`; the help and the README list them."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = allowed

    def __call__(self, name: str, value: str) -> None:
        if value not in self.allowed:
            raise ConfigError(
                f"{name} must be one of {', '.join(self.allowed)}; got {value!r}"
            )


def _help(field: _Field) -> str:
    if isinstance(field.check, _OneOf):
        return f"{field.help} (one of {', '.join(field.check.allowed)})"
    return field.help


@dataclass(frozen=True)
class _Meta:
    """What a `Settings` field needs beyond its name, type and default."""

    help: str
    check: Callable[[str, Any], None] | None = None
    secret: bool = False
    #: The documented flag when it is not ``--`` + the name with dashes.
    flag: str | None = None
    #: Older spellings of the flag, still accepted with a warning.
    deprecated_flags: tuple[str, ...] = ()
    #: `recal replay` uses it too (and so offers its flag).
    replay: bool = False
    group: str = "worker"


def _setting(
    default: Any,
    help: str,
    check: Callable[[str, Any], None] | None = None,
    **meta: Any,
) -> Any:
    # `Any`, so that `x: float = _setting(1.0, ...)` type-checks like a plain default.
    return field(default=default, metadata={"setting": _Meta(help, check, **meta)})


@dataclass(frozen=True)
class _Field:
    name: str
    kind: type
    default: Any
    help: str
    check: Callable[[str, Any], None] | None = None
    secret: bool = False
    optional: bool = False
    flag: str | None = None
    deprecated_flags: tuple[str, ...] = ()
    replay: bool = False
    #: argparse group title and the README's grouping.
    group: str = "worker"
    #: Element type of a list-valued (``tuple``) setting.
    item: type | None = None
    #: Where a core knob goes: ("policy", field), ("monitor", field) or
    #: ("monitor", knob, argument); empty for the process's own settings.
    target: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one recal process.

    >>> env = {"RECAL_ATTRIBUTION_WINDOW_S": "600", "RECAL_STALL_WINDOW_MS": "60000"}
    >>> s = Settings.load(env=env)
    >>> s.attribution_window_s, s.topic("impressions"), s.monitor_config().stall["window_ms"]
    (600.0, 'recal.impressions', 60000)
    """

    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)")
    topic_prefix: str = _setting("recal.", "prefix of every topic name")
    app_id: str = _setting("recal", "consumer group id (and transactional id prefix)")
    partitions: int = _setting(
        1, "partitions when the worker creates missing input topics", _positive
    )
    # `--attribution-window S` and `--allowed-lateness S`, as `recal replay` spells them
    # (DESIGN §11); the worker's older `-s` spellings still work.
    attribution_window_s: float = _setting(
        1800.0, "attribution window W in seconds", _positive, flag="--attribution-window",
        deprecated_flags=("--attribution-window-s",), replay=True, group="join",
    )
    allowed_lateness_s: float = _setting(
        60.0, "allowed event-time lateness in seconds", _non_negative,
        flag="--allowed-lateness", deprecated_flags=("--allowed-lateness-s",), replay=True,
        group="join",
    )
    idle_timeout_s: float = _setting(
        30.0, "wall seconds without events before an idle partition's watermark advances",
        _positive, group="join",
    )
    recalibrate_every: int = _setting(
        1000, "refit every N mature feedback events per model", _positive, replay=True,
        group="join",
    )
    max_message_bytes: int = _setting(
        65536, "larger input messages are dead-lettered (too_large)", _positive, replay=True,
        group="join",
    )
    max_future_s: float = _setting(
        3600.0, "inputs stamped further than this in the future are dead-lettered (future_ts)",
        _positive, group="join",
    )
    max_clock_jump_s: float | None = _setting(
        None, "one event may move a partition's event-time clock by at most this many "
        "seconds before later events confirm the jump (unset: the attribution window)",
        _positive_or_none, replay=True, group="join",
    )
    clock_confirmations: int = _setting(
        3, "later events that must confirm (or refute) a bigger clock jump", _positive,
        replay=True, group="join",
    )
    context_fields: tuple[str, ...] = _setting(
        (), "fields of the impressions' context object kept for the contextual calibrator "
        "(comma-separated; numbers or strings of 1-128 characters, anything else is missing; "
        "not ts, hour, position or segment, which come from the impression itself)",
        _context_fields, replay=True, group="join",
    )
    session_timeout_s: float = _setting(
        10.0,
        "Kafka consumer-group session timeout in seconds, in [6, 1800] (the broker's default "
        "group.min/max.session.timeout.ms); heartbeats every third of it. A worker silent "
        "this long (dead, or its event loop stalled) loses its partitions to a rebalance",
        _session_timeout,
    )
    web_host: str = _setting("127.0.0.1", "address of the metrics/health HTTP server")
    web_port: int = _setting(
        6066, "port of the metrics/health HTTP server (0: any free)", _port
    )
    commit_interval_ms: int = _setting(
        100, "each partition's outputs, state and input offsets are committed in one Kafka "
        "transaction this often (ms)", _positive,
    )
    posterior_interval_s: float = _setting(
        5.0, "posterior snapshots of the (user, arm) pairs updated since the last batch are "
        "published this often (s)", _positive,
    )
    max_processing_attempts: int = _setting(
        3, "an input whose processing raises this many times is dead-lettered "
        "(processing_error) and its partition moves on", _positive,
    )
    merge_max_wait_ms: int = _setting(
        1000, "an input waits at most this long (ms) for the other input topic when that "
        "topic's backlog is unknown (event-time alignment)", _non_negative,
    )
    merge_max_backlog_wait_ms: int = _setting(
        30000, "an input waits at most this long (ms) for the other input topic while that "
        "topic-partition has unread messages", _non_negative,
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol",
        _OneOf("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = _setting(
        "PLAIN", "SASL mechanism", _OneOf("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    sasl_username: str | None = _setting(None, "SASL user name")
    sasl_password: str | None = _setting(None, "SASL password (never logged)", secret=True)
    ssl_cafile: str | None = _setting(None, "TLS CA bundle")
    ssl_certfile: str | None = _setting(None, "TLS client certificate")
    ssl_keyfile: str | None = _setting(None, "TLS client key (never logged)", secret=True)
    ssl_password: str | None = _setting(None, "TLS key password (never logged)", secret=True)
    #: The core's hyper-parameters by setting name (`policy_z`, `stall_window_ms`, ...);
    #: every derived setting is present (missing ones take their defaults).
    # A lambda: `_default_knobs` is defined below, with the derivation it needs.
    # Left out of the hash (a dict is unhashable); equality still compares it.
    knobs: Mapping[str, Any] = field(default_factory=lambda: _default_knobs(), hash=False)

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Resolve every setting (flag > env > file > default) and validate it."""
        env = os.environ if env is None else env
        file_values: dict[str, Any] = {}
        if config_file is not None:
            file_values = _read_config_file(Path(config_file))
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in all_fields():
            raw: Any = f.default
            source = "default"
            if f.name in file_values:
                raw, source = file_values[f.name], f"config file {config_file}"
            if env_name(f.name) in env:
                raw, source = env[env_name(f.name)], env_name(f.name)
            if overrides and overrides.get(f.name) is not None:
                raw, source = overrides[f.name], flag_name(f.name)
            value = _coerce(f, raw, source)
            if value is not None and f.check is not None:
                f.check(f"{f.name} ({source})", value)
            values[f.name] = value
            sources[f.name] = source
        core = {f.name for f in _core_fields()}
        settings = cls(
            **{k: v for k, v in values.items() if k not in core},
            knobs={k: v for k, v in values.items() if k in core},
        )
        settings._check_consistency()
        _validate_core(values, sources)
        return settings

    def _check_consistency(self) -> None:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ConfigError(
                f"security_protocol {self.security_protocol} needs sasl_username and "
                "sasl_password (RECAL_SASL_USERNAME, RECAL_SASL_PASSWORD)"
            )
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers must not be empty")

    def topic(self, name: str) -> str:
        """The full name of a topic: the configured prefix + its short name."""
        return f"{self.topic_prefix}{name}"

    @property
    def window_ms(self) -> int:
        return int(self.attribution_window_s * 1000)

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness_s * 1000)

    @property
    def idle_timeout_ms(self) -> int:
        return int(self.idle_timeout_s * 1000)

    @property
    def heartbeat_interval_s(self) -> float:
        """Consumer-group heartbeat interval: a third of the session timeout (Kafka's
        guidance), so two heartbeats can be lost before the session expires."""
        return self.session_timeout_s / 3

    @property
    def max_clock_jump_ms(self) -> int | None:
        """The join's clock-guard bound in ms (None: the attribution window)."""
        jump = self.max_clock_jump_s
        return None if jump is None else int(jump * 1000)

    def pipeline_config(self) -> PipelineConfig:
        """One partition's core configuration: the join's parameters (in milliseconds), the
        policy's and the feedback stage's (validated by their constructors)."""
        return PipelineConfig(
            window_ms=self.window_ms,
            allowed_lateness_ms=self.lateness_ms,
            idle_timeout_ms=self.idle_timeout_ms,
            max_clock_jump_ms=self.max_clock_jump_ms,
            clock_confirmations=self.clock_confirmations,
            context_fields=self.context_fields,
            monitor=self.monitor_config(),
            policy=self.policy_config(),
        )

    def policy_config(self) -> PolicyConfig:
        """The recalibration policy's hyper-parameters (validated by `PolicyConfig`)."""
        return _build_policy(self._core_values())

    def monitor_config(self) -> MonitorConfig:
        """The monitor's hyper-parameters (validated by `MonitorConfig`)."""
        return _build_monitor(self._core_values())

    def _core_values(self) -> dict[str, Any]:
        values = {**_core_defaults(), **self.knobs}
        # A core knob with a process-level setting of the same name (recalibrate_every).
        for name, _ in _core_targets():
            if name not in values:
                values[name] = getattr(self, name)
        return values

    def describe(self) -> dict[str, Any]:
        """All settings for the start-up log; secrets are masked, never printed."""
        values = {f.name: getattr(self, f.name) for f in _worker_fields()}
        values.update(self._core_values())
        out: dict[str, Any] = {}
        for f in all_fields():
            value = values[f.name]
            out[f.name] = _SECRET_MASK if f.secret and value is not None else value
        return out


# --- the process's own settings, from the fields of `Settings` ----------------------------


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """(`X`, True) for `X | None`, (`hint`, False) otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(typing.get_args(hint)):
            return rest[0], True
    return hint, False


def _kind(hint: Any, where: str) -> tuple[type, type | None, bool]:
    """(kind, item type, optional) of a type hint; an unsupported hint is a bug here."""
    hint, optional = _split_optional(hint)
    if hint in (int, float, str, bool):
        return hint, None, optional
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (tuple, Sequence) and args and args[0] in (int, float, str):
        return tuple, args[0], optional
    if origin in (dict, Mapping):
        return dict, None, optional
    raise TypeError(f"{where}: no setting type for {hint!r}")


@cache
def _worker_fields() -> tuple[_Field, ...]:
    hints = typing.get_type_hints(Settings)
    out = []
    for f in fields(Settings):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        kind, item, optional = _kind(hints[f.name], f"Settings.{f.name}")
        out.append(_Field(
            f.name, kind, f.default, meta.help, meta.check, meta.secret, optional, meta.flag,
            meta.deprecated_flags, meta.replay, meta.group, item,
        ))
    return tuple(out)


# --- the core's knobs, derived from the core config classes -------------------------------


#: Help taken from a docstring is cut here: the full story stays in the docstring.
_MAX_HELP = 200
_EARLY_MENTION = 80


def _find(text: str, mark: str) -> int:
    at = text.find(mark)
    return len(text) if at < 0 else at


def _doc_of(name: str, *docs: str | None) -> str | None:
    """The first sentence of `docs` that mentions ``name`` (in double back-quotes, or a
    ``prefix_*`` pattern that covers it), as plain text: the core documents its knobs in its
    docstrings, so the help is taken from there."""
    marks = [f"``{name}``"] + [
        f"``{name[: i + 1]}*``" for i, ch in enumerate(name) if ch == "_"
    ]
    sentences = [
        sentence
        for doc in docs if doc
        for sentence in re.split(
            r"(?<=[.;])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z`-])|\s+-\s+",
            " ".join(inspect.cleandoc(doc).split()),
        )
        if any(mark in sentence for mark in marks)
    ]
    # A sentence that starts with the name defines it; one that names it early is about it;
    # a later mention is usually about something else (better no help than a wrong one).
    defining = [s for s in sentences if s.lstrip(" -").startswith(tuple(marks))]
    sentences = [s for s in sentences if min(_find(s, m) for m in marks) < _EARLY_MENTION]
    for sentence in defining or sentences:
        text = sentence.replace("``", "`").strip(" -")
        return text if len(text) <= _MAX_HELP else text[: _MAX_HELP - 1].rstrip() + "…"
    return None


def _default_of(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


@cache
def _core_fields() -> tuple[_Field, ...]:
    out: list[_Field] = []
    own = {f.name for f in _worker_fields()}

    hints = typing.get_type_hints(PolicyConfig)
    for f in fields(PolicyConfig):
        if f.name in own:
            # Served by the process-level setting of the same name (`recalibrate_every`).
            continue
        kind, item, optional = _kind(hints[f.name], f"PolicyConfig.{f.name}")
        out.append(_Field(
            f"policy_{f.name}", kind, _default_of(f),
            _doc_of(f.name, PolicyConfig.__doc__) or f"`{f.name}` of `PolicyConfig`",
            optional=optional, replay=True, group="policy (PolicyConfig)", item=item,
            target=("policy", f.name),
        ))

    components = dict(COMPONENTS)
    default_monitor = MonitorConfig()
    hints = typing.get_type_hints(MonitorConfig)
    for f in fields(MonitorConfig):
        if f.name in components:
            continue
        if f.name == "severity":
            out.extend(_severity_fields(default_monitor))
            continue
        kind, item, optional = _kind(hints[f.name], f"MonitorConfig.{f.name}")
        out.append(_Field(
            f"monitor_{f.name}", kind, _default_of(f),
            _doc_of(f.name, MonitorConfig.__doc__) or f"`{f.name}` of `MonitorConfig`",
            optional=optional, replay=True, group="monitor (MonitorConfig)", item=item,
            target=("monitor", f.name),
        ))

    for knob, cls in COMPONENTS:
        configured = getattr(default_monitor, knob)
        params = inspect.signature(cls, eval_str=True).parameters
        for arg, param in params.items():
            if arg in PINNED.get(knob, {}) or param.default is inspect.Parameter.empty:
                continue
            kind, item, optional = _kind(param.annotation, f"{cls.__name__}({arg})")
            default = configured.get(arg, param.default)
            if kind is tuple and default is not None:
                default = tuple(default)
            out.append(_Field(
                f"{knob}_{arg}", kind, default,
                _doc_of(arg, cls.__doc__) or f"`{arg}` of `{cls.__name__}`",
                optional=optional, replay=True, group=f"monitor.{knob} ({cls.__name__})",
                item=item, target=("monitor", knob, arg),
            ))
    return tuple(out)


def _severity_fields(default_monitor: MonitorConfig) -> list[_Field]:
    return [
        _Field(
            f"severity_{kind}", str, default_monitor.severity_of(kind),
            f"severity of `{kind}` alerts",
            _OneOf(*SEVERITIES), replay=True, group="monitor.severity",
            target=("monitor", "severity", kind),
        )
        for kind in KINDS
    ]


@cache
def _core_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in _core_fields()}


def _default_knobs() -> dict[str, Any]:
    return dict(_core_defaults())


@cache
def all_fields() -> tuple[_Field, ...]:
    """Every setting: the process's own, then the core's derived knobs."""
    return _worker_fields() + _core_fields()


@cache
def _fields_by_name() -> dict[str, _Field]:
    by_name = {f.name: f for f in all_fields()}
    if len(by_name) != len(all_fields()):
        # Two derived names collide: a core knob was added whose name needs a new prefix.
        names = [f.name for f in all_fields()]
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TypeError(f"duplicate setting names: {twice}")
    return by_name


def _core_targets() -> Iterable[tuple[str, tuple[str, ...]]]:
    own = {f.name for f in _worker_fields()}
    for f in fields(PolicyConfig):
        if f.name in own:
            yield f.name, ("policy", f.name)
    for knob in _core_fields():
        yield knob.name, knob.target


def _build_policy(values: Mapping[str, Any]) -> PolicyConfig:
    kwargs = {t[1]: values[name] for name, t in _core_targets() if t[0] == "policy"}
    return PolicyConfig(**kwargs)


def _build_monitor(values: Mapping[str, Any]) -> MonitorConfig:
    """A `MonitorConfig` from flat values. A component argument goes into its knob's
    keyword arguments when `MonitorConfig` sets it by default or its value differs from the
    component's own default, so all-default settings give exactly `MonitorConfig()`."""
    base = MonitorConfig()
    plain = MonitorConfig(severity={})
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    signatures = {knob: inspect.signature(cls).parameters for knob, cls in COMPONENTS}
    for name, target in _core_targets():
        if target[0] != "monitor":
            continue
        value = values[name]
        if len(target) == 2:
            kwargs[target[1]] = value
            continue
        knob, key = target[1], target[2]
        configured = getattr(base, knob)
        own_default = (
            plain.severity_of(key) if knob == "severity" else signatures[knob][key].default
        )
        if key in configured or value != _as_default(own_default):
            nested.setdefault(knob, {})[key] = value
    for knob in [*signatures, "severity"]:
        kwargs[knob] = nested.get(knob, {})
    return MonitorConfig(**kwargs)


def _as_default(value: Any) -> Any:
    # Sequence defaults compare as tuples, as the settings hold them.
    return tuple(value) if isinstance(value, list) else value


def _validate_core(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Build the core configs once so a bad knob fails at start-up, reported against the
    variable or flag that set it: the knob that fails on its own, else every knob of that
    config not at its default (a constraint between knobs, e.g. train_buffer >=
    recent_window)."""
    defaults = {**_core_defaults(), **{f.name: f.default for f in _worker_fields()}}
    for group, build in (("policy", _build_policy), ("monitor", _build_monitor)):
        try:
            build(values)
        except (ConfigError, ValueError, TypeError) as exc:
            changed = [
                name for name, target in _core_targets()
                if target[0] == group and sources.get(name, "default") != "default"
            ]
            culprits = [n for n in changed if _fails(build, {**defaults, n: values[n]})]
            named = ", ".join(f"{n} ({sources[n]})" for n in (culprits[:1] or changed))
            raise ConfigError(f"{named or group}: {exc}") from None


def _fails(build: Callable[[Mapping[str, Any]], object], values: Mapping[str, Any]) -> bool:
    try:
        build(values)
    except (ConfigError, ValueError, TypeError):
        return True
    return False


# --- names, parsing, files, flags ----------------------------------------------------------


def env_name(field_name: str) -> str:
    return "RECAL_" + field_name.upper()


def flag_name(field_name: str) -> str:
    field = _fields_by_name().get(field_name)
    if field is not None and field.flag is not None:
        return field.flag
    return "--" + field_name.replace("_", "-")


_NONE_TEXT = ("", "none", "null")


def _coerce(field: _Field, raw: Any, source: str) -> Any:
    if raw is None:
        if field.optional:
            return None
        raise ConfigError(f"{field.name} ({source}) must be set")
    if (
        field.optional and field.kind is not str and isinstance(raw, str)
        and raw.strip().lower() in _NONE_TEXT
    ):
        return None
    try:
        if field.kind is tuple:
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, (list, tuple)):
                raise ValueError(raw)
            item = field.item or str
            return tuple(
                _scalar(item, x.strip() if isinstance(x, str) else x)
                for x in items
                if not (isinstance(x, str) and not x.strip())
            )
        if field.kind is dict:
            value = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
            if not isinstance(value, dict):
                raise ValueError(raw)
            return value
        return _scalar(field.kind, raw)
    except (TypeError, ValueError, orjson.JSONDecodeError):
        shown = _SECRET_MASK if field.secret else repr(raw)
        raise ConfigError(
            f"{field.name} ({source}) must be {_type_name(field)}; got {shown}"
        ) from None


def _scalar(kind: type, raw: Any) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind is int and isinstance(raw, float) and not raw.is_integer():
        raise ValueError(raw)
    if kind in (int, float) and isinstance(raw, bool):
        raise ValueError(raw)
    if kind is str and not isinstance(raw, str):
        raise ValueError(raw)
    return kind(raw)


def _type_name(field: _Field) -> str:
    if field.kind is tuple:
        name = f"a comma-separated list of {(field.item or str).__name__}"
    elif field.kind is dict:
        name = "a JSON object"
    else:
        name = field.kind.__name__
    return f"{name} or none" if field.optional and field.kind is not str else name


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    unknown = sorted(set(data) - set(_fields_by_name()))
    if unknown:
        raise ConfigError(f"config file {path} has unknown settings: {', '.join(unknown)}")
    return data


class _DeprecatedAlias(argparse.Action):
    """Stores the value like the documented flag and notes the old spelling, which
    ``settings_from_args`` warns about once logging is set up."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        if option_string is not None and option_string != flag_name(self.dest):
            used = getattr(namespace, "deprecated_flags", None) or []
            namespace.deprecated_flags = [*used, (option_string, flag_name(self.dest))]


def format_default(field: _Field) -> str:
    """A default as a user would write it in the variable (`1800`, `on`, `a,b`, none)."""
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return _number_text(value)
    if isinstance(value, tuple):
        return ",".join(_number_text(v) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, Mapping):
        return orjson.dumps(value).decode()
    return str(value)


def _number_text(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_METAVARS = {int: "N", float: "X", str: "TEXT", tuple: "A,B", dict: "JSON"}


def replay_setting_names() -> list[str]:
    """The settings `recal replay` offers as flags (the join's and the core's)."""
    return [f.name for f in all_fields() if f.replay]


def add_settings_arguments(
    parser: argparse.ArgumentParser, names: Iterable[str] | None = None
) -> None:
    """Add `--flag` for each setting (all, or `names`), defaulting to None (= not given),
    in one argument group per kind of setting."""
    wanted = None if names is None else set(names)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in all_fields():
        if wanted is not None and f.name not in wanted:
            continue
        if f.group not in groups:
            groups[f.group] = parser.add_argument_group(f"settings: {f.group}")
        group = groups[f.group]
        help_text = f"{_help(f)} (env {env_name(f.name)}; default {format_default(f)})"
        if f.deprecated_flags:
            help_text += f"; deprecated spelling: {', '.join(f.deprecated_flags)}"
        # argparse treats `%` in help as a format string.
        help_text = help_text.replace("%", "%%")
        if f.kind is bool:
            group.add_argument(
                flag_name(f.name), dest=f.name, default=None,
                action=argparse.BooleanOptionalAction, help=help_text,
            )
        elif f.deprecated_flags:
            group.add_argument(
                flag_name(f.name), *f.deprecated_flags, dest=f.name, default=None,
                type=str, action=_DeprecatedAlias, metavar=_METAVARS[f.kind], help=help_text,
            )
        else:
            group.add_argument(
                flag_name(f.name), dest=f.name, default=None, type=str,
                metavar=_METAVARS[f.kind], help=help_text,
            )
    parser.add_argument("--config", dest="config_file", default=None,
                        help="JSON file of settings (lower precedence than env and flags)")


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    for old, new in getattr(args, "deprecated_flags", None) or ():
        log.warning("%s is deprecated; use %s", old, new)
    overrides = {f.name: getattr(args, f.name, None) for f in all_fields()}
    config_file = getattr(args, "config_file", None)
    return Settings.load(env=env, overrides=overrides, config_file=config_file)


def markdown_table() -> str:
    """The README's configuration table, generated from the settings themselves (a test
    checks that README.md holds exactly this text)."""
    rows = [
        "| environment | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in all_fields():
        flag = flag_name(f.name)
        if f.kind is bool:
            flag = f"{flag} / --no-{flag[2:]}"
        meaning = _help(f).replace("|", "\\|")
        if f.deprecated_flags:
            meaning += f" (deprecated spelling: {', '.join(f'`{d}`' for d in f.deprecated_flags)})"
        default = format_default(f)
        # An empty list has no text to quote; unset is not a value to type.
        shown = "(unset)" if f.default is None else f"`{default}`" if default else "(empty)"
        rows.append(f"| `{env_name(f.name)}` | `{flag}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


#: The markers around the generated table in README.md.
README_TABLE_START = "<!-- settings-table:start -->\n"
README_TABLE_END = "<!-- settings-table:end -->"


def with_readme_table(readme: str) -> str:
    """``readme`` with the text between the settings-table markers replaced by
    ``markdown_table()`` (``ConfigError`` when the markers are missing)."""
    head, start, rest = readme.partition(README_TABLE_START)
    _old, end, tail = rest.partition(README_TABLE_END)
    if not start or not end:
        raise ConfigError(f"no {README_TABLE_START.strip()} ... {README_TABLE_END} markers")
    return head + start + markdown_table() + end + tail


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.settings --markdown`` prints the configuration reference;
    ``--update-readme README.md`` rewrites the table in place (a unit test fails while the
    README's table differs from the generated one)."""
    p = argparse.ArgumentParser(prog="python -m worker.settings",
                                description="The configuration reference of recal.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true",
                      help="print the settings table (Markdown)")
    what.add_argument("--update-readme", type=Path, metavar="README",
                      help="replace the table between the README's settings-table markers")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    path: Path = args.update_readme
    try:
        path.write_text(with_readme_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    except (OSError, ConfigError) as exc:
        print(f"python -m worker.settings: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
