"""Mergeable sketches for global and segment statistics (DESIGN §2, §5)."""

from worker.core.sketches.logit_histogram import LogitHistogram

__all__ = ["LogitHistogram"]
