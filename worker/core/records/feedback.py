"""Labeled feedback: an impression joined with its (possible) click, once the label is final."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.core.records._slots import slot_setters
from worker.core.records.impression import Impression


@dataclass(frozen=True, slots=True)
class Feedback:
    """One mature label for one impression (DESIGN §3 "feedback", §4).

    ``label`` is 1 when a click arrived with ``click.ts - impression.ts <= W``; ``label_ts`` is
    the event time at which the label became final (the click's time for positives, the
    impression's ``ts + W`` for negatives); ``delay_ms`` is the click delay (skew clamps to 0).

    >>> imp = Impression("i1", "u1", "it", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> fb = Feedback(imp, 1, 1_500, 1_500, 500)
    >>> fb.to_dict()["label"], fb.to_dict()["delay_ms"]
    (1, 500)
    """

    impression: Impression
    label: int
    label_ts: int
    click_ts: int | None
    delay_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        """The feedback message: the impression's fields plus the label fields."""
        out = self.impression.to_dict()
        out["label"] = self.label
        out["label_ts"] = self.label_ts
        out["click_ts"] = self.click_ts
        out["delay_ms"] = self.delay_ms
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feedback:
        """Inverse of ``to_dict`` for trusted data."""
        return cls(
            Impression.from_dict(data),
            data["label"],
            data["label_ts"],
            data["click_ts"],
            data["delay_ms"],
        )


def _feedback_factory() -> Callable[[Impression, int, int, int | None, int | None], Feedback]:
    """``Feedback(...)`` without the frozen dataclass ``__init__`` (``slot_setters``): the
    join builds one per label; the ordinary constructor if the record changed.

    >>> imp = Impression("i1", "u1", "it", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> new_feedback(imp, 0, 1_500, None, None) == Feedback(imp, 0, 1_500, None, None)
    True
    """
    setters = slot_setters(
        Feedback, ("impression", "label", "label_ts", "click_ts", "delay_ms")
    )
    if setters is None:
        return Feedback
    s0, s1, s2, s3, s4 = setters
    new = object.__new__

    def make(
        impression: Impression,
        label: int,
        label_ts: int,
        click_ts: int | None,
        delay_ms: int | None,
    ) -> Feedback:
        fb = new(Feedback)
        s0(fb, impression)
        s1(fb, label)
        s2(fb, label_ts)
        s3(fb, click_ts)
        s4(fb, delay_ms)
        return fb

    return make


#: ``Feedback(impression, label, label_ts, click_ts, delay_ms)`` for the join's hot path.
new_feedback = _feedback_factory()
