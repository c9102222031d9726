"""`recal report`: a self-contained HTML report from replay outputs or the output topics.

``build_report`` reads a directory in replay's layout (``recal replay --out DIR``) and writes
one HTML file; ``dump_topics`` writes such a directory from the worker's output topics.
File I/O lives here, not in ``worker/core``.
"""

from worker.report.build import build_report
from worker.report.dump import dump_topics

__all__ = ["build_report", "dump_topics"]
