"""Build a calibrator from its ``{"method", "params"}`` form (a version message's fields)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.contextual import ContextualCalibrator
from worker.core.calibrators.identity import IdentityCalibrator
from worker.core.calibrators.isotonic import IsotonicCalibrator
from worker.core.calibrators.platt import PlattCalibrator
from worker.core.calibrators.temperature import TemperatureCalibrator
from worker.core.errors import ConfigError, InvalidInputError

CALIBRATOR_CLASSES: dict[str, type[Calibrator]] = {
    cls.method: cls
    for cls in (
        IdentityCalibrator,
        TemperatureCalibrator,
        PlattCalibrator,
        IsotonicCalibrator,
        ContextualCalibrator,
    )
}


def calibrator_from_dict(data: Mapping[str, Any]) -> Calibrator:
    """The calibrator described by ``{"method": ..., "params": ...}`` (extra keys ignored, so
    a whole calibrator version message works too).

    The dict comes from a topic, so anything malformed — unknown method, wrong or invalid
    params — raises ``InvalidInputError("schema", ...)``, never a crash.

    >>> calibrator_from_dict({"method": "platt", "params": {"a": 0.8, "b": -0.1}})
    PlattCalibrator({'a': 0.8, 'b': -0.1})
    >>> calibrator_from_dict({"method": "temperature", "params": {"temperature": 0}})
    Traceback (most recent call last):
    ...
    worker.core.errors.InvalidInputError: invalid temperature calibrator: temperature must be a finite number > 0; got 0
    """  # noqa: E501
    if not isinstance(data, Mapping):
        raise InvalidInputError("schema", f"a calibrator must be an object; got {data!r}")
    method = data.get("method")
    cls = CALIBRATOR_CLASSES.get(method) if isinstance(method, str) else None
    if cls is None:
        raise InvalidInputError(
            "schema",
            f"method must be one of {sorted(CALIBRATOR_CLASSES)}; got {method!r}",
        )
    if "params" not in data:
        raise InvalidInputError("schema", f"{method} calibrator needs params")
    try:
        return cls.from_params(data["params"])
    except ConfigError as exc:
        raise InvalidInputError("schema", f"invalid {method} calibrator: {exc}") from exc
