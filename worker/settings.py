"""Configuration: `RECAL_*` environment variables, the same settings as CLI flags (DESIGN §8).

Precedence: CLI flag > environment variable > config file (`--config FILE`, JSON with the
setting names as keys) > default. Invalid values fail fast with a message naming the setting,
and `recal` exits 2. `describe()` gives the settings for the start-up log with secrets masked.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from worker.core.errors import ConfigError

log = logging.getLogger(__name__)

_SECRET_MASK = "***"
#: faust refuses a consumer-group session timeout above its broker request timeout (90 s).
_MAX_SESSION_TIMEOUT_S = 90.0


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0; got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0; got {value!r}")


def _session_timeout(name: str, value: float) -> None:
    if not 0 < value <= _MAX_SESSION_TIMEOUT_S:
        raise ConfigError(
            f"{name} must be > 0 and <= {_MAX_SESSION_TIMEOUT_S:g} seconds (faust's broker "
            f"request timeout); got {value!r}"
        )


def _port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a TCP port in [0, 65535]; got {value!r}")


def _one_of(*allowed: str) -> Callable[[str, str], None]:
    def check(name: str, value: str) -> None:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")

    return check


@dataclass(frozen=True)
class _Field:
    name: str
    kind: type
    default: Any
    help: str
    check: Callable[[str, Any], None] | None = None
    secret: bool = False
    optional: bool = False
    #: The documented flag when it is not ``--`` + the name with dashes.
    flag: str | None = None
    #: Older spellings of the flag, still accepted with a warning.
    deprecated_flags: tuple[str, ...] = ()


_FIELDS: tuple[_Field, ...] = (
    _Field("bootstrap_servers", str, "127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)"),
    _Field("topic_prefix", str, "recal.", "prefix of every topic name"),
    _Field("app_id", str, "recal", "consumer group / faust app id"),
    _Field("partitions", int, 1, "partitions when the worker creates missing topics", _positive),
    # `--attribution-window S`, as `recal replay` spells it (DESIGN §11).
    _Field("attribution_window_s", float, 1800.0, "attribution window W in seconds", _positive,
           flag="--attribution-window", deprecated_flags=("--attribution-window-s",)),
    _Field("allowed_lateness_s", float, 60.0, "allowed event-time lateness in seconds",
           _non_negative),
    _Field("idle_timeout_s", float, 30.0,
           "wall seconds without events before an idle partition's watermark advances",
           _positive),
    _Field("recalibrate_every", int, 1000, "refit every N mature feedback events per model",
           _positive),
    _Field("max_message_bytes", int, 65536, "larger input messages are dead-lettered",
           _positive),
    _Field("max_future_s", float, 3600.0,
           "inputs stamped further than this in the future are dead-lettered", _positive),
    _Field("session_timeout_s", float, 30.0,
           "Kafka consumer-group session timeout in seconds (heartbeats every third of it): "
           "a worker silent this long loses its partitions", _session_timeout),
    _Field("web_host", str, "127.0.0.1", "address of the metrics/health HTTP server"),
    _Field("web_port", int, 6066, "port of the metrics/health HTTP server (0: any free)", _port),
    _Field("expose_tables", bool, False, "serve table contents over HTTP (off by default)"),
    _Field("data_dir", str, "./recal-data", "local state directory of the worker"),
    _Field("security_protocol", str, "PLAINTEXT", "Kafka security protocol",
           _one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    _Field("sasl_mechanism", str, "PLAIN", "SASL mechanism",
           _one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")),
    _Field("sasl_username", str, None, "SASL user name", optional=True),
    _Field("sasl_password", str, None, "SASL password (never logged)", secret=True,
           optional=True),
    _Field("ssl_cafile", str, None, "TLS CA bundle", optional=True),
    _Field("ssl_certfile", str, None, "TLS client certificate", optional=True),
    _Field("ssl_keyfile", str, None, "TLS client key", secret=True, optional=True),
    _Field("ssl_password", str, None, "TLS key password (never logged)", secret=True,
           optional=True),
)

_FIELD_BY_NAME = {f.name: f for f in _FIELDS}


def env_name(field_name: str) -> str:
    return "RECAL_" + field_name.upper()


def flag_name(field_name: str) -> str:
    field = _FIELD_BY_NAME.get(field_name)
    if field is not None and field.flag is not None:
        return field.flag
    return "--" + field_name.replace("_", "-")


def _coerce(field: _Field, raw: Any, source: str) -> Any:
    if raw is None:
        if field.optional:
            return None
        raise ConfigError(f"{field.name} ({source}) must be set")
    try:
        if field.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if field.kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        if field.kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)
        return field.kind(raw)
    except (TypeError, ValueError):
        shown = _SECRET_MASK if field.secret else repr(raw)
        raise ConfigError(
            f"{field.name} ({source}) must be {field.kind.__name__}; got {shown}"
        ) from None


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one recal process.

    >>> s = Settings.load(env={"RECAL_ATTRIBUTION_WINDOW_S": "600"})
    >>> s.attribution_window_s, s.topic("impressions")
    (600.0, 'recal.impressions')
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "recal."
    app_id: str = "recal"
    partitions: int = 1
    attribution_window_s: float = 1800.0
    allowed_lateness_s: float = 60.0
    idle_timeout_s: float = 30.0
    recalibrate_every: int = 1000
    max_message_bytes: int = 65536
    max_future_s: float = 3600.0
    session_timeout_s: float = 30.0
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    expose_tables: bool = False
    data_dir: str = "./recal-data"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None

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
        for field in _FIELDS:
            raw: Any = field.default
            source = "default"
            if field.name in file_values:
                raw, source = file_values[field.name], f"config file {config_file}"
            if env_name(field.name) in env:
                raw, source = env[env_name(field.name)], env_name(field.name)
            if overrides and overrides.get(field.name) is not None:
                raw, source = overrides[field.name], flag_name(field.name)
            value = _coerce(field, raw, source)
            if value is not None and field.check is not None:
                field.check(f"{field.name} ({source})", value)
            values[field.name] = value
        settings = cls(**values)
        settings._check_consistency()
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

    def describe(self) -> dict[str, Any]:
        """All settings for the start-up log; secrets are masked, never printed."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if _FIELD_BY_NAME[f.name].secret and value is not None:
                value = _SECRET_MASK
            out[f.name] = value
        return out


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    unknown = sorted(set(data) - set(_FIELD_BY_NAME))
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


def add_settings_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add `--flag` for each setting (all, or `names`), defaulting to None (= not given)."""
    for field in _FIELDS:
        if names is not None and field.name not in names:
            continue
        help_text = f"{field.help} (env {env_name(field.name)}; default {field.default!r})"
        if field.deprecated_flags:
            help_text += f"; deprecated spelling: {', '.join(field.deprecated_flags)}"
        if field.kind is bool:
            parser.add_argument(
                flag_name(field.name), dest=field.name, default=None,
                action=argparse.BooleanOptionalAction, help=help_text,
            )
        elif field.deprecated_flags:
            parser.add_argument(
                flag_name(field.name), *field.deprecated_flags, dest=field.name, default=None,
                type=str, action=_DeprecatedAlias, help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(field.name), dest=field.name, default=None, type=str,
                help=help_text,
            )
    parser.add_argument("--config", dest="config_file", default=None,
                        help="JSON file of settings (lower precedence than env and flags)")


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    for old, new in getattr(args, "deprecated_flags", None) or ():
        log.warning("%s is deprecated; use %s", old, new)
    overrides = {f.name: getattr(args, f.name, None) for f in _FIELDS}
    config_file = getattr(args, "config_file", None)
    return Settings.load(env=env, overrides=overrides, config_file=config_file)
