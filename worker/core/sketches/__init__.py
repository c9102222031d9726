"""Sketches of the labelled stream: mergeable decayed histograms for global and segment
statistics (DESIGN §2, §5), and exact rings of the newest events."""

from worker.core.sketches.event_ring import EventRing
from worker.core.sketches.logit_histogram import LogitHistogram

__all__ = ["EventRing", "LogitHistogram"]
