"""The hand-written decoder accepts and rejects exactly what the input JSON Schemas do.

The schema is the independent reference: every example file and several hundred generated
near-valid messages go through both ``jsonschema`` and ``InputDecoder``, and the verdicts must
match. The decoder's ``score_range`` and ``schema`` reasons are both "rejected" here; the
context checks (key, clock, size) are outside the schema and not exercised.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tests.unit.core.codec.schema_support import INPUT_SCHEMAS, examples, validator
from tests.unit.core.codec.strategies import (
    CLICK_FIELDS,
    EDGE_VALUES,
    IMPRESSION_FIELDS,
    nasty,
    numbers,
    valid_clicks,
    valid_impressions,
)
from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError

DECODER = InputDecoder()

# Why each invalid input example is rejected. Every invalid example must be listed, so a new
# example has to say which reason code the decoder gives it.
EXPECTED_REASON: dict[str, dict[str, str]] = {
    "impression": {
        "missing_impression_id.json": "schema",
        "missing_user_id.json": "schema",
        "missing_item_id.json": "schema",
        "missing_ts.json": "schema",
        "neither_score_nor_logit.json": "schema",
        "score_above_one.json": "score_range",
        "score_negative.json": "score_range",
        "score_above_one_with_valid_logit.json": "score_range",
        "bool_as_score.json": "schema",
        "score_string.json": "schema",
        "score_null.json": "schema",
        "logit_string.json": "schema",
        "logit_bool_with_valid_score.json": "schema",
        "ts_float.json": "schema",
        "ts_negative.json": "schema",
        "ts_string.json": "schema",
        "ts_bool.json": "schema",
        "ts_above_max_safe_integer.json": "schema",
        "empty_impression_id.json": "schema",
        "id_too_long.json": "schema",
        "user_id_number.json": "schema",
        "item_id_null.json": "schema",
        "model_id_null.json": "schema",
        "segment_empty.json": "schema",
        "arm_number.json": "schema",
        "position_negative.json": "schema",
        "position_float.json": "schema",
        "context_not_object.json": "schema",
        "top_level_array.json": "invalid_json",
        "nan_score.txt": "invalid_json",
        "infinite_logit.txt": "invalid_json",
        "truncated_json.txt": "invalid_json",
    },
    "click": {
        "missing_impression_id.json": "schema",
        "missing_user_id.json": "schema",
        "missing_ts.json": "schema",
        "ts_float.json": "schema",
        "ts_negative.json": "schema",
        "ts_bool.json": "schema",
        "ts_null.json": "schema",
        "empty_user_id.json": "schema",
        "id_too_long.json": "schema",
        "item_id_empty.json": "schema",
        "item_id_null.json": "schema",
        "impression_id_array.json": "schema",
        "top_level_string.json": "invalid_json",
        "not_json.txt": "invalid_json",
    },
    "replay_line": {
        "missing_type.json": "schema",
        "unknown_type.json": "schema",
        "type_uppercase.json": "schema",
        "type_null.json": "schema",
        "type_number.json": "schema",
        "impression_missing_item_id.json": "schema",
        "impression_score_above_one.json": "score_range",
        "click_ts_float.json": "schema",
        "click_missing_user_id.json": "schema",
        "top_level_array.json": "invalid_json",
    },
}


def decode_raw(name: str, raw: bytes) -> Any:
    if name == "impression":
        return DECODER.decode_impression(raw)
    if name == "click":
        return DECODER.decode_click(raw)
    return DECODER.decode_replay_line(raw)


def decode_obj(name: str, obj: object) -> Any:
    if name == "impression":
        return DECODER.impression_from_obj(obj)
    if name == "click":
        return DECODER.click_from_obj(obj)
    return DECODER.replay_line_from_obj(obj)


class SubDict(dict):
    """A dict subclass: the decoder sends it down its thorough (slow) path."""


def verdict(name: str, obj: object) -> tuple[bool, Any]:
    """Accepted (with the record) or rejected (with the reason), via both decoder paths."""
    try:
        fast: tuple[bool, Any] = (True, decode_obj(name, obj))
    except InvalidInputError as err:
        fast = (False, err.reason)
    # The fast path must be an exact shortcut of the thorough one: same record or same reason.
    slow_input = SubDict(obj) if type(obj) is dict else obj
    try:
        slow: tuple[bool, Any] = (True, decode_obj(name, slow_input))
    except InvalidInputError as err:
        slow = (False, err.reason)
    assert fast == slow
    return fast


def has_nonfinite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_nonfinite(v) for v in value)
    return False


def assert_agree(name: str, obj: object) -> None:
    schema_ok = validator(name).is_valid(obj)
    accepted, detail = verdict(name, obj)
    assert accepted == schema_ok, (obj, detail)
    if currently_in_test_context():  # statistics for --hypothesis-show-statistics
        event("accepted" if accepted else f"rejected: {detail}")
    if not has_nonfinite(obj):
        # orjson would write NaN/inf as null, so only finite objects take the bytes path.
        try:
            via_bytes: tuple[bool, Any] = (True, decode_raw(name, orjson.dumps(obj)))
        except InvalidInputError as err:
            via_bytes = (False, err.reason)
        assert via_bytes == (accepted, detail)


EXAMPLE_CASES = [
    pytest.param(name, kind, path, id=f"{name}/{kind}/{path.name}")
    for name in INPUT_SCHEMAS
    for kind in ("valid", "invalid")
    for path in examples(name, kind)
]


@pytest.mark.parametrize(("name", "kind", "path"), EXAMPLE_CASES)
def test_examples_agree_with_schema(name: str, kind: str, path) -> None:
    raw = path.read_bytes()
    if kind == "valid":
        obj = orjson.loads(raw)
        assert validator(name).is_valid(obj)
        assert_agree(name, obj)
        decode_raw(name, raw)  # the file's own bytes decode too
        return
    with pytest.raises(InvalidInputError) as caught:
        decode_raw(name, raw)
    assert caught.value.reason == EXPECTED_REASON[name][path.name]
    if path.suffix == ".json":
        obj = orjson.loads(raw)
        assert not validator(name).is_valid(obj)
        assert_agree(name, obj)


@pytest.mark.parametrize("name", INPUT_SCHEMAS)
def test_every_invalid_example_has_an_expected_reason(name: str) -> None:
    assert sorted(p.name for p in examples(name, "invalid")) == sorted(EXPECTED_REASON[name])


# -- generated near-valid messages ----------------------------------------------------------


def mutated(base: st.SearchStrategy[dict[str, Any]], fields: list[str]) -> st.SearchStrategy[Any]:
    numeric_fields = [f for f in ("score", "logit", "ts", "position") if f in fields]
    mutation = st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(fields), st.none()),
        st.tuples(st.just("set"), st.sampled_from(fields), nasty),
        # Numbers in numeric fields: where range and integrality bite (score_range vs schema).
        st.tuples(st.just("set"), st.sampled_from(numeric_fields), numbers),
    )

    def apply(obj: dict[str, Any], mutations: list[tuple[str, str, Any]]) -> dict[str, Any]:
        out = dict(obj)
        for op, field, value in mutations:
            if op == "drop":
                out.pop(field, None)
            else:
                out[field] = value
        return out

    messages = st.builds(apply, base, st.lists(mutation, max_size=3))
    # One case in ten: a top level that is not an object at all.
    return st.integers(0, 9).flatmap(lambda i: nasty if i == 0 else messages)


def with_type(base: st.SearchStrategy[dict[str, Any]], kind: str) -> st.SearchStrategy[Any]:
    return base.map(lambda obj: {**obj, "type": kind})


AGREEMENT = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@AGREEMENT
@given(obj=mutated(valid_impressions, IMPRESSION_FIELDS))
def test_generated_impressions_agree_with_schema(obj: Any) -> None:
    assert_agree("impression", obj)


@AGREEMENT
@given(obj=mutated(valid_clicks, CLICK_FIELDS))
def test_generated_clicks_agree_with_schema(obj: Any) -> None:
    assert_agree("click", obj)


@AGREEMENT
@given(
    obj=mutated(
        with_type(valid_impressions, "impression") | with_type(valid_clicks, "click"),
        IMPRESSION_FIELDS,
    )
)
def test_generated_replay_lines_agree_with_schema(obj: Any) -> None:
    assert_agree("replay_line", obj)


@settings(max_examples=200, deadline=None)
@given(obj=valid_impressions)
def test_generated_valid_impressions_are_accepted(obj: dict[str, Any]) -> None:
    # Guards the generator: unmutated messages must be valid, or the mutation tests above
    # would only ever compare rejections.
    assert validator("impression").is_valid(obj)
    assert verdict("impression", obj)[0]


# -- every boundary value in every field, deterministically ---------------------------------

BASE = {
    "impression": {
        "impression_id": "imp-1", "user_id": "u-1", "item_id": "it-1", "ts": 1_767_225_600_000,
        "model_id": "m", "score": 0.25, "segment": "s", "arm": "a", "position": 2,
    },
    "click": {"impression_id": "imp-1", "user_id": "u-1", "ts": 1_767_225_600_000, "item_id": "i"},
}
BASE["impression_logit"] = {**BASE["impression"], "logit": -1.5}
BASE["impression_only_logit"] = {
    k: v for k, v in BASE["impression_logit"].items() if k != "score"
}


@pytest.mark.parametrize("base_name", sorted(BASE))
def test_every_edge_value_in_every_field_agrees(base_name: str) -> None:
    name = "click" if base_name == "click" else "impression"
    fields = CLICK_FIELDS if name == "click" else IMPRESSION_FIELDS
    base = BASE[base_name]
    for field in fields:
        dropped = {k: v for k, v in base.items() if k != field}
        assert_agree(name, dropped)
        for value in EDGE_VALUES:
            obj = {**base, field: value}
            assert_agree(name, obj)
            kind = "click" if name == "click" else "impression"
            assert_agree("replay_line", {**obj, "type": kind} if field != "type" else obj)
