"""Option checks shared by every entry point: one message for each kind of bad value."""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp

__all__ = [
    "check_batched",
    "check_choice",
    "check_differentiable",
    "is_count",
    "positive_int",
]


def is_count(value: Any) -> bool:
    """An integer option's type check: ``int`` or a NumPy integer, not ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> Any:
    """``value`` as a Python int if it is an integer ``>= minimum`` (NumPy's too, not bool).

    Raises:
        ValueError: naming ``name``, what it must be and what it was.
    """
    if value is None and allow_none:
        return None
    if not is_count(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming them."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable or incomparable value
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_differentiable(name: str, dtype: Any) -> None:
    """Refuse dtypes that cannot be differentiated (integers, booleans), naming ``name``."""
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{name} must be a floating array to differentiate with respect to it, got dtype "
            f"{dtype}; pass {name}.astype(jnp.float32) (or float64)"
        )


def check_batched(name: str, shape: tuple[int, ...]) -> None:
    """Refuse a scalar where a leading batch axis is needed."""
    if len(shape) < 1:
        raise ValueError(f"{name} must have a leading batch axis, got a scalar of shape {shape}")
