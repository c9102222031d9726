"""The JSON Schemas in ``schemas/`` are well-formed draft 2020-12 and mean what they say.

Every valid example validates, every invalid example fails, and the records the core writes
(feedback, dead letters) validate against their output schemas.
"""

from __future__ import annotations

import base64
import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tests.unit.core.codec.schema_support import (
    EXAMPLES_DIR,
    SCHEMA_DIR,
    SCHEMA_NAMES,
    examples,
    load_schema,
    validator,
)
from worker.core.records.dead_letter import DeadLetter
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

ALL_EXAMPLES = [
    pytest.param(name, kind, path, id=f"{name}/{kind}/{path.name}")
    for name in SCHEMA_NAMES
    for kind in ("valid", "invalid")
    for path in examples(name, kind)
]


def test_schema_files_are_exactly_the_documented_set() -> None:
    found = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))
    assert found == sorted(f"{name}.schema.json" for name in SCHEMA_NAMES)
    assert sorted(p.name for p in EXAMPLES_DIR.iterdir()) == sorted(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_schema_has_several_valid_and_invalid_examples(name: str) -> None:
    assert len(examples(name, "valid")) >= 3
    assert len(examples(name, "invalid")) >= 5


@pytest.mark.parametrize(("name", "kind", "path"), ALL_EXAMPLES)
def test_example_verdict(name: str, kind: str, path) -> None:
    raw = path.read_bytes()
    if path.suffix == ".txt":
        # Raw-text examples hold what JSON cannot carry (NaN, 1e400, truncated text): they
        # must not even parse, so no schema ever sees them. The decoder tests check that
        # they are dead-lettered as invalid_json.
        assert kind == "invalid"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        return
    assert path.suffix == ".json"
    instance = orjson.loads(raw)
    assert instance == json.loads(raw)  # the two parsers agree on every example
    errors = list(validator(name).iter_errors(instance))
    if kind == "valid":
        assert errors == [], [e.message for e in errors]
    else:
        assert errors, f"{path.name} should be rejected"


# -- the records the core writes validate against their output schemas ----------------------

TS = 1_767_225_600_000


def _impression(score: float = 0.042, **kw) -> Impression:
    fields = {
        "impression_id": "imp-1",
        "user_id": "u-42",
        "item_id": "item-7",
        "ts": TS,
        "model_id": "default",
        "score": score,
        "logit": math.log(score / (1 - score)),
        "segment": "default",
        "arm": None,
        "position": None,
    }
    fields.update(kw)
    return Impression(**fields)


FEEDBACKS = [
    Feedback(_impression(), 1, TS + 45_000, TS + 45_000, 45_000),
    Feedback(_impression(), 0, TS + 1_800_000, None, None),
    Feedback(_impression(0.5, arm="comedy", position=0, segment="new"), 1, TS, TS - 10, 0),
    Feedback(_impression(0.9), 0, TS + 1_800_000, TS + 1_900_000, 1_900_000),
]


@pytest.mark.parametrize("feedback", FEEDBACKS)
def test_feedback_to_dict_validates(feedback: Feedback) -> None:
    data = orjson.loads(orjson.dumps(feedback.to_dict()))
    assert list(validator("feedback").iter_errors(data)) == []


def test_feedback_schema_rejects_a_positive_without_click() -> None:
    bad = Feedback(_impression(), 1, TS + 45_000, None, None)
    assert not validator("feedback").is_valid(bad.to_dict())


DEAD_LETTERS = [
    DeadLetter(
        "recal.impressions", 0, 7, "u1", "invalid_json", "not JSON", b"{", "2026-01-01T00:00:00Z"
    ),
    DeadLetter(
        "events.jsonl", None, None, None, "schema", "no ts", b"", "2026-01-01T00:00:00+00:00"
    ),
    DeadLetter(
        "recal.clicks", 3, 0, "", "key_mismatch", "x", bytes(range(256)), "2026-01-01T00:00:00.1Z"
    ),
]


@pytest.mark.parametrize("letter", DEAD_LETTERS)
def test_dead_letter_to_dict_validates(letter: DeadLetter) -> None:
    assert list(validator("dead_letter").iter_errors(letter.to_dict())) == []


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=64))
def test_dead_letter_payload_pattern_accepts_every_base64_encoding(payload: bytes) -> None:
    letter = DeadLetter("t", 0, 0, None, "schema", "e", payload, "2026-01-01T00:00:00Z")
    data = letter.to_dict()
    assert validator("dead_letter").is_valid(data)
    assert base64.b64decode(data["payload_b64"], validate=True) == payload


@pytest.mark.parametrize("text", ["ew", "ew=", "e===", "ab cd", "ab-_"])
def test_dead_letter_payload_pattern_rejects_malformed_base64(text: str) -> None:
    letter = DeadLetter("t", 0, 0, None, "schema", "e", b"", "2026-01-01T00:00:00Z").to_dict()
    letter["payload_b64"] = text
    assert not validator("dead_letter").is_valid(letter)
