"""Decode and validate input messages (impressions, clicks, replay lines) on the hot path.

The accepted set is exactly the one of ``schemas/impression.schema.json``,
``schemas/click.schema.json`` and ``schemas/replay_line.schema.json`` for every value a JSON
parser can produce (a property test holds the two together). The checks are written by hand
rather than run through ``jsonschema`` because this runs once per event: validating one
impression with ``jsonschema`` costs about 200 µs, the hand-written checks about 1 µs.

What "exactly" means at the edges, following the JSON data model that JSON Schema uses:

- ``true``/``false`` are not numbers, so a bool score, ts or position is rejected;
- an integer field accepts any number with a zero fractional part (``1000.0`` and ``1e3``
  are the integer 1000) and stores it as an ``int``; ``1.5`` is rejected;
- string lengths count Unicode code points (Python's ``len``), as JSON Schema does;
- ``NaN`` and infinities cannot appear in JSON (orjson refuses them, and also refuses numbers
  such as ``1e400`` that overflow to infinity), so they surface as ``invalid_json``; for
  already-parsed objects an infinite logit or score is ``score_range``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from worker.core.calibrators.context_features import check_fields, keeps
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.records._slots import slot_setters
from worker.core.records.click import Click
from worker.core.records.impression import Impression

__all__ = ["InputDecoder"]

_MAX_ID_CHARS = 128
# 2^53 - 1: the largest integer every JSON implementation (and a float64) holds exactly. It
# also keeps ts + window arithmetic far from int64 overflow in numpy and Kafka.
_MAX_INT = 9_007_199_254_740_991
# 9999-12-31T23:59:59.999Z. ``ts`` up to 2^53 - 1 was accepted before, but every output
# carries ``ts + W`` (label_ts, event_ts, created_at), which then passed 2^53 - 1 and was
# refused downstream, crashing the worker on a schema-valid input. Year 9999 leaves ts + W
# exact for any window shorter than ~277,000 years; no real event is stamped later.
_MAX_TS = 253_402_300_799_999
# The posterior store's population key (DESIGN §3: posterior snapshots use "*" for an arm's
# population posterior): a user with that id would collide with it.
_RESERVED_USER_ID = "*"
_P_LO = 1e-6
_P_HI = 1.0 - 1e-6
_MISSING: Any = object()
_DEFAULT = "default"
_REPR_LIMIT = 60

_DBL_MAX = sys.float_info.max

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_log = math.log
_exp = math.exp


def _show(value: object) -> str:
    """A short rendering of an offending value: dead-letter messages must stay small."""
    if isinstance(value, str) and len(value) > _REPR_LIMIT:
        return f"a string of {len(value)} characters"
    if isinstance(value, float):
        text = repr(value)  # orjson would print NaN as null
    else:
        try:
            text = orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = repr(value)
    if len(text) > _REPR_LIMIT:
        return f"{text[:_REPR_LIMIT]}…"
    return text


def _schema_error(message: str) -> InvalidInputError:
    return InvalidInputError("schema", message)


def _missing(name: str) -> InvalidInputError:
    return _schema_error(f"{name} is required")


def _bad_id(name: str, value: object) -> InvalidInputError:
    return _schema_error(
        f"{name} must be a string of 1-{_MAX_ID_CHARS} characters; got {_show(value)}"
    )


def _bad_int(name: str, value: object, maximum: int = _MAX_INT) -> InvalidInputError:
    return _schema_error(f"{name} must be an integer in [0, {maximum}]; got {_show(value)}")


def _user_id(obj: dict[str, Any]) -> str:
    value = _id(obj, "user_id")
    if value == _RESERVED_USER_ID:
        raise _schema_error(f"user_id {_RESERVED_USER_ID!r} is reserved (population posteriors)")
    return value


def _is_number(value: object) -> bool:
    # bool is an int subclass in Python but not a number in JSON Schema.
    t = type(value)
    if t is float or t is int:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name, _MISSING)
    if type(value) is str:
        if 0 < len(value) <= _MAX_ID_CHARS:
            return value
        raise _bad_id(name, value)
    if value is _MISSING:
        raise _missing(name)
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS:
        return str(value)
    raise _bad_id(name, value)


def _optional_id(obj: dict[str, Any], name: str, default: Any) -> Any:
    value = obj.get(name, _MISSING)
    if type(value) is str and 0 < len(value) <= _MAX_ID_CHARS:
        return value
    if value is _MISSING:
        return default
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS:
        return str(value)
    # null is not "absent": the schema says string, and silently defaulting would hide a
    # producer bug (e.g. a segment lookup that failed upstream).
    raise _bad_id(name, value)


def _uint(name: str, value: Any, maximum: int = _MAX_INT) -> int:
    t = type(value)
    if t is int:
        if 0 <= value <= maximum:
            return value
        raise _bad_int(name, value, maximum)
    # JSON Schema's "integer" is a mathematical integer: 1000.0 qualifies, 1.5 does not.
    # The range test comes before float(), which would overflow on a huge int.
    if (
        (t is float or (isinstance(value, (int, float)) and not isinstance(value, bool)))
        and 0 <= value <= maximum
        and float(value).is_integer()
    ):
        return int(value)
    raise _bad_int(name, value, maximum)


def _logit_of_score(score: float) -> float:
    # Clipped so a score of exactly 0 or 1 still has a finite logit (DESIGN §3 method table).
    p = _P_LO if score < _P_LO else (_P_HI if score > _P_HI else score)
    return _log(p / (1.0 - p))


_IMPRESSION_FIELDS = (
    "impression_id", "user_id", "item_id", "ts", "model_id", "score", "logit", "segment", "arm",
    "position", "context",
)


def _impression_factory() -> Callable[..., Impression]:
    """A constructor for ``Impression`` that skips the frozen dataclass ``__init__``
    (``slot_setters``: about half of the whole decode, ≈1.5 µs of ≈4.5 µs per impression on
    the reference machine, went to it); the ordinary constructor if the record changed."""
    setters = slot_setters(Impression, _IMPRESSION_FIELDS)
    if setters is None:
        return Impression
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = setters
    new = object.__new__

    def make(
        impression_id: str,
        user_id: str,
        item_id: str,
        ts: int,
        model_id: str,
        score: float,
        logit: float,
        segment: str,
        arm: str | None,
        position: int | None,
        context: dict[str, Any] | None = None,
    ) -> Impression:
        imp = new(Impression)
        s0(imp, impression_id)
        s1(imp, user_id)
        s2(imp, item_id)
        s3(imp, ts)
        s4(imp, model_id)
        s5(imp, score)
        s6(imp, logit)
        s7(imp, segment)
        s8(imp, arm)
        s9(imp, position)
        s10(imp, context)
        return imp

    return make


_new_impression = _impression_factory()


def _impression_fields(obj: object) -> tuple[Any, ...]:
    """The thorough check of an impression's fields, in a fixed order (first fault wins).

    Returns the normalised fields with score and logit type-checked but not range-checked
    (either may be ``_MISSING``); the caller applies the range rules shared with the fast path.
    """
    if not isinstance(obj, dict):
        raise _not_object(obj)
    impression_id = _id(obj, "impression_id")
    user_id = _user_id(obj)
    item_id = _id(obj, "item_id")
    ts = obj.get("ts", _MISSING)
    if ts is _MISSING:
        raise _missing("ts")
    ts = _uint("ts", ts, _MAX_TS)
    model_id = _optional_id(obj, "model_id", _DEFAULT)
    segment = _optional_id(obj, "segment", _DEFAULT)
    arm = _optional_id(obj, "arm", None)
    position = obj.get("position", _MISSING)
    position = None if position is _MISSING else _uint("position", position)
    context = obj.get("context", _MISSING)
    if context is not _MISSING and not isinstance(context, dict):
        raise _schema_error(f"context must be an object; got {_show(context)}")
    score = obj.get("score", _MISSING)
    logit = obj.get("logit", _MISSING)
    if score is not _MISSING and not _is_number(score):
        raise _schema_error(f"score must be a number; got {_show(score)}")
    if logit is not _MISSING and not _is_number(logit):
        raise _schema_error(f"logit must be a number; got {_show(logit)}")
    if score is _MISSING and logit is _MISSING:
        raise _schema_error("score or logit is required")
    return impression_id, user_id, item_id, ts, model_id, segment, arm, position, score, logit


class InputDecoder:
    """Turns raw input messages into validated ``Impression`` and ``Click`` records.

    Every rejection raises ``InvalidInputError`` whose ``reason`` is the dead-letter code:
    ``too_large`` (more than ``max_message_bytes``, checked before parsing), ``empty`` (no
    bytes, or whitespace only), ``invalid_json`` (not JSON, or not a JSON object), ``schema``
    (a field missing or of the wrong type or length, ``ts`` after year 9999, or the reserved
    ``user_id`` ``"*"``), ``score_range`` (score outside [0, 1] or a non-finite logit),
    ``key_mismatch`` (the Kafka key is not the ``user_id``) and ``future_ts`` (``ts`` more
    than ``max_future_ms`` after ``now_ms``). The key and clock checks run only when ``key`` /
    ``now_ms`` are given.

    ``context_fields`` names the fields of the message's ``context`` object to keep on the
    impression (``Impression.context``, for the ``contextual`` calibrator): a finite number
    or a string of 1-128 characters is kept, anything else (absent, null, a list, an
    object, a long string, ``context`` itself absent) is left out as missing: it never
    rejects a message. With none configured (the default) ``context`` is not read at all.

    Impressions always come out with both ``score`` and ``logit``. When only a score is
    given, ``logit = log(p / (1 - p))`` with ``p = clip(score, 1e-6, 1 - 1e-6)``. When a logit
    is given it wins: ``score = sigmoid(logit)``, except that a given score is kept when it is
    exactly the score this decoder would have derived that logit from; that makes decoding
    a fixed point on the decoder's own output (re-decoding a feedback message's impression
    fields gives back the same impression, even for a score of 0 or 1).

    >>> dec = InputDecoder()
    >>> imp = dec.decode_impression(
    ...     b'{"impression_id": "i1", "user_id": "u1", "item_id": "it", "ts": 1000,'
    ...     b' "logit": 0.0}', key=b"u1")
    >>> imp.score, imp.logit, imp.model_id, imp.segment
    (0.5, 0.0, 'default', 'default')
    >>> dec.decode_click(b'{"impression_id": "i1", "user_id": "u1", "ts": 1500}')
    Click(impression_id='i1', user_id='u1', ts=1500, item_id=None)
    >>> try:
    ...     dec.decode_impression(
    ...         b'{"impression_id": "i1", "user_id": "u1", "item_id": "it", "ts": 1000,'
    ...         b' "score": 1.5}')
    ... except InvalidInputError as err:
    ...     print(err.reason, "-", err)
    score_range - score must be a finite number in [0, 1]; got 1.5
    """

    __slots__ = ("_context_fields", "_max_future_ms", "_max_message_bytes")

    def __init__(
        self,
        max_message_bytes: int = 65536,
        max_future_ms: int = 3_600_000,
        context_fields: Sequence[str] = (),
    ) -> None:
        if type(max_message_bytes) is not int or max_message_bytes < 2:
            # 2 bytes is the smallest JSON object ("{}"); anything lower rejects everything.
            raise ConfigError(
                f"max_message_bytes must be an integer >= 2; got {max_message_bytes!r}"
            )
        if type(max_future_ms) is not int or max_future_ms < 0:
            raise ConfigError(f"max_future_ms must be an integer >= 0; got {max_future_ms!r}")
        self._max_message_bytes = max_message_bytes
        self._max_future_ms = max_future_ms
        self._context_fields = check_fields("context_fields", context_fields)

    @property
    def max_message_bytes(self) -> int:
        """Largest accepted message, in bytes."""
        return self._max_message_bytes

    @property
    def context_fields(self) -> tuple[str, ...]:
        """The ``context`` fields kept on each impression."""
        return self._context_fields

    @property
    def max_future_ms(self) -> int:
        """How far ``ts`` may lie ahead of ``now_ms`` before the event is ``future_ts``."""
        return self._max_future_ms

    # -- raw bytes -----------------------------------------------------------------------

    def decode_impression(
        self, raw: bytes, key: bytes | None = None, now_ms: int | None = None
    ) -> Impression:
        """Parse and validate one impression message (``key``: the Kafka key, if any)."""
        # _parse inlined for the common case: this is the hottest call in the worker.
        if raw is not None and len(raw) <= self._max_message_bytes:
            try:
                obj = _loads(raw)
            except _JSONDecodeError:
                obj = self._parse(raw)  # raises invalid_json with the parser's message
        else:
            obj = self._parse(raw)
        return self.impression_from_obj(obj, key, now_ms)

    def decode_click(
        self, raw: bytes, key: bytes | None = None, now_ms: int | None = None
    ) -> Click:
        """Parse and validate one click message (``key``: the Kafka key, if any)."""
        return self.click_from_obj(self._parse(raw), key, now_ms)

    def decode_replay_line(self, raw: bytes, now_ms: int | None = None) -> Impression | Click:
        """Parse one replay-file line: an impression or a click, chosen by its ``"type"``."""
        # _parse inlined for the common case, as in decode_impression (once per line).
        if raw is not None and len(raw) <= self._max_message_bytes:
            try:
                obj = _loads(raw)
            except _JSONDecodeError:
                obj = self._parse(raw)  # raises empty / invalid_json with their messages
        else:
            obj = self._parse(raw)
        return self.replay_line_from_obj(obj, now_ms)

    def _parse(self, raw: bytes) -> Any:
        if raw is None:
            # A null Kafka value (tombstone) on an input topic: not a message at all.
            raise InvalidInputError("invalid_json", "message value is null; expected a JSON object")
        if len(raw) > self._max_message_bytes:
            # Before parsing, so an oversized message costs nothing but a length check.
            raise InvalidInputError(
                "too_large",
                f"message must be at most {self._max_message_bytes} bytes; got {len(raw)}",
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            if not raw.strip():
                # Its own reason: a blank line in a file or an empty message is a
                # framing problem upstream, not a malformed event.
                raise InvalidInputError("empty", "message is empty or whitespace only") from None
            raise InvalidInputError("invalid_json", f"message is not valid JSON: {err}") from None

    # -- parsed objects ------------------------------------------------------------------

    def replay_line_from_obj(self, obj: object, now_ms: int | None = None) -> Impression | Click:
        """Validate an already-parsed replay line (as produced by a JSON parser)."""
        if type(obj) is not dict and not isinstance(obj, dict):
            raise _not_object(obj)
        kind = obj.get("type", _MISSING)
        if kind == "impression" and type(kind) is str:
            return self.impression_from_obj(obj, None, now_ms)
        if kind == "click" and type(kind) is str:
            return self.click_from_obj(obj, None, now_ms)
        if kind is _MISSING:
            raise _missing("type")
        raise _schema_error(f'type must be "impression" or "click"; got {_show(kind)}')

    def impression_from_obj(
        self, obj: object, key: bytes | None = None, now_ms: int | None = None
    ) -> Impression:
        """Validate an already-parsed impression (as produced by a JSON parser)."""
        # Fast path: one pass of cheap exact-type tests that accepts the common well-formed
        # message. Anything else (an error, or a valid but unusual form such as ts 1000.0)
        # goes through _impression_fields, which is thorough and names the first fault.
        fast = False
        if type(obj) is dict:
            try:
                # Subscripts, not get(): about twice as fast, and a missing key simply
                # leaves the fast path.
                impression_id: Any = obj["impression_id"]
                user_id: Any = obj["user_id"]
                item_id: Any = obj["item_id"]
                ts: Any = obj["ts"]
            except KeyError:
                pass
            else:
                get: Callable[..., Any] = obj.get
                model_id = get("model_id", _DEFAULT)
                segment = get("segment", _DEFAULT)
                arm = get("arm")
                position = get("position")
                score = get("score", _MISSING)
                logit = get("logit", _MISSING)
                # "x and len(x) <= N" tests 1 <= len(x) <= N: a str's truth test is cheaper
                # than a chained comparison, and this line runs for every event.
                if (
                    type(impression_id) is str
                    and impression_id
                    and len(impression_id) <= _MAX_ID_CHARS
                    and type(user_id) is str
                    and user_id
                    and len(user_id) <= _MAX_ID_CHARS
                    and user_id != _RESERVED_USER_ID
                    and type(item_id) is str
                    and item_id
                    and len(item_id) <= _MAX_ID_CHARS
                    and type(ts) is int
                    and 0 <= ts <= _MAX_TS
                    and type(model_id) is str
                    and model_id
                    and len(model_id) <= _MAX_ID_CHARS
                    and type(segment) is str
                    and segment
                    and len(segment) <= _MAX_ID_CHARS
                    # None from get() means absent only when the key is truly absent: an
                    # explicit null must take the slow path and be rejected.
                    and (
                        (type(arm) is str and arm and len(arm) <= _MAX_ID_CHARS)
                        or (arm is None and "arm" not in obj)
                    )
                    and (
                        (type(position) is int and 0 <= position <= _MAX_INT)
                        or (position is None and "position" not in obj)
                    )
                    and (score is _MISSING or type(score) is float)
                    and (logit is _MISSING or type(logit) is float)
                    and (score is not _MISSING or logit is not _MISSING)
                    and ("context" not in obj or type(obj["context"]) is dict)
                ):
                    fast = True
        if not fast:
            (
                impression_id, user_id, item_id, ts, model_id, segment, arm, position, score,
                logit,
            ) = _impression_fields(obj)

        # Range after type: a message wrong in both ways is reported by its structural fault.
        if score is not _MISSING and not 0.0 <= score <= 1.0:  # also false for NaN
            raise InvalidInputError(
                "score_range", f"score must be a finite number in [0, 1]; got {_show(score)}"
            )
        # The logit helpers are inlined below: function calls are a visible share of the
        # per-event cost at this rate.
        if logit is _MISSING:
            if type(score) is not float:
                score = float(score)
            p = _P_LO if score < _P_LO else (_P_HI if score > _P_HI else score)
            logit = _log(p / (1.0 - p))
        else:
            # An exact comparison with the largest doubles (as the schema's bounds do) rejects
            # infinities and NaN, and ints too large to convert, before float() could overflow.
            if not -_DBL_MAX <= logit <= _DBL_MAX:
                raise InvalidInputError(
                    "score_range", f"logit must be a finite number; got {_show(logit)}"
                )
            if type(logit) is not float:
                logit = float(logit)
            if score is not _MISSING and _logit_of_score(score) == logit:
                score = float(score)
            elif logit >= 0.0:
                # Two branches so exp never sees a large positive argument (no overflow).
                score = 1.0 / (1.0 + _exp(-logit))
            else:
                e = _exp(logit)
                score = e / (1.0 + e)

        if key is not None:
            try:
                if key.decode() != user_id:
                    raise _key_mismatch(key, user_id)
            except UnicodeDecodeError:
                raise _key_mismatch(key, user_id) from None
        if now_ms is not None and ts > now_ms + self._max_future_ms:
            raise _future(ts, now_ms, self._max_future_ms)
        if self._context_fields:
            return _new_impression(
                impression_id, user_id, item_id, ts, model_id, score, logit, segment, arm,
                position, _kept_context(obj, self._context_fields),  # type: ignore[arg-type]
            )
        return _new_impression(
            impression_id, user_id, item_id, ts, model_id, score, logit, segment, arm, position
        )

    def click_from_obj(
        self, obj: object, key: bytes | None = None, now_ms: int | None = None
    ) -> Click:
        """Validate an already-parsed click (as produced by a JSON parser)."""
        if type(obj) is not dict and not isinstance(obj, dict):
            raise _not_object(obj)
        impression_id = _id(obj, "impression_id")
        user_id = _user_id(obj)
        ts = obj.get("ts", _MISSING)
        if type(ts) is not int or not 0 <= ts <= _MAX_TS:
            if ts is _MISSING:
                raise _missing("ts")
            ts = _uint("ts", ts, _MAX_TS)
        item_id = _optional_id(obj, "item_id", None)
        if key is not None:
            _check_key(key, user_id)
        if now_ms is not None and ts > now_ms + self._max_future_ms:
            raise _future(ts, now_ms, self._max_future_ms)
        return Click(impression_id, user_id, ts, item_id)


def _kept_context(obj: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """The configured fields of a validated impression's ``context`` that ``keeps`` accepts;
    None when there are none (so the record stays as small as without the setting)."""
    context = obj.get("context")
    if type(context) is not dict and not isinstance(context, dict):
        return None
    kept = {name: context[name] for name in names if name in context and keeps(context[name])}
    return kept or None


def _not_object(obj: object) -> InvalidInputError:
    kind = "null" if obj is None else type(obj).__name__
    return InvalidInputError("invalid_json", f"message must be a JSON object; got {kind}")


def _check_key(key: bytes, user_id: str) -> None:
    try:
        matches = key.decode("utf-8") == user_id
    except UnicodeDecodeError:
        matches = False
    if not matches:
        raise _key_mismatch(key, user_id)


def _key_mismatch(key: bytes, user_id: str) -> InvalidInputError:
    # A wrong key means the message sits on the wrong partition: its user's state lives on
    # another worker, so processing it here would split the user's join state.
    return InvalidInputError(
        "key_mismatch",
        f"message key must equal user_id {_show(user_id)}; got {_show(_key_text(key))}",
    )


def _key_text(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)


def _future(ts: int, now_ms: int, max_future_ms: int) -> InvalidInputError:
    return InvalidInputError(
        "future_ts",
        f"ts must be at most {max_future_ms} ms after now ({now_ms}); got {ts}",
    )
