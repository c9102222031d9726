"""What one call into the attribution join produced (DESIGN §4)."""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression


class _FrozenList(list[Any]):
    """An empty list that refuses to grow.

    ``JoinStep.EMPTY`` is shared by every call that produced nothing (most calls: this is
    the hot path, and not allocating three lists per event is measurable). A caller that
    appended to it would leak data into every later empty step, so mutation fails loudly.
    """

    __slots__ = ()

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("JoinStep lists are read-only")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


#: The one shared empty list that refuses to grow (``JoinStep.EMPTY``, ``Outputs.EMPTY``).
FROZEN_EMPTY: list[Any] = _FrozenList()


class JoinStep:
    """The outputs of one ``AttributionJoin`` call, in deterministic order.

    ``feedback`` holds mature labels (positives as soon as impression and click have both
    arrived; negatives in (deadline, arrival sequence) order when the watermark passes
    their deadline). ``orphans`` holds clicks whose impression never came, each with the
    opaque ``ref`` the runtime passed in (for the ``orphan_click`` dead letter).
    ``late_clicks`` holds clicks beyond the window or after their impression was final.
    ``future`` holds events the clock guard rejected (stamped too far ahead of the
    partition's clock and never confirmed), each with its ``ref``, for the ``future_ts``
    dead letter. ``released`` holds events the guard had held back and this call applied
    (a confirmed clock jump), in the order applied: a runtime that feeds accepted events to
    later stages (the monitor) feeds these now, not when they arrived.

    Treat the lists as read-only: calls that produced nothing return the shared
    ``JoinStep.EMPTY``, whose lists raise on mutation.

    >>> step = JoinStep()
    >>> step is JoinStep.EMPTY, bool(step), step.feedback
    (False, False, [])
    >>> bool(JoinStep.EMPTY), len(JoinStep.EMPTY.orphans)
    (False, 0)
    """

    __slots__ = ("feedback", "future", "late_clicks", "orphans", "released")

    EMPTY: ClassVar[JoinStep]

    feedback: list[Feedback]
    orphans: list[tuple[Click, object]]
    late_clicks: list[Click]
    future: list[tuple[Impression | Click, object]]
    released: list[Impression | Click]

    def __init__(
        self,
        feedback: list[Feedback] | None = None,
        orphans: list[tuple[Click, object]] | None = None,
        late_clicks: list[Click] | None = None,
        future: list[tuple[Impression | Click, object]] | None = None,
        released: list[Impression | Click] | None = None,
    ) -> None:
        self.feedback = FROZEN_EMPTY if feedback is None else feedback
        self.orphans = FROZEN_EMPTY if orphans is None else orphans
        self.late_clicks = FROZEN_EMPTY if late_clicks is None else late_clicks
        self.future = FROZEN_EMPTY if future is None else future
        self.released = FROZEN_EMPTY if released is None else released

    def __bool__(self) -> bool:
        """True when the step carries any output."""
        return bool(
            self.feedback or self.orphans or self.late_clicks or self.future or self.released
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JoinStep):
            return NotImplemented
        return (
            list(self.feedback) == list(other.feedback)
            and list(self.orphans) == list(other.orphans)
            and list(self.late_clicks) == list(other.late_clicks)
            and list(self.future) == list(other.future)
            and list(self.released) == list(other.released)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"JoinStep(feedback={list(self.feedback)!r}, orphans={list(self.orphans)!r}, "
            f"late_clicks={list(self.late_clicks)!r}, future={list(self.future)!r}, "
            f"released={list(self.released)!r})"
        )


JoinStep.EMPTY = JoinStep()
