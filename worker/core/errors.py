"""The error types of the core.

Every error the project raises on purpose derives from ``RecalError``. Bad input raises
``InvalidInputError`` with a short ``reason`` code (the dead-letter reason) and a human
message of the form "score must be a finite number in [0, 1]; got nan". Runtimes turn it
into a dead letter; anything else is a bug and crashes loudly so the worker restarts.
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


class ConfigError(RecalError, ValueError):
    """Invalid configuration: the process must stop with a clear message and exit 2."""
