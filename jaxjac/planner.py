"""Deprecated: the route planner is now :mod:`jaxjac.routes` (``resolve``, ``explain``).

Kept so that code written against it keeps running: :func:`plan` and :func:`explain` forward to
:func:`jaxjac.routes.resolve` and :func:`jaxjac.routes.explain` with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from jaxjac import routes
from jaxjac._mlp import mlp_activation
from jaxjac._programs import DERIVATIVE_TASKS
from jaxjac.routes import Plan

__all__ = ["TASKS", "Plan", "explain", "mlp_activation", "plan"]

TASKS = DERIVATIVE_TASKS


def _warn(name: str) -> None:
    new = "resolve" if name == "plan" else name
    warnings.warn(
        f"jaxjac.planner.{name} is deprecated: use jaxjac.routes.{new}",
        DeprecationWarning,
        stacklevel=3,
    )


def plan(task: str, f: Callable, params: Any, xs: Any, **options: Any) -> Plan:
    """Deprecated alias of :func:`jaxjac.routes.resolve`."""
    _warn("plan")
    return routes.resolve(task, f, params, xs, **options)


def explain(task: str, f: Callable, params: Any, xs: Any, **options: Any) -> Plan:
    """Deprecated alias of :func:`jaxjac.routes.explain`."""
    _warn("explain")
    return routes.explain(task, f, params, xs, **options)
