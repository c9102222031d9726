"""The pure core: plain objects, no I/O, no faust/aiokafka/asyncio, no logging setup.

``merge`` means one thing on every state class (``LogitHistogram``, ``OnlineCalibration``,
``CoverageTracker``, ``BetaPosterior``, ``FeedbackStall``): ``a.merge(b)`` returns a *new*
object holding the evidence of both, as if one object had seen both streams, and mutates
neither ``a`` nor ``b``. It raises ``ConfigError`` when the hyper-parameters differ and
``TypeError`` for another class. It is commutative and associative (up to float rounding),
so ``out = out.merge(part)`` folds partitions in any order.
"""
