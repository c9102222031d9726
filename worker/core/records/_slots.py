"""Fast construction of the slotted, frozen record dataclasses on the hot path."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any


def slot_setters(
    cls: type, names: tuple[str, ...]
) -> tuple[Callable[[Any, Any], None], ...] | None:
    """The member-descriptor setters of ``cls``'s fields, in ``names`` order, or None.

    A frozen dataclass sets each field through ``object.__setattr__``; writing the slots
    through their member descriptors on ``object.__new__(cls)`` gives the identical object
    in about half the time (a record is built per event). The setters are only returned
    while ``cls`` still is exactly what that assumes (a slotted dataclass with the fields
    ``names`` in this order and no ``__post_init__``); otherwise the caller keeps the
    ordinary constructor, so a change to the record costs speed, not correctness.

    >>> @dataclasses.dataclass(frozen=True, slots=True)
    ... class Pair:
    ...     a: int
    ...     b: str
    >>> s_a, s_b = slot_setters(Pair, ("a", "b"))
    >>> p = object.__new__(Pair)
    >>> s_a(p, 1); s_b(p, "x")
    >>> p == Pair(1, "x")
    True
    >>> slot_setters(Pair, ("b", "a")) is None
    True
    """
    ok = (
        dataclasses.is_dataclass(cls)
        and tuple(f.name for f in dataclasses.fields(cls)) == names
        and not hasattr(cls, "__post_init__")
        and all(isinstance(cls.__dict__.get(n), types.MemberDescriptorType) for n in names)
    )
    if not ok:
        return None
    return tuple(cls.__dict__[n].__set__ for n in names)
