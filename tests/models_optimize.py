"""Example model of recipes/optimize.yaml: ``bloated.onnx``, built by ``optimize_example``."""

from __future__ import annotations

from surgeon.examples import optimize_example  # noqa: F401  (re-exported for the tests)
