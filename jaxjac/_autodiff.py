"""Per-example autodiff building blocks: plain functions that compose under vmap, grad, shard_map.

The public entry points (:mod:`jaxjac.derivatives`, :mod:`jaxjac.calculus`) jit these, and the
resolver (:mod:`jaxjac.routes`) vectorises them over a batch on its autodiff route. Layouts
(``f_out`` is the shape of ``f(params, x)``): input Jacobian ``f_out + x.shape``, input Hessian
``f_out + x.shape + x.shape``, weight Jacobian a pytree like ``params`` with leaves
``f_out + leaf.shape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from jaxjac._checks import check_choice, check_differentiable

__all__ = [
    "MODES",
    "as_float",
    "cheaper_mode",
    "check_square",
    "det",
    "differentiable_input",
    "divergence",
    "input_hessian",
    "input_hvp",
    "input_jacobian",
    "input_jvp",
    "input_vjp",
    "laplacian",
    "out_size",
    "out_struct",
    "second_directional",
    "slogdet",
    "square_jacobian",
    "weight_hessian",
    "weight_hessian_matrix",
    "weight_hvp",
    "weight_jacobian",
    "weight_jvp",
    "weight_vjp",
]

Fn = Callable[[Any, jax.Array], Any]
MODES = ("auto", "fwd", "rev")
# Above this many directions the "auto" method loops: vmapping n tangents holds n copies of every
# intermediate of f, which for a network on a batch is what runs out of memory first.
VMAP_MAX_SIZE = 512
METHODS = ("auto", "vmap", "loop")


def cheaper_mode(n_in: int, n_out: int, mode: str = "auto") -> str:
    """Forward or reverse accumulation for an ``(n_out, n_in)`` Jacobian.

    Forward mode costs one pass per input column, reverse mode one per output row, so ``auto``
    picks ``fwd`` when ``n_in <= n_out`` and ``rev`` otherwise.
    """
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    return "fwd" if n_in <= n_out else "rev"


def out_size(f: Fn, params: Any, x: jax.Array) -> int:
    """Number of entries of ``f(params, x)``, all leaves together."""
    out = jax.eval_shape(f, params, x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(out))


def differentiable_input(x: ArrayLike) -> jax.Array:
    """``x`` as an array (a list or tuple of numbers, as a user may write it), floating."""
    x = jnp.asarray(x)
    check_differentiable("x", x.dtype)
    return x


# --- derivatives of f(params, x) -----------------------------------------------------------


def input_jacobian(f: Fn, params: Any, x: jax.Array, mode: str = "auto") -> Any:
    """``f_out + x.shape``, by ``jacfwd`` or ``jacrev`` (``auto``: fewer passes)."""
    mode = cheaper_mode(math.prod(jnp.shape(x)), out_size(f, params, x), mode)
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    return jac(lambda x_: f(params, x_))(x)


def input_hessian(f: Fn, params: Any, x: jax.Array) -> Any:
    """``f_out + x.shape + x.shape``, forward-over-reverse."""
    # The cheapest generic composition: one reverse sweep per tangent.
    return jax.hessian(lambda x_: f(params, x_))(x)


def weight_jacobian(f: Fn, params: Any, x: jax.Array, mode: str = "rev") -> Any:
    """A pytree like ``params`` with leaves ``f_out + leaf.shape``."""
    check_choice("mode", mode, MODES)
    n_params = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
    mode = cheaper_mode(n_params, out_size(f, params, x), mode)
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    return jac(lambda p: f(p, x))(params)


def _scalar_loss(f: Fn, params: Any, x: jax.Array) -> Callable[[Any], jax.Array]:
    out = jax.eval_shape(f, params, x)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"f must return a scalar (a loss) for weight Hessians, got shape {shape}")
    return lambda p: f(p, x)


def weight_hessian(f: Fn, params: Any, x: jax.Array) -> Any:
    """``H[i][j]`` over ``params``' structure twice, leaves ``leaf_i.shape + leaf_j.shape``."""
    return jax.hessian(_scalar_loss(f, params, x))(params)


def weight_hessian_matrix(f: Fn, params: Any, x: jax.Array) -> jax.Array:
    """``(P, P)`` over the raveled parameters (:func:`jax.flatten_util.ravel_pytree` order)."""
    loss = _scalar_loss(f, params, x)
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda v: loss(unravel(v)))(flat)


def input_jvp(f, params, x, v):
    """``(f(params, x), J v)``."""
    return jax.jvp(lambda x_: f(params, x_), (x,), (v,))


def input_vjp(f, params, x, u):
    """``(f(params, x), uᵀ J)``."""
    out, pullback = jax.vjp(lambda x_: f(params, x_), x)
    return out, pullback(u)[0]


def input_hvp(f, params, x, v):
    """``Σ_j H[..., :, j] v_j`` for every output, forward-over-reverse."""
    return jax.jvp(jax.jacrev(lambda x_: f(params, x_)), (x,), (v,))[1]


def weight_jvp(f, params, x, tangent):
    """``(f(params, x), J_w tangent)``."""
    return jax.jvp(lambda p: f(p, x), (params,), (tangent,))


def weight_vjp(f, params, x, u):
    """``(f(params, x), uᵀ J_w)``."""
    out, pullback = jax.vjp(lambda p: f(p, x), params)
    return out, pullback(u)[0]


def weight_hvp(f, params, x, v):
    """Hessian-vector product of a scalar ``f(params, x)`` in weight space."""
    return jax.jvp(jax.grad(_scalar_loss(f, params, x)), (params,), (v,))[1]


# --- operators of f(x) ---------------------------------------------------------------------


def as_float(x: ArrayLike) -> jax.Array:
    """``x`` as a floating-point array, or a ``TypeError`` naming its dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    return x


def out_struct(f: Callable, x: jax.Array) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``f(x)``, which must be a single array."""
    out = jax.eval_shape(f, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"f must return a single array, got {type(out).__name__}")
    return out


def check_square(f: Callable, x: jax.Array, what: str) -> jax.ShapeDtypeStruct:
    """Refuse ``f`` unless ``f(x)`` has ``x``'s shape (a square Jacobian), naming both."""
    out = out_struct(f, x)
    if out.shape != x.shape:
        raise ValueError(
            f"{what} needs a square Jacobian, f mapping x to an output of x's shape: x has shape "
            f"{x.shape}, f(x) has shape {out.shape} (a Jacobian of shape {out.shape + x.shape})"
        )
    return out


def resolve_method(method: str, size: int) -> str:
    """``"vmap"`` or ``"loop"``; ``"auto"`` vmaps up to :data:`VMAP_MAX_SIZE` directions."""
    check_choice("method", method, METHODS)
    if method == "auto":
        return "vmap" if size <= VMAP_MAX_SIZE else "loop"
    return method


def _basis(x: jax.Array) -> jax.Array:
    """The ``n`` unit vectors in x's shape: ``(n,) + x.shape``."""
    return jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))


def _unit(x: jax.Array, i: jax.Array) -> jax.Array:
    return jnp.zeros(x.size, x.dtype).at[i].set(1).reshape(x.shape)


def second_directional(f: Callable, x: jax.Array, v: jax.Array) -> jax.Array:
    """``vᵀ ∇²f_k(x) v`` for every output ``k`` (forward-over-forward), shape ``f_out``."""
    return jax.jvp(lambda y: jax.jvp(f, (y,), (v,))[1], (x,), (v,))[1]


def square_jacobian(f: Callable, x: ArrayLike) -> jax.Array:
    """``(n, n)``: the Jacobian of ``f: R^n -> R^n`` flattened row-major, by ``jacfwd``."""
    x = as_float(x)
    check_square(f, x, "a Jacobian determinant")
    return jax.jacfwd(f)(x).reshape(x.size, x.size)


def slogdet(jac: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|det|)`` of ``(..., n, n)`` matrices, ``-inf`` (never NaN) where singular."""
    # slogdet, not det: det multiplies n LU pivots and under- or overflows for moderate n (a
    # 200-dimensional flow scaling each axis by 0.02 has det 1e-340 = 0.0 in float64, so
    # log|det| = -inf), while slogdet sums their logs from the same LU and stays finite.
    sign, logabsdet = jnp.linalg.slogdet(jac)
    # An exactly singular LU already gives sign 0 and log|det| = -inf; pin the pair so no
    # backend's pivoting path can leak a NaN (from log 0 - log 0) into the sign-0 case.
    return sign, jnp.where(sign == 0, -jnp.inf, logabsdet)


@jax.custom_jvp
def det(jac: jax.Array) -> jax.Array:
    """``det`` of ``(..., n, n)`` matrices as ``sign · exp(log|det|)``: 0 where singular."""
    sign, logabsdet = slogdet(jac)
    return sign * jnp.exp(logabsdet)  # singular: 0 · exp(-inf) = 0 · 0 = 0, never NaN


@det.defjvp
def _det_jvp(primals, tangents):
    # The derivative of exp(log|det|) is NaN where J is singular (log|det| = -inf), while det
    # itself is smooth there (its derivative is the adjugate): take that from jnp.linalg.det.
    (jac,), (tangent,) = primals, tangents
    return det(jac), jax.jvp(jnp.linalg.det, (jac,), (tangent,))[1]


def divergence(f: Callable, x: ArrayLike, method: str = "auto") -> jax.Array:
    """``tr J`` of ``f: R^n -> R^n``, exact: ``()``."""
    x = as_float(x)
    out = check_square(f, x, "the divergence")
    n = x.size
    if resolve_method(method, n) == "vmap":
        return jnp.trace(jax.jacfwd(f)(x).reshape(n, n))
    # Linearize once (one forward pass, residuals kept), then n tangent-only passes.
    _, jvp = jax.linearize(f, x)

    def body(i, acc):
        return acc + jvp(_unit(x, i)).reshape(-1)[i]

    return jax.lax.fori_loop(0, n, body, jnp.zeros((), out.dtype))


def laplacian(f: Callable, x: ArrayLike, method: str = "auto") -> jax.Array:
    """``Σ_i ∂²f_k/∂x_i²`` of every output by ``n`` forward-over-forward passes: ``f_out``."""
    x = as_float(x)
    out = out_struct(f, x)
    if resolve_method(method, x.size) == "vmap":
        return jnp.sum(jax.vmap(lambda v: second_directional(f, x, v))(_basis(x)), axis=0)

    def body(i, acc):
        return acc + second_directional(f, x, _unit(x, i))

    return jax.lax.fori_loop(0, x.size, body, jnp.zeros(out.shape, out.dtype))
