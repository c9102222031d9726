"""The calibrator interface shared by every method of the DESIGN §3 method table."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import (
    ScoreLike,
    ScoreOut,
    as_scores,
    out,
    score_logit,
    sketch_points,
)

if TYPE_CHECKING:
    from worker.core.sketches.logit_histogram import LogitHistogram

_C = TypeVar("_C", bound="Calibrator")


class Calibrator(ABC):
    """A fitted map from a raw model score to a calibrated probability (immutable).

    Subclasses define ``method`` (the DESIGN §3 method name), ``params()`` (exactly the
    table's params, JSON-ready), ``apply`` (on raw scores in [0, 1]) and ``apply_logit`` (on
    model logits), and the constructors ``from_params``, ``fit`` (arrays of logits, labels
    and optional weights) and ``fit_sketch`` (a ``LogitHistogram``). Construction validates
    the parameters and raises ``ConfigError``; bad scores or logits raise
    ``InvalidInputError``. Scalars in give floats out, arrays give arrays.

    >>> from worker.core.calibrators.temperature import TemperatureCalibrator
    >>> cal = TemperatureCalibrator(2.0)
    >>> cal.to_dict()
    {'method': 'temperature', 'params': {'temperature': 2.0}}
    >>> round(cal.apply(0.9), 6), round(cal.apply_logit(0.0), 6)
    (0.75, 0.5)
    """

    method: ClassVar[str]

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The method's parameters, exactly as in the calibrator version message."""

    @abstractmethod
    def apply_logit(self, z: ScoreLike) -> ScoreOut:
        """Calibrated probability for model logit(s) ``z``."""

    def apply(self, scores: ScoreLike) -> ScoreOut:
        """Calibrated probability for raw score(s) in [0, 1] (DESIGN §3 formula)."""
        s, scalar = as_scores(scores)
        return out(self._apply_logit_unchecked(score_logit(s)), scalar)

    def _apply_logit_unchecked(self, z: Any) -> Any:
        # Logit-space methods override this; ``apply`` has already validated the scores.
        return self.apply_logit(z)

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., "params": ...}``, the calibrator part of a version message."""
        return {"method": self.method, "params": self.params()}

    @classmethod
    @abstractmethod
    def from_params(cls: type[_C], params: Mapping[str, Any]) -> _C:
        """Build from a version message's ``params`` (raises ``ConfigError`` when invalid)."""

    @classmethod
    @abstractmethod
    def fit(cls: type[_C], z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> _C:
        """Fit on model logits ``z``, labels ``y`` in {0, 1} and optional weights."""

    @classmethod
    def fit_scores(
        cls: type[_C], scores: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> _C:
        """Fit on raw scores: ``fit`` on ``z = logit(clip(score, 1e-6, 1 - 1e-6))``."""
        s, _ = as_scores(scores)
        return cls.fit(score_logit(s.ravel()), y, weights)

    @classmethod
    def fit_sketch(cls: type[_C], hist: LogitHistogram) -> _C:
        """Weighted fit on a sketch: each bin is two points at its mean logit, (z_b, 1) with
        weight ``positives_b`` and (z_b, 0) with weight ``weight_b - positives_b``."""
        z, y, w = sketch_points(hist)
        return cls.fit(z, y, w)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calibrator):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()!r})"
