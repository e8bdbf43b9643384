r"""jaxjac's MLP as the closed forms see it: recognising it, its forward pass, its adjoints.

Shared by the readable reference (:mod:`jaxjac.closed_form`), the tuned CPU path
(:mod:`jaxjac._mlp_cpu`), the resolver (:mod:`jaxjac.routes`) and the curvature module.
Notation: ``a_0 = x``, ``z_l = W_l a_{l-1} + b_l``, ``a_l = σ(z_l)`` for the hidden layers
``l = 1 … n-1``, ``A = W_n a_{n-1} + b_n``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxjac.activations import Activation, get_activation
from jaxjac.nets import MLPParams, mlp_apply, validate_mlp_params

__all__ = [
    "Forward",
    "adjoints",
    "forward",
    "is_mlp_params",
    "mlp_activation",
    "mlp_of_x",
    "mm",
    "promoted",
]


def mlp_activation(f: Any) -> Activation | None:
    """The activation if ``f(params, x)`` is jaxjac's MLP, else ``None``.

    Recognises :func:`jaxjac.mlp_apply` (tansig) and ``functools.partial(mlp_apply,
    activation=...)``, which is what :func:`jaxjac.mlp_function` returns.
    """
    if f is mlp_apply:
        return get_activation("tansig")
    if (
        isinstance(f, functools.partial)
        and f.func is mlp_apply
        and not f.args
        and set(f.keywords) <= {"activation"}
    ):
        return get_activation(f.keywords.get("activation", "tansig"))
    return None


def mlp_of_x(f: Any) -> tuple[MLPParams, Activation] | None:
    """``(params, activation)`` when ``f(x)`` is ``partial(mlp_apply, params[, activation=…])``.

    This is jaxjac's MLP as a function of ``x`` alone, the form the calculus helpers take.
    """
    if not (
        isinstance(f, functools.partial)
        and f.func is mlp_apply
        and len(f.args) == 1
        and set(f.keywords) <= {"activation"}
        and is_mlp_params(f.args[0])
    ):
        return None
    return f.args[0], get_activation(f.keywords.get("activation", "tansig"))


def is_mlp_params(params: Any) -> bool:
    """Whether ``params`` is a valid MLP parameter list (see :func:`jaxjac.validate_mlp_params`)."""
    try:
        validate_mlp_params(params)
    except ValueError:
        return False
    return True


def promoted(params: MLPParams, x: jax.Array) -> MLPParams:
    """``params`` cast to the dtype of the result.

    Float32 weights with float64 inputs (Flax's and ``mlp_init``'s default with x64 on) would
    otherwise square float32 values in float32; float64 weights with float32 inputs give a
    float64 result, as the network itself does.
    """
    dtype = jnp.result_type(x, *jax.tree_util.tree_leaves(params))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def mm(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` over the last axis of ``a``, as one 2-D GEMM.

    XLA lowers a broadcast ``(B, m, h) @ (h, o)`` to a batched dot that runs about 1.7x slower
    on the CPU than the same product with the leading axes flattened into one tall matrix.
    """
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(*a.shape[:-1], w.shape[-1])


class Forward(NamedTuple):
    """Per-layer quantities of a batched forward pass (hidden layers l = 1 … n-1)."""

    acts: list[jax.Array]  # a_0 … a_{n-1}, each (B, h_l)
    d1: list[jax.Array]  # σ'(z_l), each (B, h_l)
    d2: list[jax.Array]  # σ''(z_l), each (B, h_l); empty unless second=True
    out: jax.Array  # (B, n_out)


def forward(params: MLPParams, x: jax.Array, act: Activation, *, second: bool) -> Forward:
    """The forward pass of ``x: (B, n_in)`` keeping activations and ``σ'``, ``σ''`` per layer."""
    acts, d1, d2 = [x], [], []
    a = x
    for layer in params[:-1]:
        z = a @ layer["W"].T + layer["b"]
        a = act.f(z)
        acts.append(a)
        d1.append(act.df(z))
        if second:
            d2.append(act.d2f(z))
    out = a @ params[-1]["W"].T + params[-1]["b"]
    return Forward(acts, d1, d2, out)


def adjoints(params: MLPParams, d1: list[jax.Array], batch: int) -> list[jax.Array]:
    r"""``δ_l = ∂A/∂a_l`` for the hidden layers l = 1 … n-1, in layer order.

    ``δ_{n-1} = W_n`` and ``δ_{l-1} = (δ_l ⊙ σ'(z_l)) W_l``, each ``(B, n_out, h_l)``. Every
    closed form reads its quantities off these: the Jacobian ``(δ_1 ⊙ σ'(z_1)) W_1``, the weight
    Jacobian's ``∂A/∂z_l = δ_l ⊙ σ'(z_l)`` and the Hessian's ``c_l = δ_l ⊙ σ''(z_l)``.
    """
    if len(params) == 1:  # no hidden layer
        return []
    delta = jnp.broadcast_to(params[-1]["W"], (batch, *params[-1]["W"].shape))
    deltas = [delta]
    for layer, s in zip(reversed(params[1:-1]), reversed(d1[1:]), strict=True):
        delta = mm(delta * s[:, None, :], layer["W"])
        deltas.append(delta)
    return deltas[::-1]
