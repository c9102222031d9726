"""Batch reference for the attribution join: labels computed from the whole event set.

The streaming join (``worker.core.join.attribution_join``) must agree with these functions
on every stream whose events arrive at most ``allowed_lateness_ms`` behind the max event
time seen so far and whose clicks are stamped at most ``window_ms`` before their
impression (a larger skew may orphan a click that arrived before its impression; the
oracle, which sees everything at once, still counts it as delay 0).
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

Key = tuple[str, str]


def _split(
    events: Iterable[Impression | Click],
) -> tuple[dict[Key, Impression], dict[Key, list[Click]]]:
    impressions: dict[Key, Impression] = {}
    clicks: dict[Key, list[Click]] = {}
    for event in events:
        key = (event.user_id, event.impression_id)
        if isinstance(event, Impression):
            # Duplicates count once; the first one is the one the stream joins.
            impressions.setdefault(key, event)
        else:
            clicks.setdefault(key, []).append(event)
    return impressions, clicks


def oracle_labels(events: Iterable[Impression | Click], window_ms: int) -> dict[Key, int]:
    """(user_id, impression_id) -> label: 1 iff some click of the same user and impression
    has ``max(0, click.ts - imp.ts) <= window_ms``. Clicks without an impression are ignored.

    >>> imp = Impression("i1", "u1", "it", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> other = Impression("i2", "u1", "it", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> oracle_labels([imp, other, Click("i1", "u1", 900, None), Click("i2", "u2", 1_001, None)],
    ...               window_ms=100)
    {('u1', 'i1'): 1, ('u1', 'i2'): 0}
    """
    impressions, clicks = _split(events)
    out: dict[Key, int] = {}
    for key, imp in impressions.items():
        deadline = imp.ts + window_ms
        # A click stamped before its impression has delay 0, which is within any window.
        out[key] = int(any(c.ts <= deadline for c in clicks.get(key, ())))
    return out


def oracle_feedback(events: Iterable[Impression | Click], window_ms: int) -> set[Feedback]:
    """The expected feedback of every impression, for streams where each impression has at
    most one distinct click (repeats of that click with the same ``ts`` are fine); raises
    ``ValueError`` otherwise, because which of several clicks is attributed depends on
    arrival order.

    >>> imp = Impression("i1", "u1", "it", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> [(f.label, f.label_ts, f.click_ts, f.delay_ms)
    ...  for f in oracle_feedback([imp, Click("i1", "u1", 1_050, None)], window_ms=100)]
    [(1, 1050, 1050, 50)]
    >>> [(f.label, f.label_ts, f.click_ts) for f in oracle_feedback([imp], window_ms=100)]
    [(0, 1100, None)]
    """
    impressions, clicks = _split(events)
    out: set[Feedback] = set()
    for key, imp in impressions.items():
        stamps = {c.ts for c in clicks.get(key, ())}
        if len(stamps) > 1:
            raise ValueError(
                f"impression {key!r} has {len(stamps)} distinct clicks; oracle_feedback "
                "needs at most one"
            )
        deadline = imp.ts + window_ms
        if stamps and (cts := next(iter(stamps))) <= deadline:
            out.add(Feedback(imp, 1, max(cts, imp.ts), cts, max(0, cts - imp.ts)))
        else:
            out.add(Feedback(imp, 0, deadline, None, None))
    return out
