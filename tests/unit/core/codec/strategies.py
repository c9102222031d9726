"""Hypothesis strategies for input messages: valid ones and the raw material to break them."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

MAX_INT = 2**53 - 1
# ts stops at 9999-12-31T23:59:59.999Z, so that ts + W stays below 2^53 in every output.
MAX_TS = 253_402_300_799_999
DBL_MAX = 1.7976931348623157e308

ids = st.text(min_size=1, max_size=128)
# "*" is the posterior store's population key, so no input may use it as a user id.
user_ids = ids.filter(lambda s: s != "*")
epoch_ms = st.integers(0, MAX_TS)
contexts = st.dictionaries(
    st.text(max_size=4), st.integers(-5, 5) | st.text(max_size=3), max_size=2
)

# Values chosen to sit on every boundary the schema draws, plus generic junk.
EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 0.0, -0.0, 1.0, 0.5, 1.5, -1e-300, 5e-324, 1e-7,
    1.0000000000000002, 0.9999999999999999, 1e300, -1e300, DBL_MAX, -DBL_MAX,
    1_767_225_600_000, 1_767_225_600_000.0, 1_767_225_600_000.5, MAX_INT, MAX_INT + 1,
    float(MAX_INT), float(MAX_INT + 1), MAX_TS, MAX_TS + 1, float(MAX_TS + 1), 2**63 - 1,
    -(2**63), 2**64 - 1, 1e20, math.inf, -math.inf, "", "x", "0.5", "*", "x" * 128, "x" * 129,
    "é" * 128, "é" * 129, "🎬" * 129,
    "impression", "click", "Impression", [], ["u1"], {}, {"a": 1},
]
# orjson writes integers in [-2^63, 2^64 - 1]; wider ones are not in its JSON domain.
json_ints = st.integers(-(2**63), 2**64 - 1)
nasty = st.one_of(
    st.sampled_from(EDGE_VALUES),
    json_ints,
    st.floats(allow_nan=False),
    st.text(max_size=130),
    st.booleans(),
    st.none(),
    st.lists(json_ints, max_size=2),
    st.dictionaries(st.text(max_size=3), json_ints, max_size=2),
)

IMPRESSION_FIELDS = [
    "impression_id", "user_id", "item_id", "ts", "model_id", "score", "logit", "segment",
    "arm", "position", "context", "type", "unknown_extra",
]
CLICK_FIELDS = ["impression_id", "user_id", "ts", "item_id", "type", "unknown_extra"]


def _score_fields() -> st.SearchStrategy[dict[str, Any]]:
    score = st.floats(0, 1) | st.sampled_from([0, 1])
    logit = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-50, 50)
    return st.one_of(
        st.fixed_dictionaries({"score": score}),
        st.fixed_dictionaries({"logit": logit}),
        st.fixed_dictionaries({"score": score, "logit": logit}),
    )


valid_impressions = st.builds(
    lambda base, sl: {**base, **sl},
    st.fixed_dictionaries(
        {"impression_id": ids, "user_id": user_ids, "item_id": ids, "ts": epoch_ms},
        optional={
            "model_id": ids,
            "segment": ids,
            "arm": ids,
            "position": st.integers(0, MAX_INT),
            "context": contexts,
            "unknown_extra": nasty,
        },
    ),
    _score_fields(),
)
valid_clicks = st.fixed_dictionaries(
    {"impression_id": ids, "user_id": user_ids, "ts": epoch_ms},
    optional={"item_id": ids, "unknown_extra": nasty},
)


numbers = st.one_of(
    st.sampled_from([v for v in EDGE_VALUES if type(v) in (int, float)]),
    st.floats(allow_nan=False),
    st.floats(-2, 2),
    json_ints,
)
