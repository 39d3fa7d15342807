"""The evaluation engine: suites, scorers, Ray-distributed generation, reports with CIs.

Entry points: :func:`evaluate` and :func:`measure_noise` (flow-ready), the typer sub-app
``loopwright.evaluation.cli.eval_app`` (``loopwright eval``), and the scorer registry
(:func:`list_scorers`, :func:`build_scorer`).

Names are imported lazily (PEP 562) so that mounting the CLI sub-app does not import
torch; ``from loopwright.evaluation import evaluate`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalResult": "api",
    "NoiseReport": "api",
    "evaluate": "api",
    "measure_noise": "api",
    "EngineConfig": "engine",
    "EngineError": "engine",
    "Score": "scorers",
    "ScorerError": "scorers",
    "ScorerResources": "scorers",
    "build_scorer": "scorers",
    "list_scorers": "scorers",
    "register": "scorers",
    "SuiteError": "suites",
    "discover_suites": "suites",
    "load_samples": "suites",
    "load_suite": "suites",
    "EndpointTarget": "targets",
    "LocalModelTarget": "targets",
    "TargetError": "targets",
    "log_to_mlflow": "mlflow_log",
    "load_resources": "resources",
    "gate_summary": "api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
