"""Multi-layer perceptrons as pure functions over a parameter pytree.

Layout: ``params`` is a list with one dict per layer, ``{"W": (out, in), "b": (out,)}``. The
network is ``A = W_n σ(W_{n-1} … σ(W_1 x + b_1) … + b_{n-1}) + b_n``: hidden layers apply the
activation σ, the last layer is linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from jaxjac.activations import Activation, get_activation

__all__ = ["MLPParams", "mlp_apply", "mlp_init", "mlp_sizes", "validate_mlp_params"]

MLPParams = list[dict[str, Any]]


def mlp_init(key: jax.Array, sizes: Sequence[int], *, dtype: DTypeLike = jnp.float32) -> MLPParams:
    """Initialise an MLP with scaled (LeCun-normal) weights and zero biases.

    ``W_l ~ N(0, 1/fan_in)`` keeps pre-activations of order one for tanh-like activations.

    Args:
        key: a PRNG key; the only source of randomness.
        sizes: ``[n_in, h_1, …, n_out]``, at least two positive integers.
        dtype: floating dtype of every leaf.

    Returns:
        A list of ``len(sizes) - 1`` dicts ``{"W": (sizes[l+1], sizes[l]), "b": (sizes[l+1],)}``.

    Raises:
        TypeError: if ``key`` is not a PRNG key (an ``int`` seed, say).
        ValueError: for fewer than two sizes, a size below one, or a non-floating dtype.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(
            f"sizes must be at least two positive integers [n_in, ..., n_out], got {sizes}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if isinstance(key, (int, float, np.number)) or not hasattr(key, "shape"):
        raise TypeError(
            f"key must be a JAX PRNG key such as jax.random.key(0), got {type(key).__name__} "
            f"{key!r}"
        )
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (n_out, n_in), dtype) / math.sqrt(n_in)
        params.append({"W": w, "b": jnp.zeros((n_out,), dtype)})
    return params


def validate_mlp_params(params: MLPParams) -> list[int]:
    """Check an MLP parameter list and return its layer sizes ``[n_in, h_1, …, n_out]``.

    Raises:
        ValueError: naming the offending layer index (0-based) and the shapes found.
    """
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError(
            f"params must be a non-empty list of {{'W': (out, in), 'b': (out,)}} dicts, "
            f"got {type(params).__name__}"
        )
    sizes: list[int] = []
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or "W" not in layer or "b" not in layer:
            found = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise ValueError(f"layer {i}: expected a dict with keys 'W' and 'b', got {found}")
        w_shape, b_shape = np.shape(layer["W"]), np.shape(layer["b"])
        if len(w_shape) != 2:
            raise ValueError(f"layer {i}: W must have shape (out, in), got shape {w_shape}")
        if b_shape != (w_shape[0],):
            raise ValueError(
                f"layer {i}: b must have shape ({w_shape[0]},) to match W {w_shape}, got {b_shape}"
            )
        if 0 in w_shape:
            raise ValueError(
                f"layer {i}: W has shape {w_shape}; every layer needs at least one input and one "
                "output (a zero-width layer, zero inputs or zero outputs has no derivatives)"
            )
        if i == 0:
            sizes.append(w_shape[1])
        elif w_shape[1] != sizes[-1]:
            raise ValueError(
                f"layer {i}: W has {w_shape[1]} inputs but layer {i - 1} has {sizes[-1]} outputs"
            )
        sizes.append(w_shape[0])
    return sizes


def mlp_sizes(params: MLPParams) -> list[int]:
    """Layer sizes ``[n_in, h_1, …, n_out]`` of a valid MLP parameter list."""
    return validate_mlp_params(params)


def check_mlp_input(params: MLPParams, x: ArrayLike) -> tuple[list[int], tuple[int, ...]]:
    """Validate params and an input ``(n_in,)`` or ``(B, n_in)``; return sizes and x's shape."""
    sizes = validate_mlp_params(params)
    shape = np.shape(x)
    if len(shape) not in (1, 2) or shape[-1] != sizes[0]:
        raise ValueError(
            f"x must have shape ({sizes[0]},) or (batch, {sizes[0]}) to match W_1 of shape "
            f"({sizes[1]}, {sizes[0]}); got shape {shape}"
        )
    return sizes, shape


def mlp_apply(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> jax.Array:
    """Evaluate the MLP.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: name or :class:`~jaxjac.Activation` for the hidden layers.

    Returns:
        ``(n_out,)`` or ``(B, n_out)``.
    """
    check_mlp_input(params, x)
    act = get_activation(activation)
    a = jnp.asarray(x)
    for layer in params[:-1]:
        a = act.f(a @ layer["W"].T + layer["b"])
    return a @ params[-1]["W"].T + params[-1]["b"]
