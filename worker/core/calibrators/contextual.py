"""Contextual Platt scaling: ``sigmoid(a(x) * z + b(x))`` with a slope and an intercept that
depend on context features known at serving time (DESIGN §3 ``contextual``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import (
    FloatArray,
    ScoreLike,
    ScoreOut,
    as_logits,
    as_scores,
    out,
    score_logit,
)
from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.context_columns import ContextColumns
from worker.core.calibrators.context_features import (
    MAX_VALUE_CHARS,
    NUMBER_CLIP,
    RESERVED,
    category_of,
    hour_features,
    hour_of,
    number_feature,
    position_bucket,
)
from worker.core.calibrators.platt import PlattCalibrator
from worker.core.checks import is_real
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.mathfn import sigmoid, sigmoid_array

__all__ = ["ContextualCalibrator"]

#: Most harmonics of the hour of day (a 24 h period sampled hourly has 12).
MAX_HARMONICS = 12
#: ``a(x) = a * exp(s)`` is kept in ``[_MIN_SLOPE, _MAX_SLOPE]``: a numeric guard only, so
#: that ``exp`` never overflows or underflows to 0 (``a(x) > 0`` stays true in floats); the
#: online learner's weight bounds keep real maps far inside it.
_LOG_SLOPE_CLIP = 700.0
_MIN_SLOPE = 1e-300
_MAX_SLOPE = 1e300
_KINDS = ("hour", "position", "category", "number")
Context = Mapping[str, Any]


def _weights(where: str, value: object, n: int) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"{where} must be a list of {n} numbers; got {value!r}")
    if not all(is_real(v) for v in value):
        raise ConfigError(f"{where} must hold finite numbers; got {value!r}")
    return [float(v) for v in value]


def _field(where: str, feature: Mapping[str, Any], kind: str) -> str:
    name = feature.get("field")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_VALUE_CHARS:
        raise ConfigError(f"{where} field must be a string of 1-128 characters; got {name!r}")
    # segment is a category read from the impression; ts, hour and position have their own
    # features.
    if name in RESERVED and not (kind == "category" and name == "segment"):
        raise ConfigError(f"{where} field {name!r} is reserved")
    return name


class ContextualCalibrator(Calibrator):
    """Calibrated probability ``sigmoid(a(x) * z + b(x))`` with, for context features ``x``,

    ``a(x) = a * exp(w_a . (x - m))`` (always > 0: monotone increasing in the score for
    every context) and ``b(x) = b + w_b . (x - m)``, ``m`` the features' means.

    Params: ``{"a": a, "b": b, "features": [...]}``, ``a > 0``; each feature carries its own
    weights ``w_a``, ``w_b`` and optional means ``mean`` (one per column; default 0):

    - ``{"kind": "hour", "harmonics": K}``: the UTC hour of day ``h`` (the context's
      ``hour``, else from its ``ts``) as ``sin(k w h), cos(k w h)``, ``k = 1..K``,
      ``w = 2 pi / 24``: 2K columns, a smooth daily cycle;
    - ``{"kind": "position", "edges": [e_0 < e_1 < ...]}``: one-hot of the first edge
      ``>= position``, one more column beyond the last;
    - ``{"kind": "category", "field": f, "values": [...]}``: one-hot of the context's
      string ``f`` among ``values``, the last column for any other string;
    - ``{"kind": "number", "field": f}``: ``sign(v) log1p(|v|)`` of the context's number
      ``f``, clipped to +-10 (one column).

    A feature whose input is absent or of the wrong type contributes nothing (it is taken at
    its mean): with no context at all the map is the context-free Platt map
    ``sigmoid(a z + b)``, which with the learner's means (``OnlineContextual``) is the map at
    the average context.

    >>> cal = ContextualCalibrator(0.8, -0.2, [
    ...     {"kind": "hour", "harmonics": 1, "w_a": [0.0, -0.4], "w_b": [0.0, 0.1]},
    ...     {"kind": "category", "field": "device", "values": ["mobile"],
    ...      "w_a": [0.0, 0.0], "w_b": [0.3, 0.0]}])
    >>> round(cal.apply(0.1), 6) == round(PlattCalibrator(0.8, -0.2).apply(0.1), 6)
    True
    >>> a, b = cal.slope_intercept({"hour": 0, "device": "mobile"})   # cos(0) = 1
    >>> round(a, 4), round(b, 4)
    (0.5363, 0.2)
    >>> round(cal.apply(0.1, {"hour": 0, "device": "mobile"}), 4)
    0.2732
    """

    method = "contextual"

    def __init__(
        self, a: float, b: float, features: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        if not (is_real(a) and float(a) > 0.0):
            raise ConfigError(f"contextual a must be a finite number > 0; got {a!r}")
        if not is_real(b):
            raise ConfigError(f"contextual b must be a finite number; got {b!r}")
        if isinstance(features, (str, bytes, Mapping)) or not isinstance(features, Sequence):
            raise ConfigError(f"contextual features must be a list; got {features!r}")
        self._a = float(a)
        self._b = float(b)
        self._features: list[dict[str, Any]] = []
        self._hour: tuple[int, list[float], list[float], float, float] | None = None
        self._position: tuple[list[int], list[float], list[float], float, float] | None = None
        self._categories: list[
            tuple[str, dict[str, int], list[float], list[float], float, float]
        ] = []
        self._numbers: list[tuple[str, float, float, float]] = []
        seen: set[tuple[str, str]] = set()
        for i, feature in enumerate(features):
            self._add(f"contextual features[{i}]", feature, seen)

    def _add(self, where: str, feature: object, seen: set[tuple[str, str]]) -> None:
        if not isinstance(feature, Mapping):
            raise ConfigError(f"{where} must be an object; got {feature!r}")
        kind = feature.get("kind")
        if kind not in _KINDS:
            raise ConfigError(f"{where} kind must be one of {list(_KINDS)}; got {kind!r}")
        allowed = {"kind", "w_a", "w_b", "mean", *{
            "hour": ("harmonics",), "position": ("edges",), "category": ("field", "values"),
            "number": ("field",),
        }[kind]}
        keys = set(feature) | {"mean"}
        if keys != allowed:
            raise ConfigError(f"{where} ({kind}) must have exactly {sorted(allowed - {'mean'})}"
                              f" and optionally mean; got {sorted(feature)}")
        key = (kind, str(feature.get("field", "")))
        if key in seen:
            raise ConfigError(f"{where} repeats the {kind} feature {key[1]!r}".rstrip(" '"))
        seen.add(key)
        clean: dict[str, Any] = {"kind": kind}
        if kind == "hour":
            k = feature["harmonics"]
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_HARMONICS:
                raise ConfigError(f"{where} harmonics must be an integer in [1, "
                                  f"{MAX_HARMONICS}]; got {k!r}")
            n = 2 * k
            clean["harmonics"] = k
        elif kind == "position":
            edges = feature["edges"]
            if (
                not isinstance(edges, (list, tuple)) or not edges
                or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                           for e in edges)
                or any(b <= a for a, b in pairwise(edges))
            ):
                raise ConfigError(f"{where} edges must be increasing integers >= 0; "
                                  f"got {edges!r}")
            n = len(edges) + 1
            clean["edges"] = list(edges)
        elif kind == "category":
            clean["field"] = _field(where, feature, kind)
            values = feature["values"]
            if (
                not isinstance(values, (list, tuple))
                or not all(category_of(v) is not None for v in values)
                or len(set(values)) != len(values)
            ):
                raise ConfigError(f"{where} values must be distinct strings of 1-128 "
                                  f"characters; got {values!r}")
            n = len(values) + 1
            clean["values"] = list(values)
        else:
            clean["field"] = _field(where, feature, kind)
            n = 1
        w_a = _weights(f"{where} w_a", feature["w_a"], n)
        w_b = _weights(f"{where} w_b", feature["w_b"], n)
        clean["w_a"], clean["w_b"] = w_a, w_b
        mean = [0.0] * n
        if "mean" in feature:
            mean = clean["mean"] = _weights(f"{where} mean", feature["mean"], n)
        self._features.append(clean)
        # Present, a feature adds w . x - w . m: the second term once, here.
        c_a = math.fsum(w * m for w, m in zip(w_a, mean, strict=True))
        c_b = math.fsum(w * m for w, m in zip(w_b, mean, strict=True))
        if kind == "hour":
            self._hour = (clean["harmonics"], w_a, w_b, c_a, c_b)
        elif kind == "position":
            self._position = (clean["edges"], w_a, w_b, c_a, c_b)
        elif kind == "category":
            index = {v: j for j, v in enumerate(clean["values"])}
            self._categories.append((clean["field"], index, w_a, w_b, c_a, c_b))
        else:
            self._numbers.append((clean["field"], w_a[0], w_b[0], mean[0]))

    # ------------------------------------------------------------------ read

    @property
    def a(self) -> float:
        """Context-free slope (every feature missing)."""
        return self._a

    @property
    def b(self) -> float:
        """Context-free intercept."""
        return self._b

    @property
    def features(self) -> list[dict[str, Any]]:
        """The feature spec with its weights (copies)."""
        return [
            {k: list(v) if isinstance(v, list) else v for k, v in f.items()}
            for f in self._features
        ]

    def params(self) -> dict[str, Any]:
        """``{"a": a, "b": b, "features": [...]}``."""
        return {"a": self._a, "b": self._b, "features": self.features}

    def context_free(self) -> PlattCalibrator:
        """The map for a context with every feature missing."""
        return PlattCalibrator(self._a, self._b)

    def log_slope_intercept(self, context: Context | None) -> tuple[float, float]:
        """``(w_a . (x - m), b(x))`` for one context (None or ``{}``: ``(0, b)``)."""
        s, b = 0.0, self._b
        if not context:
            return s, b
        if self._hour is not None:
            h = hour_of(context)
            if h is not None:
                k, w_a, w_b, c_a, c_b = self._hour
                s -= c_a
                b -= c_b
                for j, x in enumerate(hour_features(h, k)):
                    s += w_a[j] * x
                    b += w_b[j] * x
        if self._position is not None:
            edges, w_a, w_b, c_a, c_b = self._position
            bucket = position_bucket(context, edges)
            if bucket is not None:
                s += w_a[bucket] - c_a
                b += w_b[bucket] - c_b
        for name, index, w_a, w_b, c_a, c_b in self._categories:
            value = category_of(context.get(name))
            if value is not None:
                j = index.get(value, len(index))
                s += w_a[j] - c_a
                b += w_b[j] - c_b
        for name, n_a, n_b, m in self._numbers:
            v = number_feature(context.get(name))
            if v is not None:
                s += n_a * (v - m)
                b += n_b * (v - m)
        return s, b

    def slope_intercept(self, context: Context | None) -> tuple[float, float]:
        """The Platt ``(a(x), b(x))`` that serves ``context``; ``a(x) > 0`` always."""
        s, b = self.log_slope_intercept(context)
        s = _LOG_SLOPE_CLIP if s > _LOG_SLOPE_CLIP else (-_LOG_SLOPE_CLIP if s < -_LOG_SLOPE_CLIP
                                                         else s)
        a = self._a * math.exp(s)
        return (_MIN_SLOPE if a < _MIN_SLOPE else (_MAX_SLOPE if a > _MAX_SLOPE else a)), b

    def slope_intercept_columns(self, cols: ContextColumns) -> tuple[FloatArray, FloatArray]:
        """``(a(x), b(x))`` of every event of ``cols``, vectorised: the same values as
        ``slope_intercept`` on each event's context (``ContextColumns.contexts``)."""
        n = len(cols)
        s = np.zeros(n)
        b = np.full(n, self._b)
        if self._hour is not None:
            k, w_a, w_b, c_a, c_b = self._hour
            h = cols.hour
            present = h == h
            if present.any():
                hp = h[present]
                ds = np.full(hp.size, -c_a)
                db = np.full(hp.size, -c_b)
                for j in range(1, k + 1):
                    angle = (j * 2.0 * math.pi / 24.0) * hp
                    sin, cos = np.sin(angle), np.cos(angle)
                    ds += w_a[2 * j - 2] * sin + w_a[2 * j - 1] * cos
                    db += w_b[2 * j - 2] * sin + w_b[2 * j - 1] * cos
                s[present] += ds
                b[present] += db
        if self._position is not None:
            edges, w_a, w_b, c_a, c_b = self._position
            pos = cols.position
            present = pos >= 0
            if present.any():
                # The first edge >= position (len(edges) beyond the last): position_bucket.
                bucket = np.searchsorted(np.asarray(edges), pos[present], side="left")
                s[present] += np.asarray(w_a)[bucket] - c_a
                b[present] += np.asarray(w_b)[bucket] - c_b
        for name, index, w_a, w_b, c_a, c_b in self._categories:
            entry = cols.categories.get(name)
            if entry is None:
                continue
            codes, vocab = entry
            present = codes >= 0
            if not present.any():
                continue
            # Vocabulary entry -> weight column once, then a gather per event.
            other = len(index)
            lut = np.array([index.get(v, other) for v in vocab], dtype=np.int64)
            col = lut[codes[present]]
            s[present] += np.asarray(w_a)[col] - c_a
            b[present] += np.asarray(w_b)[col] - c_b
        for name, n_a, n_b, m in self._numbers:
            values = cols.numbers.get(name)
            if values is None:
                continue
            present = values == values
            if not present.any():
                continue
            v = values[present]
            x = np.clip(np.sign(v) * np.log1p(np.abs(v)), -NUMBER_CLIP, NUMBER_CLIP)
            s[present] += n_a * (x - m)
            b[present] += n_b * (x - m)
        a = self._a * np.exp(np.clip(s, -_LOG_SLOPE_CLIP, _LOG_SLOPE_CLIP))
        return np.clip(a, _MIN_SLOPE, _MAX_SLOPE), b

    def logit_columns(self, z: ArrayLike, cols: ContextColumns) -> FloatArray:
        """``a(x_i) * z_i + b(x_i)``: the calibrated logit of model logits ``z`` in their
        contexts ``cols``."""
        za = np.asarray(z, dtype=np.float64)
        if za.shape != (len(cols),):
            raise ConfigError(f"one context per logit: got {len(cols)} for shape {za.shape}")
        a, b = self.slope_intercept_columns(cols)
        out: FloatArray = a * za + b
        return out

    def rescaled(self, alpha: float, beta: float) -> ContextualCalibrator:
        """The map ``sigmoid(alpha * eta + beta)`` of this map's logit ``eta = a(x) z +
        b(x)``, which is again contextual: slope ``alpha * a`` (same ``w_a``), intercept
        ``alpha * b + beta`` and ``w_b`` times ``alpha``. The policy refits a contextual
        map after a change this way: its level and spread move, its learnt daily and
        positional pattern stays.

        >>> cal = ContextualCalibrator(0.8, -0.2, [
        ...     {"kind": "hour", "harmonics": 1, "w_a": [0.1, -0.4], "w_b": [0.2, 0.1]}])
        >>> new = cal.rescaled(0.5, 0.3)
        >>> ctx = {"hour": 7.0}
        >>> a, b = cal.slope_intercept(ctx)
        >>> round(float(new.apply_logit(-2.0, ctx)), 12) == round(
        ...     float(sigmoid(0.5 * (a * -2.0 + b) + 0.3)), 12)
        True
        """
        if not (is_real(alpha) and alpha > 0.0 and is_real(beta)):
            raise ConfigError(f"rescaled needs alpha > 0 and a finite beta; got {alpha!r}, "
                              f"{beta!r}")
        features = self.features
        for f in features:
            f["w_b"] = [alpha * w for w in f["w_b"]]
        return ContextualCalibrator(alpha * self._a, alpha * self._b + beta, features)

    def apply_columns(self, z: ArrayLike, cols: ContextColumns) -> FloatArray:
        """``sigmoid(a(x_i) * z_i + b(x_i))`` for model logits ``z`` and their contexts
        ``cols`` (one per logit): how the policy scores a holdout ring.

        >>> cal = ContextualCalibrator(0.8, -0.2, [
        ...     {"kind": "hour", "harmonics": 1, "w_a": [0.0, -0.4], "w_b": [0.0, 0.1]}])
        >>> cols = ContextColumns.from_ts(np.array([0, 43_200_000]), np.array([-1, -1]))
        >>> p = cal.apply_columns(np.array([-1.0, -1.0]), cols)
        >>> [round(float(v), 6) for v in p] == [
        ...     round(cal.apply_logit(-1.0, cols.contexts(i)), 6) for i in range(2)]
        True
        """
        return sigmoid_array(self.logit_columns(z, cols))

    # ------------------------------------------------------------------ apply

    def apply(  # type: ignore[override]
        self, scores: ScoreLike, context: Context | Sequence[Context | None] | None = None
    ) -> ScoreOut:
        """Calibrated probability of raw score(s) in [0, 1] in ``context``: one mapping for
        all the scores, or (for an array) one mapping per score; None: context-free."""
        s, scalar = as_scores(scores)
        return out(self._map(score_logit(s), context, scalar), scalar)

    def apply_logit(  # type: ignore[override]
        self, z: ScoreLike, context: Context | Sequence[Context | None] | None = None
    ) -> ScoreOut:
        """``sigmoid(a(x) * z + b(x))`` for model logit(s) ``z``."""
        za, scalar = as_logits(z)
        return out(self._map(za, context, scalar), scalar)

    def _apply_logit_unchecked(self, z: Any) -> Any:
        return self._map(np.asarray(z, dtype=np.float64), None, False)

    def _map(
        self, z: FloatArray, context: Context | Sequence[Context | None] | None, scalar: bool
    ) -> FloatArray:
        if context is None or isinstance(context, Mapping):
            a, b = self.slope_intercept(context)
            if scalar:
                return np.asarray(sigmoid(a * float(z) + b))
            return sigmoid_array(a * z + b)
        if scalar or len(context) != z.size:
            raise ConfigError(
                f"one context per score: got {len(context)} contexts for {z.size} scores"
            )
        ab = np.array([self.slope_intercept(c) for c in context]).reshape(-1, 2)
        return sigmoid_array(ab[:, 0].reshape(z.shape) * z + ab[:, 1].reshape(z.shape))

    # ------------------------------------------------------------------ build

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ContextualCalibrator:
        """From ``{"a": a, "b": b, "features": [...]}``."""
        if not isinstance(params, Mapping) or set(params) != {"a", "b", "features"}:
            raise ConfigError(
                f"contextual params must be {{'a', 'b', 'features'}}; got {params!r}"
            )
        return cls(params["a"], params["b"], params["features"])

    @classmethod
    def fit(
        cls, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> ContextualCalibrator:
        """The context-free map only (a batch fit sees no context): Platt's ``(a, b)`` with no
        features. The contextual weights come from ``OnlineContextual``."""
        platt = PlattCalibrator.fit(z, y, weights)
        if not platt.a > 0.0:
            raise InvalidInputError(
                "insufficient_data",
                f"no monotone increasing map: the Platt fit's slope is {platt.a!r}",
            )
        return cls(platt.a, platt.b)
