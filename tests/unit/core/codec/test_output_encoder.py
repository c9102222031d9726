"""encode_json: compact orjson bytes, and never a silent null for NaN or infinity."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from worker.core.codec.output_encoder import encode_json
from worker.core.records.click import Click
from worker.core.records.dead_letter import DeadLetter
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

IMP = Impression("i1", "u1", "it", 1_000, "default", 0.5, 0.0, "default", "comedy", 2)


@pytest.mark.parametrize(
    "record",
    [
        IMP,
        Click("i1", "u1", 2_000, "it"),
        Feedback(IMP, 1, 1_500, 1_500, 500),
        DeadLetter("recal.clicks", 0, 7, None, "invalid_json", "not JSON", b"{\xff", "t"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_records_encode_as_their_to_dict(record) -> None:
    out = encode_json(record)
    assert json.loads(out) == record.to_dict()  # the stdlib parser as the reference
    assert b" " not in out.replace(b"not JSON", b"")  # compact


def test_plain_values_pass_through() -> None:
    assert encode_json({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'.encode()
    assert encode_json([]) == b"[]"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"ece": math.nan}, "$.ece"),
        ({"m": {"x": [0.1, math.inf]}}, "$.m.x[1]"),
        ([{"q": -math.inf}], "$[0].q"),
    ],
)
def test_non_finite_numbers_are_refused(value, path) -> None:
    with pytest.raises(ValueError, match=f"non-finite number at {re.escape(path)}"):
        encode_json(value)


def test_non_finite_in_a_record_is_refused() -> None:
    bad = Impression("i1", "u1", "it", 1_000, "default", math.nan, 0.0, "default", None, None)
    with pytest.raises(ValueError, match=r"\$\.score"):
        encode_json(bad)


def test_unserialisable_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode_json({"n": np.float64(0.5)})
