"""The hyper-parameters of the recalibration policy (DESIGN §5 "Policy"), validated once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from worker.core.calibrators.context_features import check_edges, check_fields
from worker.core.calibrators.contextual import MAX_HARMONICS
from worker.core.checks import check_int, check_positive
from worker.core.errors import ConfigError

_METHODS = ("temperature", "platt", "isotonic")
# Online learners the policy can hold (``online_learner``'s registry has their code).
ONLINE_METHODS = ("platt", "contextual")


@dataclass(frozen=True)
class PolicyConfig:
    """Every knob of ``RecalibrationPolicy``; invalid values raise ``ConfigError`` at once.

    Cadence and data:

    - ``recalibrate_every``: refit a model's global and segment scopes every N mature
      feedback events of that model (DESIGN default 1,000).
    - ``holdout_fraction``: share of events (by a salted hash of ``impression_id``, so the
      split is deterministic and the same on every worker) kept out of training and used to
      score candidates; ``holdout_salt`` names the split.
    - ``holdout_capacity``: newest holdout events kept per scope (a ring buffer). The
      default is 20,000 because the paired test needs ~4,400 holdout events to see a gain
      of 0.0015 nats/event at z = 2 (an online-Platt map over the raw model on the
      realistic stream, 4 % CTR); 5,000 saw it about half the time.
    - ``half_life_ms``: event-time half-life of the decayed training sketch (``None``: no
      decay). The default, 24 h, lets a slow drift fade out over days; an abrupt change is
      handled by the change path below, which restarts the sketch at the change point.
    - ``recent_window``: newest training events per scope that the change test looks at;
      ``train_buffer`` (>= ``recent_window``) raw training events are kept per scope to
      locate a change point and rebuild the sketch from it.

    Publication (DESIGN: "only when better than the current one beyond noise"):

    - ``z``: a candidate replaces the current calibrator when its mean per-event log-loss
      improvement on the holdout exceeds ``z`` standard errors (paired test) and
      ``min_improvement`` nats per event, with at least ``min_n_eval`` holdout events. The
      floor on the effect stops two kinds of churn: near-identical calibrators (their
      per-event differences are tiny, so ``z * SE`` is tiny too and one refit in forty
      would publish a meaningless change), and a shrunk fit creeping away from its parent
      as its data grow (each step a real but tiny gain); refinement covers such growth in
      geometric steps. 0.002 nats/event is half the gain of fixing a 10% temperature error.
    - ``refine_factor``: a candidate fitted in the same regime on at least this many times the
      current version's training weight may replace it unless it is significantly worse on
      the holdout (mean improvement < ``-z`` SE, on at least ``min_refine_eval`` events):
      the paired test cannot see the small error of an early, small fit, and more data of
      the same regime is a better estimate. Geometric growth bounds the number of such
      versions per regime to ``log(n_max / n_0) / log(refine_factor)``. A global version
      fitted on few events (the first fit after a change) is refined as soon as the regime
      holds ``refine_factor`` times its training events, without waiting for the next
      scheduled refit. ``None`` disables refinement. (2 rather than 3: on the prequential
      bench the first post-change fit, ~400 events, is ~10 % off in temperature, and a
      factor 3 served it and its successor 1.5x longer.)
    - ``change_alpha``: false-alarm probability per refit and scope of the change test (a
      likelihood-ratio test of the served calibrator against a Platt refit on the newest
      ``recent_window`` training events); ``drift_alpha`` is its level when a drift detector
      asked for the refit (the detector has brought evidence of its own).
    - ``min_positives`` / ``min_negatives``: training labels of each class a fit needs.
    - ``methods``: fitted candidate methods (identity and the current version always compete).
      An isotonic candidate needs ``isotonic_min_n`` training weight, and its end values are
      kept ``isotonic_floor`` away from 0 and 1 (a map that says 0 makes one click cost 34
      nats of log loss).

    Hierarchy:

    - ``segment_prior_strength``, ``user_prior_strength``: the shrinkage prior, in events
      (``HierarchicalShrinkage``), of a segment toward the global and a user toward the segment.
    - ``user_buffer``: feedback events kept per user (newest); ``user_check_every``: a user's
      eligibility and candidate are checked every that many of the user's events;
      ``user_min_n_eval``: holdout events a user needs for the paired test, at level
      ``user_z``: many users are tested again and again, so z = 2 would hand a noise-fitted
      version to one eligible user check in forty;
      ``user_ttl_ms``: users unseen for that long in event time are forgotten;
      ``max_users``: users tracked per policy (least recently seen evicted first).
    - ``gate_*``: the ``EligibilityGate`` minimums for a user version.

    After a detected change (the change path, or a drift detector's request):

    - ``drift_prior_strength``: a fit on the events after a change point is shrunk toward the
      served map with a Gaussian prior worth this many events (Zellner's g-prior at the
      served map, ``HierarchicalShrinkage``): ``n`` post-change events move it about
      ``n / (n + drift_prior_strength)`` of the way from the served map to their own
      maximum-likelihood fit, so 300 morning events move it a little, not all the way.
      Measured with ``online_gamma`` 0.3 (``bench/prequential.py``, seed 1 of the realistic
      stream and seed 7 of the drift stream): 500 keeps the drift criterion (ECE over the
      20k events after the change 0.0094 <= 1.5 x oracle 0.0108) and leaves 1 of 6
      realistic days worse than the raw model; 1,000 gave 0.0110 and 1 day, 2,000 0.0111
      and 0 days.

    Online learner (``online_learner``; DESIGN §5: online Platt scaling is both a candidate
    and the baseline to beat):

    - ``online_method``: the learner each global and segment scope keeps, fed every matured
      training label of the scope, its current map a candidate at every refit
      (``"contextual"``: ``OnlineContextual``, published as a ``contextual`` version whose
      slope and intercept depend on the hour of day, the position, the segment and the
      ``context_fields``; ``"platt"``: ``OnlinePlatt``, recal without context, published
      as a ``platt`` version; None: no learner).
    - ``online_z``: the learner's map is published when it beats the served map and
      identity under the publication test; besides, at each refit it may replace the
      served map when it is not significantly worse than the served map and beats
      identity by ``online_z`` standard errors (3 would be the user-style level for a test
      repeated at every refit, but on the realistic stream it left 4 of 6 days worse than
      the raw model, 2 left 1).
    - ``online_gamma``, ``online_rho``: its learning rate (``gamma``, smaller follows changes
      faster at a higher variance) and initial curvature (``rho``, ``A = rho I``: larger
      makes the first steps smaller); see ``OnlinePlatt``. 0.3 rather than
      ``OnlinePlatt``'s 0.1: the policy serves the learner's map, and at 0.1 its step noise
      (a wandering 0.53-0.73 around 0.625 20k events after a change) failed the drift
      stream's criterion (ECE 0.0124 > 0.0108); 0.3 gave 0.0111 there and, on the realistic
      stream (seed 1), ECE 0.0013 against 0.0023; 1.0 was worse on both.
    - ``online_memory``: the learner forgets the curvature of its slope and intercept with
      weight ``1 - 1 / online_memory`` per label (None: never; see ``OnlinePlatt``), so its
      steps stop shrinking like ``1 / t`` and it keeps following a slow change or a
      retrained model days into a stream.
    - ``online_a_min``, ``online_a_max``, ``online_b_max``: its projection box, slope ``a``
      in ``[online_a_min, online_a_max]`` (``online_a_min > 0``: the map is always
      increasing) and intercept ``|b| <= online_b_max``.

    Context (``online_method = "contextual"``; see ``OnlineContextual`` for the measurements
    behind its defaults):

    - ``context_fields``: the impression ``context`` fields the contextual learner reads
      and the holdout rings keep (the decoder's ``context_fields``: the worker sets both
      from one setting).
    - ``context_hour_harmonics``: pairs of daily harmonics of the UTC hour (0: no hour).
    - ``context_position_edges``: position buckets (the first edge >= position; empty: no
      position).
    - ``context_w_rho``, ``context_shrinkage``: the context weights' prior (``A_w = w_rho
      I`` at the start: larger is slower to learn a pattern) and their L2 penalty per
      event toward the context-free map.

    ``drift_pending_refits``: after ``request_refit`` found too little evidence to publish,
    that many following scheduled refits still run in drift mode (and say ``drift``).

    >>> PolicyConfig(recalibrate_every=500).recalibrate_every
    500
    >>> PolicyConfig(holdout_fraction=1.5)
    Traceback (most recent call last):
    ...
    worker.core.errors.ConfigError: holdout_fraction must be a number in (0, 1); got 1.5
    >>> PolicyConfig.from_dict(PolicyConfig().to_dict()) == PolicyConfig()
    True
    """

    recalibrate_every: int = 1000
    holdout_fraction: float = 0.2
    holdout_salt: str = "recal-holdout-v1"
    holdout_capacity: int = 20_000
    half_life_ms: float | None = 86_400_000.0
    recent_window: int = 1000
    train_buffer: int = 4000
    z: float = 2.0
    min_improvement: float = 2e-3
    min_n_eval: int = 200
    refine_factor: float | None = 2.0
    min_refine_eval: int = 30
    change_alpha: float = 1e-5
    drift_alpha: float = 0.01
    min_positives: int = 10
    min_negatives: int = 10
    methods: tuple[str, ...] = _METHODS
    isotonic_min_n: float = 5000.0
    isotonic_floor: float = 1e-4
    n_bins: int = 15
    segment_prior_strength: float = 200.0
    user_prior_strength: float = 200.0
    user_buffer: int = 500
    user_check_every: int = 50
    user_min_n_eval: int = 40
    user_z: float = 3.0
    user_ttl_ms: float = 30 * 86_400_000.0
    max_users: int = 100_000
    gate_min_events: int = 200
    gate_min_days: float = 2
    gate_min_positives: int = 10
    gate_min_negatives: int = 10
    drift_pending_refits: int = 5
    drift_prior_strength: float = 500.0
    online_method: str | None = "contextual"
    online_z: float = 2.0
    online_gamma: float = 0.3
    online_rho: float = 100.0
    online_a_min: float = 0.01
    online_a_max: float = 100.0
    online_b_max: float = 20.0
    online_memory: float | None = None
    context_fields: tuple[str, ...] = ()
    context_hour_harmonics: int = 3
    context_position_edges: tuple[int, ...] = (0, 1, 2, 4, 9)
    context_w_rho: float = 3000.0
    context_shrinkage: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "context_fields",
                           check_fields("context_fields", self.context_fields))
        object.__setattr__(self, "context_position_edges",
                           check_edges("context_position_edges", self.context_position_edges))
        check_int("context_hour_harmonics", self.context_hour_harmonics, 0)
        if self.context_hour_harmonics > MAX_HARMONICS:
            raise ConfigError(f"context_hour_harmonics must be <= {MAX_HARMONICS}; "
                              f"got {self.context_hour_harmonics!r}")
        check_positive("context_w_rho", self.context_w_rho)
        if self.online_memory is not None and not (
            _number(self.online_memory) and self.online_memory >= 1.0
        ):
            raise ConfigError(
                f"online_memory must be a number >= 1 or None; got {self.online_memory!r}"
            )
        if not (_number(self.context_shrinkage) and self.context_shrinkage >= 0):
            raise ConfigError(
                f"context_shrinkage must be a number >= 0; got {self.context_shrinkage!r}"
            )
        for name in (
            "recalibrate_every",
            "holdout_capacity",
            "recent_window",
            "train_buffer",
            "min_n_eval",
            "min_refine_eval",
            "n_bins",
            "user_buffer",
            "user_check_every",
            "user_min_n_eval",
            "max_users",
        ):
            check_int(name, getattr(self, name), 1)
        for name in (
            "min_positives",
            "min_negatives",
            "gate_min_events",
            "gate_min_positives",
            "gate_min_negatives",
            "drift_pending_refits",
        ):
            check_int(name, getattr(self, name), 0)
        hf = self.holdout_fraction
        if not (_number(hf) and 0.0 < hf < 1.0):
            raise ConfigError(f"holdout_fraction must be a number in (0, 1); got {hf!r}")
        if not isinstance(self.holdout_salt, str):
            raise ConfigError(f"holdout_salt must be a string; got {self.holdout_salt!r}")
        if self.half_life_ms is not None:
            check_positive("half_life_ms", self.half_life_ms)
        if self.train_buffer < self.recent_window:
            raise ConfigError(
                f"train_buffer ({self.train_buffer}) must be >= recent_window "
                f"({self.recent_window})"
            )
        for name in ("z", "user_z", "segment_prior_strength", "user_prior_strength",
                     "user_ttl_ms", "drift_prior_strength", "online_z", "online_gamma",
                     "online_rho", "online_a_min", "online_a_max", "online_b_max"):
            check_positive(name, getattr(self, name))
        for name in ("change_alpha", "drift_alpha"):
            value = getattr(self, name)
            if not (_number(value) and 0.0 < value < 1.0):
                raise ConfigError(f"{name} must be a number in (0, 1); got {value!r}")
        if not (_number(self.min_improvement) and self.min_improvement >= 0):
            raise ConfigError(
                f"min_improvement must be a number >= 0; got {self.min_improvement!r}"
            )
        if not (_number(self.isotonic_min_n) and self.isotonic_min_n >= 0):
            raise ConfigError(
                f"isotonic_min_n must be a number >= 0; got {self.isotonic_min_n!r}"
            )
        if not (_number(self.isotonic_floor) and 0.0 <= self.isotonic_floor < 0.5):
            raise ConfigError(
                f"isotonic_floor must be a number in [0, 0.5); got {self.isotonic_floor!r}"
            )
        if self.refine_factor is not None and not (
            _number(self.refine_factor) and self.refine_factor > 1.0
        ):
            raise ConfigError(
                f"refine_factor must be a number > 1 or None; got {self.refine_factor!r}"
            )
        if not _number(self.gate_min_days) or self.gate_min_days < 0:
            raise ConfigError(f"gate_min_days must be a number >= 0; got {self.gate_min_days!r}")
        if not self.online_a_min < self.online_a_max:
            raise ConfigError(
                f"online_a_min must be < online_a_max; got {self.online_a_min!r} >= "
                f"{self.online_a_max!r}"
            )
        if self.online_method is not None and self.online_method not in ONLINE_METHODS:
            raise ConfigError(
                f"online_method must be one of {list(ONLINE_METHODS)} or None; "
                f"got {self.online_method!r}"
            )
        bad = [m for m in self.methods if m not in _METHODS]
        if bad or len(set(self.methods)) != len(self.methods):
            raise ConfigError(
                f"methods must be distinct names among {list(_METHODS)}; got {list(self.methods)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready knobs (``methods`` as a list)."""
        out = asdict(self)
        out["methods"] = list(self.methods)
        out["context_fields"] = list(self.context_fields)
        out["context_position_edges"] = list(self.context_position_edges)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown policy settings: {unknown}")
        kwargs = dict(data)
        for name in ("methods", "context_fields", "context_position_edges"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def _number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
