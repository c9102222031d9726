"""The policy's online-learner slot (DESIGN §5 "Policy"): a calibrator learnt label by label.

Each global and segment scope of the policy holds one learner (``PolicyConfig.online_method``,
None for none). It is fed every matured *training* label of its scope, in join order
(holdout labels are kept from it, so the holdout ring scores it out of sample like every
other candidate), and at each refit its current map is one more candidate beside the refit
family, published under the same gate.

A learner is any object with

- ``update(z, y, impression)``: one label (``z`` the clamped model logit, ``y`` in {0, 1},
  ``impression`` the ``Impression``, for learners that use its context);
- ``calibrator()``: its current map, a servable ``Calibrator`` (``OnlinePlatt``: ``platt``,
  so serving needs nothing new);
- ``to_dict()``, and a loader registered here for ``from_dict``: the policy's state records
  carry it, so a restarted worker continues exactly.

A new kind registers its constructor and loader with ``register_learner`` and its name in
``policy_config.ONLINE_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from worker.core.calibrators import Calibrator, OnlineContextual, OnlinePlatt
from worker.core.errors import ConfigError
from worker.core.policy.policy_config import PolicyConfig
from worker.core.records.impression import Impression


class OnlineLearner(Protocol):
    """What the policy needs of an online learner (see the module docstring)."""

    def update(self, z: float, y: int, impression: Impression) -> None: ...

    def calibrator(self) -> Calibrator: ...

    def to_dict(self) -> dict[str, Any]: ...


# (config, start map (a, b) in logit space) -> a fresh learner
NewLearner = Callable[[PolicyConfig, tuple[float, float]], OnlineLearner]
LoadLearner = Callable[[Mapping[str, Any]], OnlineLearner]


def _ons_knobs(config: PolicyConfig, start: tuple[float, float]) -> dict[str, Any]:
    """The online Newton step's knobs, shared by both learners (the contextual one's
    slope and intercept block is an ``OnlinePlatt``)."""
    return {"gamma": config.online_gamma, "rho": config.online_rho,
            "a_min": config.online_a_min, "a_max": config.online_a_max,
            "b_max": config.online_b_max, "start": start, "memory": config.online_memory}


def _new_platt(config: PolicyConfig, start: tuple[float, float]) -> OnlineLearner:
    return OnlinePlatt(**_ons_knobs(config, start))


class _ImpressionContext:
    """``OnlineContextual`` fed with impressions: each label in its serving-time context
    (``Impression.serving_context``: ts, position, segment, the kept context fields)."""

    __slots__ = ("learner",)

    def __init__(self, learner: OnlineContextual) -> None:
        self.learner = learner

    def update(self, z: float, y: int, impression: Impression) -> None:
        self.learner.update(z, y, impression.serving_context())

    def calibrator(self) -> Calibrator:
        return self.learner.calibrator()

    def to_dict(self) -> dict[str, Any]:
        return self.learner.to_dict()

    def rescale(self, alpha: float, beta: float) -> None:
        self.learner.rescale(alpha, beta)


def _new_contextual(config: PolicyConfig, start: tuple[float, float]) -> OnlineLearner:
    return _ImpressionContext(OnlineContextual(
        **_ons_knobs(config, start),
        w_rho=config.context_w_rho,
        shrinkage=config.context_shrinkage,
        hour_harmonics=config.context_hour_harmonics,
        position_edges=config.context_position_edges,
        segment=True,
        fields=config.context_fields,
    ))


def _load_contextual(data: Mapping[str, Any]) -> OnlineLearner:
    return _ImpressionContext(OnlineContextual.from_dict(data))


_REGISTRY: dict[str, tuple[NewLearner, LoadLearner]] = {
    "platt": (_new_platt, OnlinePlatt.from_dict),
    "contextual": (_new_contextual, _load_contextual),
}


def register_learner(method: str, new: NewLearner, load: LoadLearner) -> None:
    """Make ``method`` available as ``PolicyConfig.online_method``."""
    _REGISTRY[method] = (new, load)


def new_learner(config: PolicyConfig, start: tuple[float, float]) -> OnlineLearner | None:
    """A fresh learner of ``config.online_method`` starting at ``start``; None when off.

    >>> new_learner(PolicyConfig(online_method="platt"), (0.8, -0.1)).calibrator().params()
    {'a': 0.8, 'b': -0.1}
    >>> cal = new_learner(PolicyConfig(), (0.8, -0.1)).calibrator()   # contextual: no
    >>> cal.method, cal.a, cal.b                                      # weights yet
    ('contextual', 0.8, -0.1)
    >>> new_learner(PolicyConfig(online_method=None), (1.0, 0.0)) is None
    True
    """
    method = config.online_method
    if method is None:
        return None
    if method not in _REGISTRY:
        raise ConfigError(f"no online learner registered as {method!r}")
    return _REGISTRY[method][0](config, start)


def learner_from_dict(method: str, data: Mapping[str, Any]) -> OnlineLearner:
    """The learner ``method`` saved as ``data`` (its ``to_dict``)."""
    if method not in _REGISTRY:
        raise ValueError(f"no online learner registered as {method!r}")
    return _REGISTRY[method][1](data)
