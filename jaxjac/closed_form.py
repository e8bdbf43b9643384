r"""Closed-form derivatives of MLPs, layer by layer: the readable reference and the cross-check.

Notation, for ``A = W_n σ(W_{n-1} … σ(W_1 x + b_1) … + b_{n-1}) + b_n``::

    a_0 = x,   z_l = W_l a_{l-1} + b_l,   a_l = σ(z_l)   (l = 1 … n-1),   A = W_n a_{n-1} + b_n.

**Jacobian.** By the chain rule ``J = W_n diag(σ'(z_{n-1})) W_{n-1} … diag(σ'(z_1)) W_1``.
The product is accumulated from the output side (``n_out`` rows carried through every layer:
the adjoints ``δ_l = ∂A/∂a_l``, ``δ_{n-1} = W_n``, ``δ_{l-1} = (δ_l ⊙ σ'(z_l)) W_l``) or from
the input side (``n_in`` columns), whichever costs fewer multiply-adds.

**Hessian.** Let ``Jz_l = ∂z_l/∂x = W_l diag(σ'(z_{l-1})) Jz_{l-1}`` (``Jz_1 = W_1``) be the
pre-activation Jacobians. Every ``z_l`` is affine in ``a_{l-1}``, so curvature enters only
through the ``σ''`` of each hidden unit:

    ∂²A_k/∂x∂xᵀ = Σ_{l=1}^{n-1} Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l.

(Differentiate ``∂A_k/∂x = Σ_j δ_{l,k,j} σ'(z_{l,j}) ∂z_{l,j}/∂x`` once more: the terms where
the derivative hits ``σ'(z_{l,j})`` give ``σ''(z_{l,j}) ∇z_{l,j} ∇z_{l,j}ᵀ`` for every layer.)

**Weight Jacobian.** With ``g_{l,k} = ∂A_k/∂z_l`` (``g_n = I``, ``g_l = δ_l ⊙ σ'(z_l)``):
``∂A_k/∂W_l = g_{l,k} a_{l-1}ᵀ`` (an outer product) and ``∂A_k/∂b_l = g_{l,k}``.

**Laplacian.** Forward propagation of (value, gradient, Laplacian):
``∇z = W ∇a``, ``Δz = W Δa``; ``∇a = σ'(z) ∇z``, ``Δa = σ''(z) |∇z|² + σ'(z) Δz``.

The ``*_rows`` functions are plain (un-jitted) and take a batch ``x: (B, n_in)``; the ``mlp_*``
functions are jit-compiled once per (activation, options, shapes) and take ``(n_in,)`` or
``(B, n_in)``. Both return the layouts of the autodiff helpers, the batch axis first when
present. These are whole-batch XLA programs written for reading; the batched helpers of
:mod:`jaxjac.routes` run the same formulas tuned for the CPU (:mod:`jaxjac._mlp_cpu`) there.
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac._mlp import adjoints, forward, mm, promoted
from jaxjac.activations import Activation, get_activation
from jaxjac.nets import MLPParams, check_mlp_input

__all__ = [
    "hessian_rows",
    "input_side",
    "jacobian_cost",
    "jacobian_rows",
    "jacobian_side",
    "laplacian_rows",
    "mlp_hessian",
    "mlp_jacobian",
    "mlp_laplacian",
    "mlp_weight_jacobian",
    "weight_jacobian_rows",
]


def jacobian_cost(sizes: list[int]) -> dict[str, int]:
    """Multiply-adds per example of the two accumulation orders of the MLP Jacobian.

    Args:
        sizes: ``[n_in, h_1, …, n_out]``.

    Returns:
        ``{"fwd": …, "rev": …}``: from the input side ``n_in Σ_{l≥2} h_l h_{l-1}``, from the
        output side ``n_out Σ_{l<n} h_l h_{l-1}``.
    """
    pairs = [a * b for a, b in itertools.pairwise(sizes)]
    return {"fwd": sizes[0] * sum(pairs[1:]), "rev": sizes[-1] * sum(pairs[:-1])}


def jacobian_side(params: MLPParams, mode: str) -> str:
    """``"fwd"`` (input side) or ``"rev"`` (output side); ``"auto"``: fewer multiply-adds."""
    if mode == "auto":
        sizes = [params[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in params]
        cost = jacobian_cost(sizes)
        return "fwd" if cost["fwd"] < cost["rev"] else "rev"
    if mode not in ("fwd", "rev"):
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    return mode


def input_side(params: MLPParams, d1: list[jax.Array]) -> list[jax.Array]:
    """Transposed pre-activation Jacobians ``Jz_lᵀ`` of every hidden layer.

    Layout ``(B, n_in, h_l)``: the ``n_in`` input directions are rows, so each layer is one tall
    GEMM ``(B·n_in, h_{l-1}) @ W_lᵀ``. ``Jz_1ᵀ = W_1ᵀ`` is the same for every example and is
    returned unbatched, ``(n_in, h_1)``.
    """
    jts = [params[0]["W"].T]
    for layer, s in zip(params[1:-1], d1[:-1], strict=True):
        jts.append(mm(jts[-1] * s[:, None, :], layer["W"].T))
    return jts


def jacobian_rows(params: MLPParams, x: jax.Array, act: Activation, mode: str = "auto"):
    """The layer-by-layer Jacobian of ``x: (B, n_in)``: ``(B, n_out, n_in)``."""
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)
    mode = jacobian_side(params, mode)
    batch = x.shape[0]
    if len(params) == 1:
        return jnp.broadcast_to(params[0]["W"], (batch, *params[0]["W"].shape))
    fw = forward(params, x, act, second=False)
    if mode == "rev":  # ∂A/∂x = (δ_1 ⊙ σ'(z_1)) W_1
        return mm(adjoints(params, fw.d1, batch)[0] * fw.d1[0][:, None, :], params[0]["W"])
    jt = mm(input_side(params, fw.d1)[-1] * fw.d1[-1][:, None, :], params[-1]["W"].T)
    return jnp.swapaxes(jt, 1, 2)  # Jz_nᵀ (B, n_in, n_out) -> (B, n_out, n_in)


def hessian_rows(params: MLPParams, x: jax.Array, act: Activation) -> jax.Array:
    """``Σ_l Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l`` of ``x: (B, n_in)``: ``(B, n_out, n_in, n_in)``.

    The plain sum over layers, one einsum each (the CPU path blocks and fuses it).
    """
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)
    batch, n_in = x.shape
    n_out = params[-1]["W"].shape[0]
    hess = jnp.zeros((batch, n_out, n_in, n_in), x.dtype)
    if len(params) == 1:  # affine: no curvature
        return hess
    fw = forward(params, x, act, second=True)
    deltas = adjoints(params, fw.d1, batch)
    for jt, delta, s2 in zip(input_side(params, fw.d1), deltas, fw.d2, strict=True):
        jt = jnp.broadcast_to(jt, (batch, *jt.shape[-2:]))  # Jz_1ᵀ = W_1ᵀ is shared
        hess = hess + jnp.einsum("bih,bkh,bjh->bkij", jt, delta * s2[:, None, :], jt)
    return hess


def weight_jacobian_rows(params: MLPParams, x: jax.Array, act: Activation) -> MLPParams:
    """``∂A/∂W_l = g_l a_{l-1}ᵀ``, ``∂A/∂b_l = g_l`` of ``x: (B, n_in)``, like ``params``.

    Leaves ``"W": (B, n_out, out_l, in_l)`` and ``"b": (B, n_out, out_l)``.
    """
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)
    batch, n_out = x.shape[0], params[-1]["W"].shape[0]
    fw = forward(params, x, act, second=False)
    gs = [d * s[:, None, :] for d, s in zip(adjoints(params, fw.d1, batch), fw.d1, strict=True)]
    gs.append(jnp.broadcast_to(jnp.eye(n_out, dtype=x.dtype), (batch, n_out, n_out)))
    return [
        {"W": jnp.einsum("bko,bi->bkoi", g, a), "b": g} for g, a in zip(gs, fw.acts, strict=True)
    ]


def laplacian_rows(params: MLPParams, x: jax.Array, act: Activation) -> jax.Array:
    """``Σ_i ∂²A_k/∂x_i²`` of ``x: (B, n_in)`` by a forward (value, gradient, Laplacian) pass.

    Returns ``(B, n_out)``. Gradients are carried transposed, ``(B, n_in, h)``: a tall GEMM each.
    """
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)
    batch = x.shape[0]
    gz = params[0]["W"].T  # ∂z_1/∂x ᵀ, shared: (n_in, h_1)
    lz = jnp.zeros((batch, params[0]["W"].shape[0]), x.dtype)  # Δz_1 = 0: z_1 is affine in x
    z = x @ params[0]["W"].T + params[0]["b"]
    for layer in params[1:]:
        s1, s2 = act.df(z), act.d2f(z)
        lap = s2 * jnp.sum(gz * gz, axis=-2) + s1 * lz  # Δa = σ''|∇z|² + σ' Δz
        z = act.f(z) @ layer["W"].T + layer["b"]
        lz = lap @ layer["W"].T
        if layer is not params[-1]:  # the output layer needs Δz only
            gz = mm(gz * s1[:, None, :], layer["W"].T)  # ∇z' = W σ'(z) ∇z
    return lz


def _batched(fn):
    """Accept ``(n_in,)`` or ``(B, n_in)``: run ``fn`` on ``(B, n_in)``, squeeze if unbatched."""

    @functools.wraps(fn)
    def wrapper(params, x, activation="tansig", **kwargs):
        _, shape = check_mlp_input(params, x)
        x = jnp.asarray(x)
        out = fn(params, jnp.atleast_2d(x), get_activation(activation), **kwargs)
        if len(shape) == 1:
            out = jax.tree_util.tree_map(lambda leaf: leaf[0], out)
        return out

    return wrapper


@functools.partial(jax.jit, static_argnames=("activation", "mode"))
@_batched
def mlp_jacobian(
    params: MLPParams,
    x: ArrayLike,
    activation: str | Activation = "tansig",
    *,
    mode: Literal["auto", "fwd", "rev"] = "auto",
) -> jax.Array:
    """Input Jacobian of the MLP as the layer-by-layer product.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.
        mode: ``"rev"`` multiplies from the output side, ``"fwd"`` from the input side;
            ``"auto"`` picks the one with fewer multiply-adds (:func:`jacobian_cost`).

    Returns:
        ``(n_out, n_in)`` or ``(B, n_out, n_in)``.
    """
    return jacobian_rows(params, x, activation, mode)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_hessian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> jax.Array:
    """Exact input Hessian of every output, ``Σ_l Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l``.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        ``(n_out, n_in, n_in)`` or ``(B, n_out, n_in, n_in)``, symmetric in the last two axes.
    """
    return hessian_rows(params, x, activation)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_weight_jacobian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> MLPParams:
    """Jacobian of the outputs with respect to every weight and bias, in outer-product form.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        A list like ``params`` with ``"W": ([B,] n_out, out_l, in_l)`` and
        ``"b": ([B,] n_out, out_l)``, the layout of :func:`jaxjac.weight_jacobian`.
    """
    return weight_jacobian_rows(params, x, activation)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_laplacian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> jax.Array:
    """Laplacian ``Σ_i ∂²A_k/∂x_i²`` of every output by forward (value, gradient, Laplacian).

    Never forms a Hessian: the cost is that of a forward-mode Jacobian plus one row sum.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        ``(n_out,)`` or ``(B, n_out)``.
    """
    return laplacian_rows(params, x, activation)
