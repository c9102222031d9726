"""README.md as data: its sections and fenced blocks, for the tests that keep it true
(``tests/unit/test_readme.py``, ``tests/integration/test_readme_commands.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\S*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_SCHEMA_MARK = re.compile(r"<!-- schema: (\w+) -->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language tag, text, line number and the section it is in."""

    lang: str
    text: str
    line: int
    section: str
    schema: str | None  # from a ``<!-- schema: NAME -->`` line right before the fence


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, in order."""
    text = readme_text() if text is None else text
    out = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^#{2,3} (.+)$", before, re.MULTILINE)
        previous = before.rstrip("\n").rsplit("\n", 1)[-1]
        mark = _SCHEMA_MARK.search(previous)
        out.append(Block(
            lang=match.group(1), text=match.group(2), line=before.count("\n") + 1,
            section=headings[-1] if headings else "", schema=mark.group(1) if mark else None,
        ))
    return out


def section(title: str, text: str | None = None) -> str:
    """The text of the ``## title`` section (up to the next ``## ``)."""
    text = readme_text() if text is None else text
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]
