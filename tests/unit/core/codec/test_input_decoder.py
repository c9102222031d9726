"""InputDecoder: reason codes, the score/logit rules, normalisation and round trips.

Numbers are checked against scipy.special (expit/logit) as the independent reference; the
accept/reject agreement with the JSON Schemas lives in test_schema_agreement.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.codec.schema_support import examples, validator
from tests.unit.core.codec.strategies import valid_clicks, valid_impressions
from worker.core.codec import input_decoder
from worker.core.codec.input_decoder import InputDecoder
from worker.core.codec.output_encoder import encode_json
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

TS = 1_767_225_600_000
DBL_MAX = 1.7976931348623157e308
IMP: dict[str, Any] = {"impression_id": "imp-1", "user_id": "u-1", "item_id": "it-1", "ts": TS}
CLICK: dict[str, Any] = {"impression_id": "imp-1", "user_id": "u-1", "ts": TS + 5_000}


DROP = object()  # a field value meaning "leave this field out"


def imp(**fields: Any) -> dict[str, Any]:
    """A valid impression with score 0.25, with ``fields`` changed (DROP removes one)."""
    out = {**IMP, "score": 0.25, **fields}
    return {k: v for k, v in out.items() if v is not DROP}


def enc(obj: Any) -> bytes:
    return orjson.dumps(obj)


def reason_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(InvalidInputError) as caught:
        call(*args, **kwargs)
    return caught.value.reason, str(caught.value)


def ref_logit(score: float) -> float:
    return float(scipy.special.logit(min(max(score, 1e-6), 1 - 1e-6)))


def ref_sigmoid(logit: float) -> float:
    return float(scipy.special.expit(logit))


# -- construction ---------------------------------------------------------------------------


def test_defaults() -> None:
    dec = InputDecoder()
    assert dec.max_message_bytes == 65536
    assert dec.max_future_ms == 3_600_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_message_bytes": 0},
        {"max_message_bytes": 1},
        {"max_message_bytes": -5},
        {"max_message_bytes": 1.5e3},
        {"max_message_bytes": True},
        {"max_message_bytes": "65536"},
        {"max_future_ms": -1},
        {"max_future_ms": 1.0},
        {"max_future_ms": None},
        {"max_future_ms": False},
    ],
)
def test_constructor_rejects_bad_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        InputDecoder(**kwargs)


def test_constructor_accepts_edges() -> None:
    assert InputDecoder(max_message_bytes=2, max_future_ms=0).max_future_ms == 0


# -- reason codes ---------------------------------------------------------------------------


class TestTooLarge:
    def test_limit_is_inclusive_and_checked_before_parsing(self) -> None:
        raw = enc(imp())
        dec = InputDecoder(max_message_bytes=len(raw))
        assert dec.decode_impression(raw).impression_id == "imp-1"
        small = InputDecoder(max_message_bytes=len(raw) - 1)
        assert reason_of(small.decode_impression, raw)[0] == "too_large"
        # Garbage that is too large is too_large, not invalid_json: size is checked first.
        garbage = b"\xff" * (len(raw) + 1)
        assert reason_of(dec.decode_impression, garbage) == (
            "too_large",
            f"message must be at most {len(raw)} bytes; got {len(raw) + 1}",
        )

    def test_applies_to_every_entry_point(self) -> None:
        dec = InputDecoder(max_message_bytes=16)
        big = enc({**CLICK, "type": "click"})
        assert reason_of(dec.decode_click, big)[0] == "too_large"
        assert reason_of(dec.decode_replay_line, big)[0] == "too_large"


class TestInvalidJson:
    @pytest.mark.parametrize("raw", [b"", b" ", b"\t\r\n "])
    def test_empty_or_whitespace_only(self, raw: bytes) -> None:
        assert reason_of(InputDecoder().decode_replay_line, raw)[0] == "empty"

    @pytest.mark.parametrize(
        "raw",
        [
            b"{",
            b"not json",
            b'{"score": NaN}',
            b'{"logit": Infinity}',
            b'{"logit": 1e400}',
            b'{"logit": -1e400}',
            b"\xff\xfe",
            b'{"impression_id": "\\ud800"}',  # lone surrogate
            b"{'single': 'quotes'}",
            b'{"a": 1,}',
        ],
    )
    def test_unparseable(self, raw: bytes) -> None:
        dec = InputDecoder()
        for call in (dec.decode_impression, dec.decode_click, dec.decode_replay_line):
            reason, message = reason_of(call, raw)
            assert reason == "invalid_json"
            assert message.startswith("message is not valid JSON: ")

    @pytest.mark.parametrize(
        ("raw", "kind"), [(b"[]", "list"), (b"null", "null"), (b'"x"', "str"), (b"1", "int")]
    )
    def test_top_level_not_an_object(self, raw: bytes, kind: str) -> None:
        dec = InputDecoder()
        assert reason_of(dec.decode_impression, raw) == (
            "invalid_json",
            f"message must be a JSON object; got {kind}",
        )
        assert reason_of(dec.decode_click, raw)[0] == "invalid_json"
        assert reason_of(dec.decode_replay_line, raw)[0] == "invalid_json"

    def test_null_kafka_value(self) -> None:
        dec = InputDecoder()
        assert reason_of(dec.decode_impression, None)[0] == "invalid_json"
        assert reason_of(dec.decode_click, None)[0] == "invalid_json"

    @pytest.mark.parametrize(
        "path",
        [p for name in ("impression", "click") for p in examples(name, "invalid")
         if p.suffix == ".txt"],
        ids=lambda p: f"{p.parent.parent.name}/{p.name}",
    )
    def test_raw_text_examples(self, path: Any) -> None:
        dec = InputDecoder()
        decode = dec.decode_click if path.parent.parent.name == "click" else dec.decode_impression
        assert reason_of(decode, path.read_bytes())[0] == "invalid_json"


class TestSchema:
    @pytest.mark.parametrize(
        ("obj", "message"),
        [
            (imp(user_id=DROP), "user_id is required"),
            (imp(ts=DROP), "ts is required"),
            (imp(score=DROP), "score or logit is required"),
            (imp(impression_id=""), 'impression_id must be a string of 1-128 characters; got ""'),
            (
                imp(item_id="x" * 129),
                "item_id must be a string of 1-128 characters; got a string of 129 characters",
            ),
            (imp(user_id=42), "user_id must be a string of 1-128 characters; got 42"),
            (imp(segment=None), "segment must be a string of 1-128 characters; got null"),
            (imp(ts=1.5), "ts must be an integer in [0, 253402300799999]; got 1.5"),
            (imp(ts=-1), "ts must be an integer in [0, 253402300799999]; got -1"),
            (imp(ts=True), "ts must be an integer in [0, 253402300799999]; got true"),
            (imp(ts="1"), 'ts must be an integer in [0, 253402300799999]; got "1"'),
            (
                imp(ts=253_402_300_800_000),
                "ts must be an integer in [0, 253402300799999]; got 253402300800000",
            ),
            (imp(user_id="*"), "user_id '*' is reserved (population posteriors)"),
            (imp(position=2.5), "position must be an integer in [0, 9007199254740991]; got 2.5"),
            (imp(score=True), "score must be a number; got true"),
            (imp(score="0.5"), 'score must be a number; got "0.5"'),
            (imp(logit=None), "logit must be a number; got null"),
            (imp(context=[1]), "context must be an object; got [1]"),
        ],
    )
    def test_messages(self, obj: dict[str, Any], message: str) -> None:
        assert reason_of(InputDecoder().decode_impression, enc(obj)) == ("schema", message)

    def test_long_values_are_summarised_in_messages(self) -> None:
        _, message = reason_of(InputDecoder().decode_impression, enc(imp(score=["x" * 1000])))
        assert len(message) < 120

    def test_click(self) -> None:
        dec = InputDecoder()
        assert reason_of(dec.decode_click, enc({**CLICK, "ts": 1.25}))[0] == "schema"
        assert reason_of(dec.decode_click, enc({**CLICK, "item_id": None}))[0] == "schema"
        assert reason_of(dec.decode_click, enc({"user_id": "u", "ts": 1})) == (
            "schema",
            "impression_id is required",
        )


class TestScoreRange:
    @pytest.mark.parametrize("score", [1.5, -0.1, 1.0000000000000002, -5e-324, 2, -1, 1e300])
    def test_score_outside_unit_interval(self, score: float) -> None:
        reason, message = reason_of(InputDecoder().decode_impression, enc(imp(score=score)))
        assert reason == "score_range"
        assert message == f"score must be a finite number in [0, 1]; got {score!r}"

    def test_invalid_score_is_rejected_even_when_logit_is_valid(self) -> None:
        raw = enc(imp(score=1.5, logit=0.0))
        assert reason_of(InputDecoder().decode_impression, raw)[0] == "score_range"

    @pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400, -(10**309)])
    def test_non_finite_logit_from_parsed_objects(self, value: float) -> None:
        # JSON text cannot carry these (invalid_json above); already-parsed objects can.
        reason, message = reason_of(InputDecoder().impression_from_obj, imp(logit=value))
        assert reason == "score_range"
        assert message.startswith("logit must be a finite number; got ")

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_non_finite_score_from_parsed_objects(self, value: float) -> None:
        assert reason_of(InputDecoder().impression_from_obj, imp(score=value)) == (
            "score_range",
            f"score must be a finite number in [0, 1]; got {value!r}",
        )

    def test_structural_fault_wins_over_range(self) -> None:
        raw = enc(imp(score=2.0, user_id=DROP))
        assert reason_of(InputDecoder().decode_impression, raw) == ("schema", "user_id is required")


class TestKeyMismatch:
    def test_matching_and_absent_keys_pass(self) -> None:
        dec = InputDecoder()
        assert dec.decode_impression(enc(imp()), key=b"u-1").user_id == "u-1"
        assert dec.decode_impression(enc(imp()), key=None).user_id == "u-1"
        assert dec.decode_click(enc(CLICK), key=b"u-1").user_id == "u-1"
        unicode = imp(user_id="ユーザー")
        assert dec.decode_impression(enc(unicode), key="ユーザー".encode()).user_id == "ユーザー"

    @pytest.mark.parametrize("key", [b"u-2", b"", b"u-1 ", b"U-1", b"\xff\xfe"])
    def test_mismatch(self, key: bytes) -> None:
        dec = InputDecoder()
        reason, message = reason_of(dec.decode_impression, enc(imp()), key=key)
        assert reason == "key_mismatch"
        assert message.startswith('message key must equal user_id "u-1"; got ')
        assert reason_of(dec.decode_click, enc(CLICK), key=key)[0] == "key_mismatch"

    def test_slow_path_checks_the_key_too(self) -> None:
        # ts 1000.0 is valid but takes the thorough path.
        raw = enc(imp(ts=1000.0))
        assert reason_of(InputDecoder().decode_impression, raw, key=b"x")[0] == "key_mismatch"

    def test_schema_and_range_come_before_the_key(self) -> None:
        dec = InputDecoder()
        assert reason_of(dec.decode_impression, enc(imp(ts=-1)), key=b"x")[0] == "schema"
        assert reason_of(dec.decode_impression, enc(imp(score=9)), key=b"x")[0] == "score_range"


class TestFutureTs:
    def test_boundary_is_inclusive(self) -> None:
        dec = InputDecoder(max_future_ms=60_000)
        now = TS - 60_000
        assert dec.decode_impression(enc(imp()), now_ms=now).ts == TS
        assert reason_of(dec.decode_impression, enc(imp()), now_ms=now - 1) == (
            "future_ts",
            f"ts must be at most 60000 ms after now ({now - 1}); got {TS}",
        )

    def test_every_entry_point(self) -> None:
        dec = InputDecoder(max_future_ms=0)
        now = TS - 1
        assert reason_of(dec.decode_click, enc({**CLICK, "ts": TS}), now_ms=now)[0] == "future_ts"
        line = enc({**imp(), "type": "impression"})
        assert reason_of(dec.decode_replay_line, line, now_ms=now)[0] == "future_ts"
        assert dec.decode_replay_line(line).ts == TS  # no clock, no check

    def test_past_events_are_not_future(self) -> None:
        dec = InputDecoder(max_future_ms=0)
        assert dec.decode_impression(enc(imp(ts=0)), now_ms=TS).ts == 0

    def test_key_comes_before_clock(self) -> None:
        dec = InputDecoder(max_future_ms=0)
        assert reason_of(dec.decode_impression, enc(imp()), key=b"x", now_ms=0)[0] == (
            "key_mismatch"
        )


# -- the replay dispatch ----------------------------------------------------------------------


class TestReplayLine:
    def test_dispatch(self) -> None:
        dec = InputDecoder()
        got = dec.decode_replay_line(enc({**imp(), "type": "impression"}))
        assert isinstance(got, Impression)
        assert got == dec.decode_impression(enc(imp()))
        click = dec.decode_replay_line(enc({**CLICK, "type": "click", "item_id": "it"}))
        assert click == Click("imp-1", "u-1", TS + 5_000, "it")

    @pytest.mark.parametrize(
        ("kind", "message"),
        [
            (DROP, "type is required"),
            ("view", 'type must be "impression" or "click"; got "view"'),
            ("Click", 'type must be "impression" or "click"; got "Click"'),
            (None, 'type must be "impression" or "click"; got null'),
            (["click"], 'type must be "impression" or "click"; got ["click"]'),
        ],
    )
    def test_bad_type(self, kind: Any, message: str) -> None:
        line = {**CLICK} if kind is DROP else {**CLICK, "type": kind}
        assert reason_of(InputDecoder().decode_replay_line, enc(line)) == ("schema", message)

    def test_click_line_with_impression_fields_is_a_click(self) -> None:
        line = {**imp(), "type": "click"}
        assert isinstance(InputDecoder().decode_replay_line(enc(line)), Click)


# -- values ---------------------------------------------------------------------------------


class TestScoreAndLogit:
    def test_score_only(self) -> None:
        got = InputDecoder().decode_impression(enc(imp(score=0.25)))
        assert got.score == 0.25
        assert got.logit == pytest.approx(math.log(1 / 3), rel=1e-15)

    def test_logit_only(self) -> None:
        got = InputDecoder().decode_impression(enc(imp(score=DROP, logit=-3.1)))
        assert got.logit == -3.1
        assert got.score == pytest.approx(ref_sigmoid(-3.1), rel=1e-15)

    def test_logit_wins_when_both_are_given(self) -> None:
        got = InputDecoder().decode_impression(enc(imp(score=0.9, logit=-3.1)))
        assert got.logit == -3.1
        assert got.score == pytest.approx(ref_sigmoid(-3.1), rel=1e-15)

    def test_a_consistent_pair_keeps_the_given_score(self) -> None:
        # Re-decoding the decoder's own output (e.g. a feedback message) changes nothing,
        # even for score 0, whose clipped logit maps back to 1e-6 rather than 0.
        dec = InputDecoder()
        for score in (0.0, 1e-9, 0.3, 0.042, 0.999, 1.0):
            derived = dec.decode_impression(enc(imp(score=score)))
            again = dec.decode_impression(enc(imp(score=score, logit=derived.logit)))
            assert again == derived
            assert again.score == score

    @pytest.mark.parametrize("score", [0, 0.0, 1, 1.0])
    def test_score_zero_and_one_give_finite_clipped_logits(self, score: float) -> None:
        got = InputDecoder().decode_impression(enc(imp(score=score)))
        assert type(got.score) is float
        assert got.score == score
        assert math.isfinite(got.logit)
        expected = ref_logit(1e-6) if score == 0 else ref_logit(1 - 1e-6)
        assert got.logit == pytest.approx(expected, rel=1e-12)
        # log(1e-6) - log1p(-1e-6), the same clip written another way; 1 - 1e-6 is not
        # exactly representable, hence the looser tolerance.
        assert abs(got.logit) == pytest.approx(13.815509557963773, rel=1e-10)

    @pytest.mark.parametrize(
        "logit",
        [-DBL_MAX, -1e300, -1000.0, -745.2, -709.0, -50.0, -1e-300, 0.0, -0.0, 1e-300, 36.7,
         50.0, 709.8, 1000.0, 1e300, DBL_MAX, 3, -3],
    )
    def test_sigmoid_is_stable_for_extreme_logits(self, logit: float) -> None:
        got = InputDecoder().decode_impression(enc(imp(score=DROP, logit=logit)))
        assert 0.0 <= got.score <= 1.0
        assert got.logit == float(logit)
        assert type(got.logit) is float
        assert got.score == pytest.approx(ref_sigmoid(logit), rel=1e-14, abs=1e-300)

    @settings(max_examples=300, deadline=None)
    @given(score=st.floats(0, 1))
    def test_logit_of_any_score_matches_reference(self, score: float) -> None:
        got = InputDecoder().impression_from_obj(imp(score=score))
        assert got.score == score
        assert got.logit == pytest.approx(ref_logit(score), rel=1e-13, abs=1e-13)

    @settings(max_examples=300, deadline=None)
    @given(logit=st.floats(allow_nan=False, allow_infinity=False))
    def test_score_of_any_logit_matches_reference(self, logit: float) -> None:
        got = InputDecoder().impression_from_obj(imp(score=DROP, logit=logit))
        assert got.logit == logit
        assert got.score == pytest.approx(ref_sigmoid(logit), rel=1e-14, abs=1e-300)

    @settings(max_examples=300, deadline=None)
    @given(score=st.floats(0, 1), logit=st.floats(allow_nan=False, allow_infinity=False))
    def test_logit_wins_for_any_pair(self, score: float, logit: float) -> None:
        got = InputDecoder().impression_from_obj(imp(score=score, logit=logit))
        assert got.logit == logit
        # Either the score follows the logit, or the given score was exactly the one this
        # logit is derived from (and is then kept so that decoding is idempotent).
        follows = got.score == pytest.approx(ref_sigmoid(logit), rel=1e-14, abs=1e-300)
        kept = got.score == score and ref_logit(score) == pytest.approx(logit, rel=1e-13)
        assert follows or kept


class TestNormalisation:
    def test_defaults(self) -> None:
        got = InputDecoder().decode_impression(enc(imp()))
        assert got == Impression(
            "imp-1", "u-1", "it-1", TS, "default", 0.25, got.logit, "default", None, None
        )

    def test_optional_fields_pass_through(self) -> None:
        raw = enc(imp(model_id="m", segment="s", arm="comedy", position=0, context={"a": 1}))
        got = InputDecoder().decode_impression(raw)
        assert (got.model_id, got.segment, got.arm, got.position) == ("m", "s", "comedy", 0)

    def test_unknown_fields_and_context_are_ignored(self) -> None:
        dec = InputDecoder()
        plain = dec.decode_impression(enc(imp()))
        extra = dec.decode_impression(enc(imp(context={"x": [1]}, foo=None, type="impression")))
        assert extra == plain

    @pytest.mark.parametrize("text", [b"1767225600000.0", b"1.7672256e12", b"17672256E5"])
    def test_integral_numbers_are_integers(self, text: bytes) -> None:
        # JSON Schema "integer" accepts 1767225600000.0 (jsonschema agrees); it becomes an int.
        raw = b'{"impression_id":"i","user_id":"u","item_id":"t","score":0.5,"position":3.0,"ts":'
        got = InputDecoder().decode_impression(raw + text + b"}")
        assert got.ts == int(float(text)) and type(got.ts) is int
        assert got.position == 3 and type(got.position) is int
        assert validator("impression").is_valid(orjson.loads(raw + text + b"}"))

    def test_integral_float_ts_in_click(self) -> None:
        got = InputDecoder().decode_click(b'{"impression_id":"i","user_id":"u","ts":5.0}')
        assert got.ts == 5 and type(got.ts) is int

    def test_id_length_counts_code_points(self) -> None:
        dec = InputDecoder()
        ok = "🎬" * 128  # 512 UTF-8 bytes, 128 code points
        assert dec.decode_impression(enc(imp(item_id=ok))).item_id == ok
        assert reason_of(dec.decode_impression, enc(imp(item_id=ok + "x")))[0] == "schema"

    def test_dict_subclass_goes_through_the_slow_path_with_same_result(self) -> None:
        class Sub(dict):
            pass

        dec = InputDecoder()
        obj = imp(arm="a", position=1, logit=0.5)
        assert dec.impression_from_obj(Sub(obj)) == dec.impression_from_obj(obj)


# -- records: the fast constructor and round trips ---------------------------------------------


def test_fast_constructor_is_active_and_builds_a_real_impression() -> None:
    make = input_decoder._new_impression
    assert make is not Impression  # the record still matches the fast path's assumptions
    args = ("i", "u", "t", 1, "m", 0.5, 0.0, "s", "a", 2)
    fast, normal = make(*args), Impression(*args)
    assert fast == normal
    assert hash(fast) == hash(normal)
    assert repr(fast) == repr(normal)
    assert type(fast) is Impression
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.score = 0.1  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(obj=valid_impressions)
def test_impression_round_trip(obj: dict[str, Any]) -> None:
    dec = InputDecoder()
    first = dec.impression_from_obj(obj)
    again = dec.decode_impression(encode_json(first), key=first.user_id.encode())
    assert again == first
    # ...and the record's own dict is valid input and valid feedback material.
    assert validator("impression").is_valid(first.to_dict())
    assert Impression.from_dict(first.to_dict()) == first


@settings(max_examples=200, deadline=None)
@given(obj=valid_clicks)
def test_click_round_trip(obj: dict[str, Any]) -> None:
    dec = InputDecoder()
    first = dec.click_from_obj(obj)
    assert dec.decode_click(encode_json(first), key=first.user_id.encode()) == first
    assert validator("click").is_valid(first.to_dict())


@settings(max_examples=200, deadline=None)
@given(
    obj=valid_impressions,
    label=st.sampled_from([0, 1]),
    delay=st.integers(0, 3_600_000),
)
def test_feedback_of_any_decoded_impression_validates(
    obj: dict[str, Any], label: int, delay: int
) -> None:
    got = InputDecoder().impression_from_obj(obj)
    # Keep label_ts = ts + delay inside the schema's 2^53 - 1 bound.
    got = dataclasses.replace(got, ts=min(got.ts, 2**53 - 1 - 3_600_000))
    if label:
        feedback = Feedback(got, 1, got.ts + delay, got.ts + delay, delay)
    else:
        feedback = Feedback(got, 0, got.ts + 1_800_000, None, None)
    data = orjson.loads(encode_json(feedback))
    assert list(validator("feedback").iter_errors(data)) == []


# -- context fields (the contextual calibrator's inputs) ------------------------------------

CONTEXT = {"device": "mobile", "depth": 3, "ratio": 0.25, "flag": True, "none": None,
           "tags": ["a"], "obj": {"k": 1}, "long": "x" * 129, "empty": "", "big": 1e30}


@pytest.mark.parametrize("fast", [True, False])
def test_configured_context_fields_are_kept_when_usable(fast: bool) -> None:
    dec = InputDecoder(context_fields=("device", "depth", "ratio", "flag", "none", "tags",
                                       "obj", "long", "empty", "big", "absent"))
    # ts 1000.0 is valid but leaves the fast path: both paths must keep the same fields.
    obj = imp(context=CONTEXT, **({} if fast else {"ts": float(TS)}))
    got = dec.decode_impression(enc(obj))
    assert got.context == {"device": "mobile", "depth": 3, "ratio": 0.25, "big": 1e30}
    assert got.serving_context() == {"ts": TS, "segment": "default", "device": "mobile",
                                     "depth": 3, "ratio": 0.25, "big": 1e30}
    assert dec.impression_from_obj(obj) == got


@pytest.mark.parametrize("context", [DROP, {}, {"other": 1}, {"device": None},
                                     {"device": ["mobile"]}])
def test_no_usable_context_field_leaves_context_unset(context: Any) -> None:
    dec = InputDecoder(context_fields=("device",))
    got = dec.decode_impression(enc(imp(context=context)))
    assert got.context is None
    assert "context" not in got.to_dict()


def test_without_configured_fields_context_is_not_read() -> None:
    plain = InputDecoder().decode_impression(enc(imp(context=CONTEXT)))
    assert plain.context is None
    assert plain == InputDecoder().decode_impression(enc(imp()))
    # A context that is not an object is still a schema error, configured or not.
    for dec in (InputDecoder(), InputDecoder(context_fields=("device",))):
        assert reason_of(dec.decode_impression, enc(imp(context=[1])))[0] == "schema"


def test_kept_context_survives_feedback_and_its_schema() -> None:
    dec = InputDecoder(context_fields=("device", "depth"))
    impression = dec.decode_impression(enc(imp(context=CONTEXT)))
    fb = Feedback(impression, 1, TS + 10, TS + 10, 10)
    data = orjson.loads(encode_json(fb.to_dict()))
    assert data["context"] == {"device": "mobile", "depth": 3}
    assert list(validator("feedback").iter_errors(data)) == []
    assert Feedback.from_dict(data) == fb


@pytest.mark.parametrize("fields", [("ts",), ("segment",), ("a", "a"), ("",), "device"])
def test_invalid_context_fields_are_refused(fields: Any) -> None:
    with pytest.raises(ConfigError):
        InputDecoder(context_fields=fields)


@settings(max_examples=200, deadline=None)
@given(valid_impressions)
def test_every_valid_impression_decodes_with_context_fields(obj: dict[str, Any]) -> None:
    # Keeping context fields never turns a schema-valid input into a rejection.
    names = tuple(obj["context"])[:3] if isinstance(obj.get("context"), dict) else ()
    names = tuple(n for n in names if n and len(n) <= 128 and n not in
                  ("ts", "hour", "position", "segment")) or ("device",)
    with_ctx = InputDecoder(context_fields=names).impression_from_obj(obj)
    without = InputDecoder().impression_from_obj(obj)
    assert dataclasses.replace(with_ctx, context=None) == without
