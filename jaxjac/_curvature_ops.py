r"""Matrix-free curvature operators shared by :mod:`jaxjac.curvature` and :mod:`jaxjac.optimizers`.

Plain functions (no jit), composing under ``vmap``/``grad``/``lax.cond``: the supervised losses
and their output-space Hessians, the Hessian, Gauss-Newton and empirical-Fisher products of
the module conventions of :mod:`jaxjac.curvature`, and Lanczos with full reorthogonalisation.
Parameter vectors are pytrees shaped like ``params``; :func:`flat` turns an operator on them
into one on raveled ``(P,)`` vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxjac._checks import check_choice, positive_int

__all__ = [
    "LOSS_KINDS",
    "Fn",
    "Loss",
    "LossKind",
    "MatVec",
    "check_kind",
    "check_num_iters",
    "check_vector",
    "example_losses",
    "fisher_operator",
    "flat",
    "ggn_operator",
    "hvp_operator",
    "lanczos",
    "lanczos_top",
    "output_hessian_vp",
    "outputs",
    "ritz",
    "targets",
    "top_eigenvalue",
]

Fn = Callable[[Any, jax.Array], jax.Array]
Loss = Callable[[Any, Any], jax.Array]
LossKind = Literal["mse", "cross_entropy"]
MatVec = Callable[[jax.Array], jax.Array]
LOSS_KINDS = ("mse", "cross_entropy")


# --- supervised losses and their output-space Hessians ----------------------------------------


def check_kind(loss_kind: str) -> None:
    """Refuse a ``loss_kind`` other than ``"mse"`` and ``"cross_entropy"``."""
    check_choice("loss_kind", loss_kind, LOSS_KINDS)


def check_vector(shape: tuple[int, ...]) -> None:
    """Refuse a per-example output shape other than ``(n_out,)``."""
    if len(shape) != 1:
        raise ValueError(
            f"f(params, x) must return a vector (n_out,) per example, got shape {shape}"
        )


def outputs(f: Fn, params: Any, x: jax.Array) -> jax.Array:
    """Network outputs over the batch ``x: (B,) + x.shape``, ``(B, n_out)``."""
    out = jax.vmap(f, in_axes=(None, 0))(params, x)
    check_vector(out.shape[1:])
    return out


def targets(loss_kind: str, y: jax.Array, out: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Targets of the outputs' shape and dtype, and for integer labels their validity ``(B,)``.

    Integer labels (cross-entropy only) must have shape ``(B,)``; a label outside
    ``[0, n_out)`` is marked invalid (its loss is made NaN, never silently zero). For ``"mse"``
    integer targets are numbers, cast to the outputs' dtype.

    Args:
        loss_kind: ``"mse"`` or ``"cross_entropy"``.
        y: ``(B, n_out)`` targets, or ``(B,)`` integer labels for cross-entropy.
        out: ``(B, n_out)`` outputs.

    Returns:
        ``(targets (B, n_out), valid (B,) or None)``.
    """
    y = jnp.asarray(y)
    if loss_kind == "cross_entropy" and jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != out.shape[:1]:
            raise ValueError(
                f"integer labels must have shape (B,) = {out.shape[:1]} for outputs of shape "
                f"{out.shape}, got {y.shape}"
            )
        n_out = out.shape[-1]
        return jax.nn.one_hot(y, n_out, dtype=out.dtype), (y >= 0) & (y < n_out)
    if y.shape != out.shape:
        raise ValueError(f"targets must have the outputs' shape {out.shape}, got {y.shape}")
    if jnp.issubdtype(y.dtype, jnp.integer) or jnp.issubdtype(y.dtype, jnp.bool_):
        y = y.astype(out.dtype)
    return y, None


def example_losses(loss_kind: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example losses ``ℓ_b`` of outputs ``(B, n_out)``, ``(B,)``; NaN for bad labels."""
    check_kind(loss_kind)
    t, valid = targets(loss_kind, y, out)
    if loss_kind == "mse":
        residual = out - t
        return 0.5 * jnp.sum(residual * residual, axis=-1)
    # log_softmax subtracts the max before exponentiating: no overflow for large logits.
    losses = -jnp.sum(t * jax.nn.log_softmax(out, axis=-1), axis=-1)
    if valid is not None:
        losses = jnp.where(valid, losses, jnp.nan)
    return losses


def output_hessian_vp(loss_kind: str, out: jax.Array, u: jax.Array) -> jax.Array:
    """``(∂²ℓ_b/∂z²) u_b`` for every example, ``(B, n_out)``; independent of the targets."""
    if loss_kind == "mse":
        return u
    p = jax.nn.softmax(out, axis=-1)
    return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)  # (diag(p) − ppᵀ) u


# --- matrix-free operators on parameter pytrees ------------------------------------------------


def hvp_operator(loss: Loss, params: Any, batch: Any) -> Callable[[Any], Any]:
    """``v ↦ H v`` for the Hessian of ``loss(params, batch)``, ``v`` shaped like ``params``."""
    # Linearise the gradient once (forward-over-reverse): every product then reuses the forward
    # and backward residuals instead of re-running the network.
    _, hvp_fn = jax.linearize(jax.grad(lambda p: loss(p, batch)), params)
    return hvp_fn


def ggn_operator(
    f: Fn, loss_kind: str, params: Any, x: jax.Array, y: jax.Array
) -> Callable[[Any], Any]:
    """``v ↦ G v``, the Gauss-Newton product; ``x: (B,) + x.shape``, ``y`` shape-checked only."""
    check_kind(loss_kind)
    out, jvp_fn = jax.linearize(lambda p: outputs(f, p, x), params)
    targets(loss_kind, y, out)  # shape check only: the GGN does not depend on y
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    n = out.shape[0]
    return lambda v: vjp_fn(output_hessian_vp(loss_kind, out, jvp_fn(v)) / n)[0]


def fisher_operator(
    f: Fn, loss_kind: str, params: Any, x: jax.Array, y: jax.Array
) -> Callable[[Any], Any]:
    """``v ↦ F v``, the empirical-Fisher product; ``x: (B,) + x.shape``, ``y`` the targets."""
    # F v = (1/B) Σ_b g_b (g_b · v) = Gᵀ (G v) / B with G the (B, P) per-example gradients:
    # one JVP and one VJP of the per-example losses, never forming G.
    ells = lambda p: example_losses(loss_kind, outputs(f, p, x), y)  # noqa: E731
    losses, jvp_fn = jax.linearize(ells, params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    n = losses.shape[0]
    return lambda v: vjp_fn(jvp_fn(v) / n)[0]


def flat(operator: Callable[[Any], Any], params: Any) -> tuple[jax.Array, Callable, MatVec]:
    """The operator on raveled vectors.

    Returns:
        ``(flat_params (P,), unravel, matvec: (P,) -> (P,))``.
    """
    flat_params, unravel = ravel_pytree(params)
    return flat_params, unravel, lambda w: ravel_pytree(operator(unravel(w)))[0]


# --- Lanczos -----------------------------------------------------------------------------------


def lanczos(
    matvec: MatVec, v0: jax.Array, key: jax.Array, num_iters: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lanczos tridiagonalisation of a symmetric operator with full reorthogonalisation.

    Each new vector is orthogonalised against the whole basis twice (classical Gram-Schmidt,
    "twice is enough"), which keeps the basis orthogonal to rounding, so no ghost copies of
    converged eigenvalues appear. If the Krylov space becomes invariant (``beta`` at rounding
    level), the run continues from a random vector orthogonal to the basis with ``beta = 0``:
    ``T`` splits into blocks whose eigenvalues are all genuine, and ``num_iters = n`` recovers
    the whole spectrum. The restart vector is drawn only at a breakdown (:func:`jax.lax.cond`;
    under ``vmap`` both branches run).

    Args:
        matvec: ``(n,) -> (n,)``.
        v0: ``(n,)`` start vector (any norm).
        key: PRNG key for restart vectors.
        num_iters: ``m``, the steps.

    Returns:
        ``(basis (m, n), alpha (m,), beta (m - 1,))``: ``basis`` has orthonormal rows and
        ``T = tridiag(beta, alpha, beta) = basis H basisᵀ``.
    """
    n, m, dtype = v0.shape[0], num_iters, v0.dtype
    tol = 10 * math.sqrt(n) * jnp.finfo(dtype).eps
    basis = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    tiny = jnp.finfo(dtype).tiny

    def orthogonalise(w, basis):
        for _ in range(2):
            w = w - basis.T @ (basis @ w)  # rows not yet filled are zero
        return w

    def step(j, carry):
        basis, alpha, beta, key = carry
        v = basis[j]
        hv = matvec(v)
        w = orthogonalise(hv, basis)
        b = jnp.linalg.norm(w)
        key, sub = jax.random.split(key)
        breakdown = b <= tol * jnp.linalg.norm(hv)

        def restart():  # only at breakdown: a random direction orthogonal to the basis
            r = orthogonalise(jax.random.normal(sub, (n,), dtype), basis)
            return r / jnp.maximum(jnp.linalg.norm(r), tiny)

        nxt = jax.lax.cond(breakdown, restart, lambda: w / b)
        basis = basis.at[j + 1].set(nxt)
        alpha = alpha.at[j].set(jnp.vdot(v, hv))
        beta = beta.at[j].set(jnp.where(breakdown, 0, b))
        return basis, alpha, beta, key

    init = (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), key)
    basis, alpha, beta, _ = jax.lax.fori_loop(0, m, step, init)
    return basis[:m], alpha, beta[: m - 1]


def ritz(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues ``(m,)`` descending and eigenvectors (columns, ``(m, m)``) of the tridiagonal."""
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    theta, y = jnp.linalg.eigh(t)
    return theta[::-1], y[:, ::-1]


def lanczos_top(
    matvec: MatVec, flat_params: jax.Array, key: jax.Array, k: int, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """Top-``k`` Ritz values ``(k,)`` and vectors ``(k, P)`` from a random start."""
    k_start, k_run = jax.random.split(key)
    v0 = jax.random.normal(k_start, flat_params.shape, flat_params.dtype)
    basis, alpha, beta = lanczos(matvec, v0, k_run, num_iters)
    theta, y = ritz(alpha, beta)
    return theta[:k], y[:, :k].T @ basis


def check_num_iters(num_iters: int, k: int, size: int) -> int:
    """Lanczos steps for ``k`` eigenpairs of a ``size``-dimensional operator, checked.

    Returns:
        ``min(num_iters, size)``: the Krylov space cannot outgrow the space.
    """
    k = positive_int("k", k)
    num_iters = positive_int("num_iters", num_iters)
    if k > size:
        raise ValueError(f"k={k} exceeds the parameter count {size}")
    if num_iters < k:
        raise ValueError(f"num_iters={num_iters} must be at least k={k}")
    return min(num_iters, size)


def top_eigenvalue(
    loss: Loss, params: Any, batch: Any, key: jax.Array, num_iters: int
) -> jax.Array:
    """Largest Hessian eigenvalue of ``loss(params, batch)`` by Lanczos, a scalar."""
    flat_params, _, matvec = flat(hvp_operator(loss, params, batch), params)
    m = check_num_iters(num_iters, 1, flat_params.size)
    theta, _ = lanczos_top(matvec, flat_params, key, 1, m)
    return theta[0]
