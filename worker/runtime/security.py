"""SASL/TLS settings → Kafka client options for aiokafka (consumer, producers, admin).

Every client gets the same security settings from ``Settings`` (DESIGN §8: "SASL/TLS settings
pass through to the Kafka clients"). Secrets are only handed to the clients, never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

from worker.core.errors import ConfigError
from worker.settings import Settings

_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for plaintext protocols).

    >>> ssl_context(Settings()) is None
    True
    """
    if settings.security_protocol not in _TLS_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile
        )
        if settings.ssl_certfile:
            context.load_cert_chain(
                certfile=settings.ssl_certfile,
                keyfile=settings.ssl_keyfile,
                password=settings.ssl_password,
            )
    except (OSError, ssl.SSLError) as exc:
        # The message names the files but never the key password.
        raise ConfigError(
            f"cannot build the TLS context (ssl_cafile={settings.ssl_cafile!r}, "
            f"ssl_certfile={settings.ssl_certfile!r}, ssl_keyfile="
            f"{'set' if settings.ssl_keyfile else None}): {type(exc).__name__}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None
    return context


def aiokafka_security_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (admin, producer, consumer).

    >>> aiokafka_security_kwargs(Settings())
    {'security_protocol': 'PLAINTEXT'}
    """
    out: dict[str, Any] = {"security_protocol": settings.security_protocol}
    context = ssl_context(settings)
    if context is not None:
        out["ssl_context"] = context
    if settings.security_protocol in _SASL_PROTOCOLS:
        out["sasl_mechanism"] = settings.sasl_mechanism
        out["sasl_plain_username"] = settings.sasl_username
        out["sasl_plain_password"] = settings.sasl_password
    return out


def bootstrap_list(settings: Settings) -> list[str]:
    """``host:port`` entries of ``bootstrap_servers`` (comma separated, blanks ignored).

    >>> bootstrap_list(Settings(bootstrap_servers="a:1, b:2,"))
    ['a:1', 'b:2']
    """
    hosts = [part.strip() for part in settings.bootstrap_servers.split(",") if part.strip()]
    if not hosts:
        raise ConfigError("bootstrap_servers must name at least one host:port")
    return hosts
