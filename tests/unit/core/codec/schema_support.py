"""Shared loading of ``schemas/``: the JSON Schema files, their examples and validators."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[4] / "schemas"
EXAMPLES_DIR = SCHEMA_DIR / "examples"

SCHEMA_NAMES = (
    "impression",
    "click",
    "replay_line",
    "feedback",
    "calibrator_version",
    "alert",
    "posterior_snapshot",
    "tier_change",
    "dead_letter",
)
INPUT_SCHEMAS = ("impression", "click", "replay_line")


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def registry() -> Registry:
    # replay_line refers to impression and click by relative $ref against its $id.
    return Registry().with_resources(
        (load_schema(name)["$id"], Resource.from_contents(load_schema(name)))
        for name in SCHEMA_NAMES
    )


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), registry=registry())


def examples(name: str, kind: str) -> list[Path]:
    """The example files of one schema; ``kind`` is ``"valid"`` or ``"invalid"``."""
    return sorted(p for p in (EXAMPLES_DIR / name / kind).iterdir() if p.is_file())
