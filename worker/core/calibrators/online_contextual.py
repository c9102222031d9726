"""Online contextual Platt scaling: the ``contextual`` map fitted by the online Newton step.

``OnlinePlatt`` with context: the same ONS round (Hazan, Agarwal & Kale 2007; Gupta &
Ramdas 2023 for Platt scaling) on the feature-expanded parameters of
``sigmoid(a exp(w_a . x) z + b + w_b . x)``, with an L2 penalty on the context weights that
shrinks the map toward the context-free one. ``calibrator()`` is a ``ContextualCalibrator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.calibrators._ons import check_event, check_events
from worker.core.calibrators.context_features import (
    category_of,
    check_edges,
    check_fields,
    hour_features,
    hour_of,
    number_feature,
    position_bucket,
)
from worker.core.calibrators.contextual import MAX_HARMONICS, ContextualCalibrator
from worker.core.calibrators.online_platt import OnlinePlatt
from worker.core.checks import check_int, check_positive, is_real
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.mathfn import clamp_logit, sigmoid

__all__ = ["OnlineContextual"]

_CONFIG_KEYS = (
    "gamma", "rho", "a_min", "a_max", "b_max", "shrinkage", "w_max", "w_gamma", "w_rho",
    "hour_harmonics",
    "position_edges", "segment", "fields", "max_categories",
)
_SEGMENT = "segment"
Context = Mapping[str, Any]


class OnlineContextual:
    """Contextual Platt scaling by the online Newton step (drop-in beside ``OnlinePlatt``).

    Parameters ``(a, b)`` (context-free) and ``w = (w_a, w_b)`` (context weights); for one
    labelled event with model logit ``z`` (clamped as DESIGN §3 clamps a logit), label ``y``
    and context features ``x``, centred by their running means ``m``::

        eta     = a exp(w_a . (x - m)) z + b + w_b . (x - m)
        r       = sigmoid(eta) - y
        (a, b)  : the OnlinePlatt round with gradient (r exp(w_a . (x - m)) z, r)
        g_w     = r (a(x) z (x - m), (x - m)) + shrinkage w
        A_w    += g_w g_w'                              # A_w starts at w_rho * I
        w       = clip(w - A_w^-1 g_w / w_gamma, +-w_max)

    Two blocks, each an online Newton step: ``(a, b)`` runs exactly ``OnlinePlatt``'s round
    (its ``gamma``, ``rho`` and box, through ``OnlinePlatt.step_gradient``), so it tracks a
    change as fast as the context-free learner does, and with no features this *is*
    ``OnlinePlatt``; the weights describe recurring patterns (hours, positions, devices)
    and learn on a slower, averaging scale (``w_gamma = 1``: the plain Newton recursion).
    The blocks are preconditioned separately (``A`` block-diagonal): the features are
    centred, so in expectation the weights' gradients are uncorrelated with ``(a, b)``'s.
    With a single ``A`` and ``gamma = 0.1`` for everything, the first day was unstable on
    the realistic scenario (seed 1: slopes from 0.08 to 5 within 20k events, ECE 0.07):
    until a second day is seen the hour of day is confounded with time, and a tracking
    step lets the hour weights chase the drift. The loss is ``logloss + shrinkage / 2 *
    |w|^2`` per event: a weight must earn more than its penalty on every event, so a
    feature that does not predict stays near 0. ``A_w^-1`` is kept by Sherman-Morrison
    (O(d^2) per event, ``d = 2 x columns``); ``+-w_max`` is a safeguard the penalty keeps
    inactive.

    Centring (``m``, the running mean of each feature over the events where it was present;
    a missing feature counts as at its mean) makes ``(a, b)`` the map at the average
    context, so a context with missing fields falls back to a sensible map; without it a
    one-hot group that is always present (position, segment) and ``(a, b)`` share one
    direction, and ``a`` alone could sit far from any served slope.

    Features (``ContextualCalibrator``): ``hour_harmonics`` pairs of the UTC hour of day
    (0: off), one-hot ``position`` buckets at ``position_edges`` (empty: off), one-hot
    ``segment`` (``segment=True``), and each of ``fields`` (the impression's ``context``
    fields the decoder keeps): one-hot when a string, ``sign(v) log1p(|v|)`` when a number.
    Category values get a column when first seen, up to ``max_categories`` per field, then
    share an "other" column. A column is added as if it had been there from the start
    (its gradient was 0 on every earlier event, so ``A`` was ``rho`` on it and 0 across).

    Defaults, and why (``gamma``, ``rho``, ``a_min``, ``a_max``, ``b_max`` as
    ``OnlinePlatt``'s):

    - ``shrinkage = 1e-4``: a one-hot column active on a share ``f`` of the events at CTR
      ``p`` has Fisher information ``f p (1 - p)`` per event on its intercept, and is shrunk
      by ``f p (1 - p) / (f p (1 - p) + shrinkage)``: 0.97 at ``f = 0.1``, ``p = 0.04``; a
      column seen on 0.3 % of the events or fewer is mostly shrunk away;
    - ``hour_harmonics = 3``: a daily pattern a few hours wide (the realistic scenario's
      morning over-confidence is a bump 1.5 h wide) keeps half of its amplitude at the
      third harmonic; more costs variance;
    - ``position_edges = (0, 1, 2, 4, 9)``: the top slots one by one, then 3-4, 5-9, 10+;
    - ``w_max = 5``: ``exp(5)`` ~ 150 x on the slope from one feature;
    - ``w_gamma = 1``, ``w_rho = 3000``: a slow, averaging block with a prior worth
      ~15k events on a slope weight (per-event information ``z^2 p (1 - p) (x - m)^2`` ~
      0.2 at 4 % CTR) while one day shows every hour once. Tuned on the realistic
      scenario, seed 1, 190k events (NLL / ECE; online Platt 0.15366 / 0.0012): ``w_rho``
      100 gave 0.16286 / 0.0022 (worse than the raw model: the weights chased day 1),
      1000 gave 0.15349 / 0.0008, 3000 0.15273 / 0.0011, 10000 0.15282 / 0.0012;
      ``w_gamma = 0.1`` or 0.5 were unstable, 2 no better than 1.

    >>> import numpy as np
    >>> rng = np.random.default_rng(5)
    >>> n = 60_000
    >>> hours = rng.uniform(0, 24, n)
    >>> true_z = rng.normal(-3.0, 1.0, n)
    >>> y = (rng.random(n) < 1 / (1 + np.exp(-true_z))).astype(float)
    >>> temp = np.where(hours < 12, 2.0, 1.0)          # over-confident before noon
    >>> ons = OnlineContextual(hour_harmonics=1, position_edges=(), segment=False)
    >>> ons.update_many(temp * true_z, y, [{"hour": h} for h in hours])
    >>> cal = ons.calibrator()
    >>> am, _ = cal.slope_intercept({"hour": 6.0})
    >>> ae, _ = cal.slope_intercept({"hour": 18.0})
    >>> bool(am < 0.55 and ae > 0.7), ons.n     # true slopes: 0.5 at 06:00, 1.0 at 18:00
    (True, 60000)
    >>> OnlineContextual.from_dict(ons.to_dict()) == ons
    True
    """

    def __init__(
        self,
        *,
        gamma: float = 0.1,
        rho: float = 100.0,
        a_min: float = 0.01,
        a_max: float = 100.0,
        b_max: float = 20.0,
        shrinkage: float = 1e-4,
        w_max: float = 5.0,
        w_gamma: float = 1.0,
        w_rho: float = 3000.0,
        hour_harmonics: int = 3,
        position_edges: Sequence[int] = (0, 1, 2, 4, 9),
        segment: bool = True,
        fields: Sequence[str] = (),
        max_categories: int = 16,
        start: tuple[float, float] = (1.0, 0.0),
        memory: float | None = None,
    ) -> None:
        # The context-free block, and the validation of its settings; ``start`` is its
        # starting map and ``memory`` its forgetting, as ``OnlinePlatt``'s (the policy
        # starts a learner where serving is).
        self._platt = OnlinePlatt(gamma=gamma, rho=rho, a_min=a_min, a_max=a_max, b_max=b_max,
                                  start=start, memory=memory)
        if isinstance(shrinkage, bool) or not (is_real(shrinkage) and shrinkage >= 0):
            raise ConfigError(f"shrinkage must be a finite number >= 0; got {shrinkage!r}")
        self._shrinkage = float(shrinkage)
        self._w_max = check_positive("w_max", w_max)
        self._w_gamma = check_positive("w_gamma", w_gamma)
        self._w_rho = check_positive("w_rho", w_rho)
        self._hour_harmonics = check_int("hour_harmonics", hour_harmonics, 0)
        if self._hour_harmonics > MAX_HARMONICS:
            raise ConfigError(f"hour_harmonics must be <= {MAX_HARMONICS}; got {hour_harmonics}")
        edges = check_edges("position_edges", position_edges)
        self._position_edges = edges
        if not isinstance(segment, bool):
            raise ConfigError(f"segment must be true or false; got {segment!r}")
        self._segment = segment
        self._fields = check_fields("fields", fields)
        self._max_categories = check_int("max_categories", max_categories, 1)
        # Columns: hour pairs, then position buckets, then category values / numbers as they
        # appear. Column c owns theta[2 + 2c] (its w_a) and theta[3 + 2c] (its w_b).
        self._n_fixed = 2 * self._hour_harmonics + (len(edges) + 1 if edges else 0)
        # field -> (values in order, their columns, [the "other" column] or [])
        self._cats: dict[str, tuple[list[str], list[int], list[int]]] = {}
        self._nums: dict[str, int] = {}
        # Per column: the sum of its value over the events where its feature was present;
        # per feature (group key): how many such events. Mean = sum / seen.
        self._sums: list[float] = [0.0] * self._n_fixed
        self._seen: dict[str, int] = {}
        d = 2 * self._n_fixed
        self._w = np.zeros(d)  # w_a of column c at 2c, its w_b at 2c + 1
        self._p = np.eye(d) / self._w_rho  # A_w^-1

    # ------------------------------------------------------------------ read

    @property
    def params(self) -> tuple[float, float]:
        """The current context-free ``(a, b)``."""
        return self._platt.params

    @property
    def n(self) -> int:
        """Labelled events seen."""
        return self._platt.n

    @property
    def dimension(self) -> int:
        """Parameters learnt so far (2 + 2 per feature column)."""
        return 2 + int(self._w.size)

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as the constructor takes them (JSON-ready)."""
        out: dict[str, Any] = {**self._platt.config()}
        out.update({k: getattr(self, "_" + k) for k in _CONFIG_KEYS if k not in out})
        out["position_edges"] = list(self._position_edges)
        out["fields"] = list(self._fields)
        return out

    def calibrator(self) -> ContextualCalibrator:
        """The current map as a servable ``contextual`` calibrator."""
        t = self._w.tolist()
        features: list[dict[str, Any]] = []
        k = self._hour_harmonics
        if k:
            features.append({"kind": "hour", "harmonics": k,
                             **self._weights(t, "hour", range(2 * k))})
        if self._position_edges:
            features.append({"kind": "position", "edges": list(self._position_edges),
                             **self._weights(t, "position", range(2 * k, self._n_fixed))})
        for name in self._category_order():
            if name in self._cats:
                values, cols, other = self._cats[name]
                w = self._weights(t, "category:" + name, [*cols, *other])
                if not other:  # "other" never seen: weight 0, mean 0
                    for v in w.values():
                        v.append(0.0)
                features.append({"kind": "category", "field": name, "values": list(values), **w})
            if name in self._nums:
                features.append({"kind": "number", "field": name,
                                 **self._weights(t, "number:" + name, [self._nums[name]])})
        a, b = self._platt.params
        return ContextualCalibrator(a, b, features)

    def _weights(self, t: list[float], group: str, cols: Sequence[int]) -> dict[str, list[float]]:
        seen = self._seen.get(group, 0)
        return {
            "w_a": [t[2 * c] for c in cols],
            "w_b": [t[2 * c + 1] for c in cols],
            "mean": [self._sums[c] / seen if seen else 0.0 for c in cols],
        }

    def _category_order(self) -> list[str]:
        return ([_SEGMENT] if self._segment else []) + list(self._fields)

    def rescale(self, alpha: float, beta: float) -> None:
        """Continue from ``sigmoid(alpha * eta + beta)`` of the current map's logit ``eta``
        (``ContextualCalibrator.rescaled``), the context-free block restarted (its
        curvature back to ``rho``: it tracks the new level fast), the context weights and
        their curvature kept (the patterns they learnt still hold). The policy calls this
        after a detected change."""
        if not (is_real(alpha) and alpha > 0.0 and is_real(beta)):
            raise ConfigError(f"rescale needs alpha > 0 and a finite beta; got {alpha!r}, "
                              f"{beta!r}")
        a, b = self._platt.params
        self._platt = OnlinePlatt(**self._platt.config(), start=(alpha * a, alpha * b + beta))
        self._w[1::2] *= alpha
        np.clip(self._w, -self._w_max, self._w_max, out=self._w)

    # ------------------------------------------------------------------ update

    def update(self, z: float, y: float, context: Context | None = None) -> None:
        """One labelled event: model logit ``z``, label ``y`` in {0, 1}, its serving-time
        ``context`` (``ts``, ``position``, ``segment`` and the configured fields)."""
        check_event(z, y)
        if context is not None and not isinstance(context, Mapping):
            raise InvalidInputError("schema", f"context must be a mapping; got {context!r}")
        self._step(clamp_logit(float(z)), float(y), context)

    def update_many(
        self, z: ArrayLike, y: ArrayLike, contexts: Sequence[Context | None] | None = None
    ) -> None:
        """Events in order; the same result as ``update`` on each in turn (ONS is sequential).

        The whole batch is validated first, so a bad event leaves the state unchanged.
        """
        za, ya = check_events(z, y)
        if contexts is None:
            ctx: Sequence[Context | None] = [None] * za.size
        elif len(contexts) != za.size or not all(
            c is None or isinstance(c, Mapping) for c in contexts
        ):
            raise InvalidInputError(
                "schema", f"contexts must be {za.size} mappings (or None); got {len(contexts)}"
            )
        else:
            ctx = contexts
        step = self._step
        for zi, yi, ci in zip(za.tolist(), ya.tolist(), ctx, strict=True):
            step(clamp_logit(zi), yi, ci)

    def _columns(self, context: Context | None) -> list[tuple[int, float]]:
        """The event's centred (column, x - mean) pairs over its present features; the means
        include this event, and new category values get a column."""
        if not context:
            return []
        present: list[tuple[str, Sequence[int], list[tuple[int, float]]]] = []
        col: int | None
        k = self._hour_harmonics
        if k:
            h = hour_of(context)
            if h is not None:
                present.append(("hour", range(2 * k), list(enumerate(hour_features(h, k)))))
        if self._position_edges:
            bucket = position_bucket(context, self._position_edges)
            if bucket is not None:
                present.append(
                    ("position", range(2 * k, self._n_fixed), [(2 * k + bucket, 1.0)])
                )
        for name in self._category_order():
            value = context.get(name)
            cat = category_of(value)
            if cat is not None:
                col = self._category_column(name, cat)
                _, cat_cols, other = self._cats[name]
                present.append(("category:" + name, [*cat_cols, *other], [(col, 1.0)]))
            elif name != _SEGMENT:
                x = number_feature(value)
                if x is not None:
                    col = self._nums.get(name)
                    if col is None:
                        col = self._nums[name] = self._new_column()
                    present.append(("number:" + name, [col], [(col, x)]))
        out: list[tuple[int, float]] = []
        sums, seen = self._sums, self._seen
        for group, cols, pairs in present:
            n = seen[group] = seen.get(group, 0) + 1
            hot = dict(pairs)
            for c, v in pairs:
                sums[c] += v
            out.extend((c, hot.get(c, 0.0) - sums[c] / n) for c in cols)
        return out

    def _category_column(self, name: str, value: str) -> int:
        entry = self._cats.get(name)
        if entry is None:
            entry = self._cats[name] = ([], [], [])
        values, cols, other = entry
        try:
            return cols[values.index(value)]
        except ValueError:
            pass
        if len(values) < self._max_categories:
            values.append(value)
            cols.append(self._new_column())
            return cols[-1]
        if not other:
            other.append(self._new_column())
        return other[0]

    def _new_column(self) -> int:
        """Append a column: w gets (0, 0), A_w^-1 a block 1 / w_rho with nothing across."""
        d = self._w.size
        self._w = np.concatenate([self._w, np.zeros(2)])
        p = np.zeros((d + 2, d + 2))
        p[:d, :d] = self._p
        p[d, d] = p[d + 1, d + 1] = 1.0 / self._w_rho
        self._p = p
        self._sums.append(0.0)
        return d // 2

    def _step(self, z: float, y: float, context: Context | None) -> None:
        active = self._columns(context)
        w = self._w
        a0, b0 = self._platt.params
        s = 0.0
        eta_b = b0
        for c, x in active:
            s += float(w[2 * c]) * x
            eta_b += float(w[2 * c + 1]) * x
        e = math.exp(s)  # |s| <= w_max * sum |x - m|: far from overflow
        a_x = a0 * e
        r = sigmoid(a_x * z + eta_b) - y
        if w.size:
            # The penalty's gradient on every weight, then the log loss's on the active ones.
            g = self._shrinkage * w
            raz = r * a_x * z
            for c, x in active:
                g[2 * c] += raz * x
                g[2 * c + 1] += r * x
            p = self._p
            u = p @ g
            denom = 1.0 + float(g @ u)
            # Sherman-Morrison: (A + g g')^-1 = P - u u' / (1 + g'u), and
            # (A + g g')^-1 g = u / (1 + g'u).
            p -= np.outer(u, u) / denom
            w -= u / (denom * self._w_gamma)
            np.clip(w, -self._w_max, self._w_max, out=w)
        self._platt.step_gradient(r * e * z, r)

    # ------------------------------------------------------------------ state

    def to_dict(self) -> dict[str, Any]:
        """State with version field ``"v": 1`` (``A^-1`` whole, so a restored learner
        continues bit for bit)."""
        return {
            "v": 1,
            **self.config(),
            "platt": self._platt.to_dict(),
            "w": self._w.tolist(),
            "A_w_inv": self._p.tolist(),
            "categories": {k: {"values": list(v), "columns": list(c), "other": list(o)}
                           for k, (v, c, o) in self._cats.items()},
            "numbers": dict(self._nums),
            "sums": list(self._sums),
            "seen": dict(self._seen),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnlineContextual:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported online contextual state version {data.get('v')!r}")
            out = cls(**{k: data[k] for k in _CONFIG_KEYS}, memory=data.get("memory"))
            platt = OnlinePlatt.from_dict(data["platt"])
            if platt.config() != out._platt.config():
                raise ValueError("the context-free block's settings differ from the learner's")
            w = np.array(data["w"], dtype=np.float64)
            p = np.array(data["A_w_inv"], dtype=np.float64)
            cats = {
                str(k): (list(v["values"]), [int(c) for c in v["columns"]],
                         [int(c) for c in v["other"]])
                for k, v in data["categories"].items()
            }
            nums = {str(k): int(c) for k, c in data["numbers"].items()}
            sums = [float(v) for v in data["sums"]]
            seen = {str(k): int(v) for k, v in data["seen"].items()}
            d = w.size
            cols = sorted([c for _, cs, o in cats.values() for c in (*cs, *o)]
                          + list(nums.values()))
            if w.ndim != 1 or d != 2 * (out._n_fixed + len(cols)):
                raise ValueError(f"w has {d} values for {len(cols)} learnt columns")
            if cols != list(range(out._n_fixed, out._n_fixed + len(cols))):
                raise ValueError("columns must number the learnt features once each")
            if p.shape != (d, d) or not (np.isfinite(p).all() and np.isfinite(w).all()):
                raise ValueError("w and A_w_inv must be finite, A_w_inv d x d")
            if not np.array_equal(p, p.T):
                raise ValueError("A_w_inv must be symmetric")
            if d:
                np.linalg.cholesky(p)  # LinAlgError (a ValueError) unless positive definite
            if (np.abs(w) > out._w_max).any():
                raise ValueError(f"weights must be within +-w_max = {out._w_max}")
            for name, (values, cs, other) in cats.items():
                if name not in out._category_order() or len(values) != len(cs) or len(
                    other
                ) > 1 or len(values) > out._max_categories or not all(
                    category_of(v) is not None for v in values
                ):
                    raise ValueError(f"malformed categories of {name!r}")
            if any(name not in out._fields for name in nums):
                raise ValueError("numbers must name configured fields")
            if len(sums) != out._n_fixed + len(cols) or not all(map(math.isfinite, sums)):
                raise ValueError("sums must hold one finite number per column")
            if any(v < 0 for v in seen.values()):
                raise ValueError("seen counts must be >= 0")
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError, StateError) as exc:
            raise StateError(f"malformed online contextual state: {exc}") from exc
        out._platt, out._w, out._p = platt, w, p
        out._cats, out._nums = cats, nums
        out._sums, out._seen = sums, seen
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OnlineContextual):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.params, self.n))

    def __repr__(self) -> str:
        a, b = self.params
        return f"OnlineContextual(a={a:.6g}, b={b:.6g}, d={self.dimension}, n={self.n})"

