"""README.md stays true: every JSON example is valid against its schema, the topics are the
worker's, every alert kind the core can emit has a runbook entry, every repository path it
names exists, and every fenced block is one the command test knows how to run."""

from __future__ import annotations

import json
import re

import pytest

from tests.readme_support import ROOT, Block, blocks, readme_text, section
from tests.unit.core.codec.schema_support import SCHEMA_NAMES, validator
from worker.core.alerts import KINDS
from worker.runtime.topics import ALL_TOPICS

JSON_BLOCKS = [b for b in blocks() if b.lang == "json"]


def test_every_fenced_block_has_a_known_language() -> None:
    # sh and python blocks are run by tests/integration/test_readme_commands.py, json blocks
    # validated here; an untagged or other block would escape both.
    for block in blocks():
        assert block.lang in ("sh", "python", "json"), (
            f"README.md:{block.line}: fenced block tagged {block.lang!r}; use sh, python or json"
        )


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=lambda b: f"line{b.line}-{b.schema}")
def test_json_examples_are_valid_against_their_schema(block: Block) -> None:
    assert block.schema in SCHEMA_NAMES, (
        f"README.md:{block.line}: a json block needs a `<!-- schema: NAME -->` line before it "
        f"(NAME one of {SCHEMA_NAMES}); got {block.schema!r}"
    )
    errors = sorted(validator(block.schema).iter_errors(json.loads(block.text)), key=str)
    assert not errors, f"README.md:{block.line}: {[e.message for e in errors]}"


def test_every_message_kind_has_an_example() -> None:
    assert {b.schema for b in JSON_BLOCKS} == set(SCHEMA_NAMES)


def test_topics_table_lists_the_topics_the_worker_creates() -> None:
    text = section("Topics and messages")
    listed = re.findall(r"^\| `recal\.(\w+)` \|", text, re.MULTILINE)
    assert listed == list(ALL_TOPICS)
    # No other recal.<name> topic is presented as existing anywhere in the README, except
    # the sketch aggregation, which is named only as not built yet.
    named = set(re.findall(r"`recal\.(\w+)`", readme_text()))
    assert named - set(ALL_TOPICS) <= {"sketches"}
    for line in readme_text().splitlines():
        if "recal.sketches" in line:
            assert re.search(r"until|not built|is built", line, re.IGNORECASE), line


def _emitted_kinds() -> set[str]:
    """Alert kinds named at the core's ``_observe(`` calls (every alert goes through it)."""
    found: set[str] = set()
    for path in (ROOT / "worker" / "core").rglob("*.py"):
        found |= set(re.findall(r"_observe\(\s*\"(\w+)\"", path.read_text(encoding="utf-8")))
    return found


def test_every_alert_kind_has_a_runbook_entry() -> None:
    assert _emitted_kinds() <= set(KINDS) and _emitted_kinds(), _emitted_kinds()
    text = section("Runbook: alerts")
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", text, re.MULTILINE)
    assert [r[0] for r in rows] == list(KINDS)
    for kind, meaning, action, check in rows:
        assert min(len(meaning), len(action), len(check)) > 10, kind
    # The alert message description names the same kinds.
    assert all(f"`{kind}`" in section("Topics and messages") for kind in KINDS)


def test_paths_named_in_the_readme_exist() -> None:
    text = readme_text()
    paths = set(re.findall(
        r"`((?:worker|bench|schemas|tests|\.ci)/[\w./-]*|Makefile|Dockerfile|docker-compose\.yml"
        r"|pyproject\.toml)`", text))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"README.md names files that are not in the repository: {missing}"
    # A design file outside the repository is only mentioned with that explanation.
    for match in re.finditer(r"DESIGN\.md", text):
        around = text[max(0, match.start() - 300): match.end() + 300]
        assert "outside" in around and "repository" in around


def test_benchmark_figures_are_quoted_from_results() -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    table = section("Scaling guide")
    figures = re.findall(r"\d[\d,]*(?:\.\d+)?(?: (?:events|lines)/s| MB| ms| s)", table)
    assert len(figures) >= 6
    for figure in figures:
        number = figure.split(" ")[0]
        assert number in results, f"{figure!r} is not in bench/RESULTS.md"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_internal_links_point_at_headings() -> None:
    text = readme_text()
    anchors = {_slug(h) for h in re.findall(r"^#{1,4} (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, sorted(links - anchors)
