"""Garbage-collector settings for long runs over a large live heap (the worker, a replay).

The pipeline keeps a large heap of long-lived state (the join's pending keys, users'
buffers, posteriors). At CPython's default thresholds, full collections over it took about a
tenth of a replay and stalled the worker's event loop for seconds (9.6 s measured under
faust, long enough to expire a consumer-group session) while finding almost nothing:
reference counting frees the per-event garbage, the collector is only needed for cycles, and
rarer collections still find them. Both runtimes use the thresholds below.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: Allocations (net of frees) between young-generation collections (CPython: 700), young
#: collections per middle one and middle ones per full one (CPython: 10 and 10).
GC_THRESHOLDS = (50_000, 20, 100)
#: A collection at least this long is logged as a warning (it stalls the event loop).
GC_SLOW_S = 1.0

_started = 0.0


def _time_collections(phase: str, info: dict[str, int]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    elapsed = time.perf_counter() - _started
    if elapsed >= GC_SLOW_S:
        log.warning(
            "gc: generation %s collection took %.1f s (%s collected); the event loop was "
            "stalled", info["generation"], elapsed, info["collected"],
        )


def tune_for_worker() -> None:
    """For a long-running process: everything alive now (modules, settings) is frozen out
    of the collector's scans, the thresholds are raised and slow collections are logged.
    Call once, after start-up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _time_collections not in gc.callbacks:
        gc.callbacks.append(_time_collections)
    log.info("gc: %s objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())


@contextlib.contextmanager
def rare_collections() -> Iterator[None]:
    """The raised thresholds for the block (a replay), then the caller's again.

    >>> before = gc.get_threshold()
    >>> with rare_collections():
    ...     gc.get_threshold() == GC_THRESHOLDS
    True
    >>> gc.get_threshold() == before
    True
    """
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
