r"""Closed-form derivatives of MLPs, layer by layer: a cross-check and a fast path.

Notation, for ``A = W_n σ(W_{n-1} … σ(W_1 x + b_1) … + b_{n-1}) + b_n``::

    a_0 = x,   z_l = W_l a_{l-1} + b_l,   a_l = σ(z_l)   (l = 1 … n-1),   A = W_n a_{n-1} + b_n.

**Jacobian.** By the chain rule ``J = W_n diag(σ'(z_{n-1})) W_{n-1} … diag(σ'(z_1)) W_1``.
The product is accumulated from the output side (``n_out`` rows carried through every layer)
or from the input side (``n_in`` columns), whichever costs fewer multiply-adds.

**Hessian.** Let ``Jz_l = ∂z_l/∂x = W_l diag(σ'(z_{l-1})) Jz_{l-1}`` (``Jz_1 = W_1``) be the
pre-activation Jacobians and ``δ_{l,k} = ∂A_k/∂a_l`` the output adjoints
(``δ_{n-1,k} = W_n[k]``, ``δ_{l-1,k} = (δ_{l,k} ⊙ σ'(z_l)) W_l``). Every ``z_l`` is affine in
``a_{l-1}``, so curvature enters only through the ``σ''`` of each hidden unit:

    ∂²A_k/∂x∂xᵀ = Σ_{l=1}^{n-1} Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l.

(Differentiate ``∂A_k/∂x = Σ_j δ_{l,k,j} σ'(z_{l,j}) ∂z_{l,j}/∂x`` once more: the terms where
the derivative hits ``σ'(z_{l,j})`` give ``σ''(z_{l,j}) ∇z_{l,j} ∇z_{l,j}ᵀ`` for every layer.)

**Weight Jacobian.** With ``g_{l,k} = ∂A_k/∂z_l`` (``g_n = I``,
``g_{l,k} = (g_{l+1,k} W_{l+1}) ⊙ σ'(z_l)``): ``∂A_k/∂W_l = g_{l,k} a_{l-1}ᵀ`` (an outer
product) and ``∂A_k/∂b_l = g_{l,k}``.

**Laplacian.** Forward propagation of (value, gradient, Laplacian):
``∇z = W ∇a``, ``Δz = W Δa``; ``∇a = σ'(z) ∇z``, ``Δa = σ''(z) |∇z|² + σ'(z) Δz``.

Every function takes ``x`` of shape ``(n_in,)`` or ``(B, n_in)`` and returns the same layouts as
the autodiff helpers in :mod:`jaxjac.derivatives`, with the batch axis first when present.
Every public function is jit-compiled once per (activation, options, shapes).
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac.activations import Activation, get_activation
from jaxjac.nets import MLPParams, check_mlp_input

__all__ = [
    "jacobian_cost",
    "mlp_hessian",
    "mlp_jacobian",
    "mlp_laplacian",
    "mlp_weight_jacobian",
]


class _Forward(NamedTuple):
    """Per-layer quantities of a batched forward pass (hidden layers l = 1 … n-1)."""

    acts: list[jax.Array]  # a_0 … a_{n-1}, each (B, h_l)
    d1: list[jax.Array]  # σ'(z_l), each (B, h_l)
    d2: list[jax.Array]  # σ''(z_l), each (B, h_l)
    out: jax.Array  # (B, n_out)


def _forward(params: MLPParams, x: jax.Array, act: Activation, *, second: bool) -> _Forward:
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
    return _Forward(acts, d1, d2, out)


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


def _jacobian(params, x, act, mode="auto"):
    fw = _forward(params, x, act, second=False)
    sizes = [params[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in params]
    if mode == "auto":
        cost = jacobian_cost(sizes)
        mode = "fwd" if cost["fwd"] < cost["rev"] else "rev"
    batch = x.shape[0]
    if mode == "rev":
        # Carry the n_out rows G = ∂A/∂a_l from the output back to the input.
        g = jnp.broadcast_to(params[-1]["W"], (batch, *params[-1]["W"].shape))
        for layer, s in zip(reversed(params[:-1]), reversed(fw.d1), strict=True):
            g = jnp.einsum("boh,hi->boi", g * s[:, None, :], layer["W"])
        return g
    if mode == "fwd":
        # Carry the n_in columns J = ∂z_l/∂x from the input to the output.
        j = jnp.broadcast_to(params[0]["W"], (batch, *params[0]["W"].shape))
        for layer, s in zip(params[1:], fw.d1, strict=True):
            j = jnp.einsum("oh,bhi->boi", layer["W"], s[:, :, None] * j)
        return j
    raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")


def _output_adjoints(params, d1, batch):
    """``δ_l = ∂A/∂a_l`` for l = n-1 … 1 (returned in layer order), each ``(B, n_out, h_l)``."""
    delta = jnp.broadcast_to(params[-1]["W"], (batch, *params[-1]["W"].shape))
    deltas = [delta]
    for layer, s in zip(reversed(params[1:-1]), reversed(d1[1:]), strict=True):
        delta = jnp.einsum("boh,hi->boi", delta * s[:, None, :], layer["W"])
        deltas.append(delta)
    return deltas[::-1]


def _hessian(params, x, act):
    fw = _forward(params, x, act, second=True)
    batch = x.shape[0]
    deltas = _output_adjoints(params, fw.d1, batch) if len(params) > 1 else []
    n_in = x.shape[1]
    hess = jnp.zeros((batch, params[-1]["W"].shape[0], n_in, n_in), x.dtype)
    jz = jnp.broadcast_to(params[0]["W"], (batch, *params[0]["W"].shape))  # ∂z_1/∂x
    for i, (s2, delta) in enumerate(zip(fw.d2, deltas, strict=True)):
        if i > 0:
            jz = jnp.einsum("oh,bhi->boi", params[i]["W"], fw.d1[i - 1][:, :, None] * jz)
        c = delta * s2[:, None, :]  # (B, n_out, h_l): σ''(z_l) ⊙ δ_{l,k}
        hess = hess + jnp.einsum("bhi,bkh,bhj->bkij", jz, c, jz)
    return hess


def _weight_jacobian(params, x, act):
    fw = _forward(params, x, act, second=False)
    batch, n_out = x.shape[0], params[-1]["W"].shape[0]
    g = jnp.broadcast_to(jnp.eye(n_out, dtype=x.dtype), (batch, n_out, n_out))  # ∂A/∂z_n
    grads = []
    for i in range(len(params) - 1, -1, -1):
        grads.append({"W": jnp.einsum("bko,bi->bkoi", g, fw.acts[i]), "b": g})
        if i > 0:
            g = jnp.einsum("bko,oi->bki", g, params[i]["W"]) * fw.d1[i - 1][:, None, :]
    return grads[::-1]


def _laplacian(params, x, act):
    batch, n_in = x.shape
    grad = jnp.broadcast_to(jnp.eye(n_in, dtype=x.dtype), (batch, n_in, n_in))  # ∂a_0/∂x
    lap = jnp.zeros((batch, n_in), x.dtype)
    a = x
    for layer in params[:-1]:
        z = a @ layer["W"].T + layer["b"]
        gz = jnp.einsum("oh,bhi->boi", layer["W"], grad)
        lz = lap @ layer["W"].T
        s1, s2 = act.df(z), act.d2f(z)
        a = act.f(z)
        grad = s1[:, :, None] * gz
        lap = s2 * jnp.sum(gz * gz, axis=-1) + s1 * lz
    return lap @ params[-1]["W"].T


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
    return _jacobian(params, x, activation, mode)


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
    return _hessian(params, x, activation)


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
    return _weight_jacobian(params, x, activation)


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
    return _laplacian(params, x, activation)
