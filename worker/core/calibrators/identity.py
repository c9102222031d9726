"""The identity calibrator: the served score as it is (DESIGN §3 ``identity``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import (
    ScoreLike,
    ScoreOut,
    as_logits,
    as_scores,
    out,
    training_arrays,
)
from worker.core.calibrators.calibrator import Calibrator
from worker.core.errors import ConfigError
from worker.core.mathfn import sigmoid_array


class IdentityCalibrator(Calibrator):
    """Calibrated probability = ``score`` (unclipped); params ``{}``.

    The consumer's last fallback, and the "no change" candidate the policy compares with.

    >>> cal = IdentityCalibrator()
    >>> cal.apply(0.25), cal.to_dict()
    (0.25, {'method': 'identity', 'params': {}})
    >>> cal.apply_logit(0.0)
    0.5
    """

    method = "identity"

    def params(self) -> dict[str, Any]:
        """No parameters."""
        return {}

    def apply(self, scores: ScoreLike) -> ScoreOut:
        """The scores themselves (validated to be finite and in [0, 1])."""
        s, scalar = as_scores(scores)
        return out(s.copy(), scalar)

    def apply_logit(self, z: ScoreLike) -> ScoreOut:
        """``sigmoid(z)``: the model's own probability."""
        za, scalar = as_logits(z)
        return out(sigmoid_array(za), scalar)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> IdentityCalibrator:
        """Accepts only empty params."""
        if not isinstance(params, Mapping) or params:
            raise ConfigError(f"identity takes no params; got {params!r}")
        return cls()

    @classmethod
    def fit(
        cls, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> IdentityCalibrator:
        """Nothing to fit; the data are still validated so every method fails alike."""
        training_arrays(z, y, weights)
        return cls()
