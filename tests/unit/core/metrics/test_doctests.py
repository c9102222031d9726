"""The docstring examples of the metrics package run and pass."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "worker.core.metrics.calibration_report",
    "worker.core.metrics.functions",
    "worker.core.metrics.online_ece",
    "worker.core.metrics.reliability_bin",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
