"""The error types of the core.

Every error the project raises on purpose derives from ``RecalError``. Bad input raises
``InvalidInputError`` with a short ``reason`` code (the dead-letter reason) and a human
message of the form "score must be a finite number in [0, 1]; got nan"; only the decoder
raises it, and runtimes turn it into a dead letter. ``StateError`` is the opposite: persisted
state that cannot be read, or an internal invariant that does not hold. It is not a
``ValueError``, so no ``except InvalidInputError``/``except ValueError`` dead-letters it by
accident: it crashes loudly, like any other bug, so the worker restarts.
"""

from __future__ import annotations


class RecalError(Exception):
    """Base of every error raised on purpose by recal."""


class InvalidInputError(RecalError, ValueError):
    """An input message that cannot be processed; ``reason`` is its dead-letter code.

    >>> err = InvalidInputError("score_range", "score must be a finite number in [0, 1]; got 2")
    >>> err.reason, str(err)
    ('score_range', 'score must be a finite number in [0, 1]; got 2')
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(RecalError):
    """Unreadable state (a malformed ``from_dict`` input) or a broken internal invariant.

    >>> isinstance(StateError("malformed sketch state: bins must be unique"), ValueError)
    False
    """


class ConfigError(RecalError, ValueError):
    """Invalid configuration: the process must stop with a clear message and exit 2."""
