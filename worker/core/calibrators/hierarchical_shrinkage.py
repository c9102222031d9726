"""Empirical-Bayes shrinkage of a child's calibrator toward its parent's (DESIGN §5)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import FloatArray, training_arrays
from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.identity import IdentityCalibrator
from worker.core.calibrators.platt import PlattCalibrator, fit_logistic
from worker.core.calibrators.temperature import T_MAX, T_MIN, TemperatureCalibrator
from worker.core.errors import ConfigError
from worker.core.mathfn import sigmoid_array

K = TypeVar("K", bound=Hashable)
ChildData = tuple[ArrayLike, ArrayLike, ArrayLike | None]

# Directions of the child's information matrix with (almost) no data still get a prior, so the
# posterior mode is unique (e.g. a user whose events all have one score).
_RIDGE = 1e-6


class HierarchicalShrinkage:
    """Fits per-child (user / segment) calibrators shrunk toward the parent's calibrator.

    Parameter space: Platt ``theta = (a, b)`` or temperature ``theta = u = 1/T`` (the
    logistic coefficients, where the likelihood is close to Gaussian). A parent identity is
    ``(1, 0)``, a parent temperature ``(1/T, 0)``; an isotonic parent has no parameters to
    shrink toward and raises ``ConfigError`` (use its parametric fallback as the parent).

    Model: a child's parameters are ``theta_c ~ N(theta_p, (k F_c)^-1)`` where ``F_c`` is the
    child's per-event Fisher information at the parent (Zellner's g-prior): the prior is worth
    ``k`` events that behave like the parent. The child's calibrator is the posterior mode,

        argmin  NLL_c(theta) + (k / 2n) (theta - theta_p)' H_c (theta - theta_p),

    ``H_c = n F_c``, ``n = n_eff`` the child's total weight. When the child's log-likelihood
    is quadratic this is ``w * child_mle + (1 - w) * theta_p`` with ``w = n / (n + k)``
    (see below); unlike that formula it stays finite when the child's MLE does not
    exist (a handful of events, all negatives), which is precisely the small-user case.
    A child with no events gets the parent.

    Prior strength ``k``: fixed (``prior_strength``) or estimated across children by the
    method of moments on the score statistic at the parent, ``Q_c = U_c' H_c^+ U_c`` with
    ``U_c`` the NLL gradient at ``theta_p``. Under the model ``E[Q_c] = e_c + d_c n_c / k``
    where ``e_c = tr(H_c^+ V_c)`` (``V_c`` the gradient's covariance; ``e_c = d_c``, the
    parameter count, for unit weights) holds exactly when the child follows the parent, so

        k = sum_c d_c n_c / sum_c (Q_c - e_c),

    between-child variance against within-child sampling variance, estimated without a single
    per-child MLE. It is clipped to ``[min_prior_strength, max_prior_strength]``; no excess
    (children agree with the parent) gives the maximum, i.e. every child gets the parent.
    The linearisation ``E[U_c] ~ -H_c delta`` makes it read ~20% low when children differ a
    lot (true k = 50 read as ~40; k = 500 is recovered within ~10%).

    The floor (default 200 events, the eligibility gate's default minimum) bounds what pure
    noise can cost a child that truly follows its parent: its shrunk estimate errs by
    ``w (mle - theta_p)``, an expected excess holdout NLL of ``d n / (2 (n + k)^2)`` nats
    per event, at most ``d / (8 k)`` (at ``n = k``): 0.00125 for Platt at the floor. One
    Gaussian prior cannot tell "most children follow the parent, a few differ a lot" from
    "all differ a little"; when a few heavy, very different children pull the estimate of
    ``k`` down, the floor is what protects the many small ones.

    With ``H_c`` the same at the MLE as at the parent (small deviations) the posterior mode
    is exactly ``w * mle + (1 - w) * theta_p``; for large deviations the curvature differs
    and the weights differ per direction. Weights are per-event weights
    (``V_c = sum w^2 p (1-p) x x'``), not replicate counts.

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> parent = PlattCalibrator(0.6, -0.2)
    >>> z = rng.normal(-1.5, 1.0, 10)
    >>> y = np.zeros(10)                  # ten events, no click: the MLE does not exist
    >>> shrink = HierarchicalShrinkage("platt", prior_strength=200)
    >>> child = shrink.fit_child(z, y, parent=parent)
    >>> abs(child.a - 0.6) < 0.05 and abs(child.b + 0.2) < 0.2
    True
    >>> HierarchicalShrinkage.shrinkage_weight(200, 200)
    0.5
    """

    def __init__(
        self,
        method: str = "platt",
        prior_strength: float | None = None,
        *,
        min_prior_strength: float = 200.0,
        max_prior_strength: float = 1e6,
    ) -> None:
        if method not in ("platt", "temperature"):
            raise ConfigError(f"method must be 'platt' or 'temperature'; got {method!r}")
        for name, value in (
            ("min_prior_strength", min_prior_strength),
            ("max_prior_strength", max_prior_strength),
        ):
            if not _positive(value):
                raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
        if min_prior_strength > max_prior_strength:
            raise ConfigError(
                f"min_prior_strength {min_prior_strength} > max_prior_strength {max_prior_strength}"
            )
        if prior_strength is not None and not _positive(prior_strength):
            raise ConfigError(f"prior_strength must be a finite number > 0; got {prior_strength!r}")
        self._method = method
        self._prior_strength = None if prior_strength is None else float(prior_strength)
        self._k_min = float(min_prior_strength)
        self._k_max = float(max_prior_strength)

    @property
    def method(self) -> str:
        """The children's method: ``"platt"`` or ``"temperature"``."""
        return self._method

    @property
    def prior_strength(self) -> float | None:
        """The fixed prior strength ``k`` in events, or ``None`` (estimated)."""
        return self._prior_strength

    @staticmethod
    def shrinkage_weight(n_eff: float, prior_strength: float) -> float:
        """``w = n / (n + k)``: the weight of the child's own MLE (quadratic approximation)."""
        return float(n_eff) / (float(n_eff) + float(prior_strength))

    # ------------------------------------------------------------------ parameters

    def _parent_theta(self, parent: Calibrator) -> FloatArray:
        if isinstance(parent, IdentityCalibrator):
            a, b = 1.0, 0.0
        elif isinstance(parent, TemperatureCalibrator):
            a, b = 1.0 / parent.temperature, 0.0
        elif isinstance(parent, PlattCalibrator):
            a, b = parent.a, parent.b
        else:
            raise ConfigError(
                f"cannot shrink toward a {parent.method} parent; "
                "need identity, temperature or platt"
            )
        if self._method == "platt":
            return np.array([a, b])
        if b != 0.0 or not a > 0.0:
            raise ConfigError(
                f"a temperature child needs a temperature-like parent (b == 0, a > 0); "
                f"got {parent!r}"
            )
        return np.array([a])

    def _design(self, z: FloatArray) -> FloatArray:
        if self._method == "platt":
            return np.stack([z, np.ones_like(z)], axis=1)
        return z[:, None]

    def _calibrator(self, theta: FloatArray) -> Calibrator:
        if self._method == "platt":
            return PlattCalibrator(float(theta[0]), float(theta[1]))
        u = min(max(float(theta[0]), 1.0 / T_MAX), 1.0 / T_MIN)
        return TemperatureCalibrator(1.0 / u)

    def _at_parent(
        self, z: FloatArray, y: FloatArray, w: FloatArray, theta_p: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        # Gradient U, information H and the gradient's covariance V, all at the parent.
        x = self._design(z)
        mu = sigmoid_array(x @ theta_p)
        v = mu * (1.0 - mu)
        grad = x.T @ (w * (mu - y))
        hess = (x * (w * v)[:, None]).T @ x
        cov = (x * (w * w * v)[:, None]).T @ x
        return grad, hess, cov

    # ------------------------------------------------------------------ prior strength

    def moment_terms(
        self, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None, parent: Calibrator
    ) -> tuple[float, float]:
        """One child's ``(d_c * n_c, Q_c - e_c)``: the terms summed by the estimator.

        Additive across children, so partitions can sum them and combine
        (``prior_strength_from_moments``).
        """
        za, ya, wa = training_arrays(z, y, weights)
        theta_p = self._parent_theta(parent)
        grad, hess, cov = self._at_parent(za, ya, wa, theta_p)
        # One symmetric eigendecomposition gives the pseudo-inverse and the rank.
        lam, vec = np.linalg.eigh(hess)
        keep = lam > 1e-10 * max(float(lam.max()), 0.0)
        if not keep.any():
            return 0.0, 0.0
        vk = vec[:, keep]
        pinv = (vk / lam[keep]) @ vk.T
        q = float(grad @ pinv @ grad)
        e = float(np.trace(pinv @ cov))
        return float(keep.sum()) * float(wa.sum()), q - e

    def prior_strength_from_moments(self, sum_dn: float, sum_excess: float) -> float:
        """``k = sum d n / sum (Q - e)`` clipped to the configured range."""
        if not sum_excess > 0.0 or not sum_dn > 0.0:
            return self._k_max
        return min(max(sum_dn / sum_excess, self._k_min), self._k_max)

    def estimate_prior_strength(self, children: Iterable[ChildData], parent: Calibrator) -> float:
        """Method-of-moments ``k`` from ``(z, y, weights)`` of every child (see the class)."""
        sum_dn = 0.0
        sum_excess = 0.0
        for z, y, w in children:
            if np.size(z) == 0:
                continue
            dn, excess = self.moment_terms(z, y, w, parent)
            sum_dn += dn
            sum_excess += excess
        return self.prior_strength_from_moments(sum_dn, sum_excess)

    # ------------------------------------------------------------------ fits

    def fit_child(
        self,
        z: ArrayLike,
        y: ArrayLike,
        weights: ArrayLike | None = None,
        *,
        parent: Calibrator,
        prior_strength: float | None = None,
    ) -> Calibrator:
        """The child's shrunk calibrator (a ``PlattCalibrator`` or ``TemperatureCalibrator``).

        ``prior_strength`` defaults to the fixed one; one of the two must be given (estimate
        it with ``estimate_prior_strength``, or use ``fit_children``).
        """
        k = self._prior_strength if prior_strength is None else prior_strength
        if k is None or not _positive(k):
            raise ConfigError(f"fit_child needs a prior_strength > 0; got {k!r}")
        theta_p = self._parent_theta(parent)
        if np.size(z) == 0:
            return self._calibrator(theta_p)
        za, ya, wa = training_arrays(z, y, weights)
        _, hess, _ = self._at_parent(za, ya, wa, theta_p)
        d = theta_p.size
        scale = float(np.trace(hess)) / d
        if not scale > 0.0:
            return self._calibrator(theta_p)
        precision = (float(k) / float(wa.sum())) * (hess + _RIDGE * scale * np.eye(d))
        theta = fit_logistic(za, ya, wa, theta_p, precision, intercept=self._method == "platt")
        return self._calibrator(theta)

    def fit_children(
        self, children: Mapping[K, ChildData], parent: Calibrator
    ) -> tuple[dict[K, Calibrator], float]:
        """Shrunk calibrators for every child, and the prior strength used (fixed or
        estimated from these children)."""
        k = self._prior_strength
        if k is None:
            k = self.estimate_prior_strength(children.values(), parent)
        fitted = {
            key: self.fit_child(z, y, w, parent=parent, prior_strength=k)
            for key, (z, y, w) in children.items()
        }
        return fitted, k

    def __repr__(self) -> str:
        return (
            f"HierarchicalShrinkage(method={self._method!r}, "
            f"prior_strength={self._prior_strength}, "
            f"min_prior_strength={self._k_min}, max_prior_strength={self._k_max})"
        )


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) > 0.0
    )
