r"""Change of variables and differential operators of a plain function ``f(x)``.

Everything here takes a function of one array, ``f(x)``; for a network pass
``functools.partial(net, params)``. As in :mod:`jaxjac.derivatives`, every public function is
compiled once per ``(f, static options, shapes, dtypes)``: pass the same function object (a new
``lambda`` per call compiles anew). A ``functools.partial(net, params)`` compiles once per
``net``: the bound ``params`` are passed as traced arguments, so new parameters (each training
step) reuse the compiled program.

Layouts: ``x`` may have any shape; ``n = x.size``. The determinant and the divergence need a
square Jacobian, so ``f(x)`` must have exactly ``x.shape``, and the Jacobian is flattened to
``(n, n)`` (row-major over both). The Laplacian is taken per output: ``f_out`` is the shape of
``f(x)``, anything. Batched forms put the batch axis first: ``xs`` is ``(B,) + x.shape``.

**Determinants.** ``J = jacfwd(f)(x)`` (square, so forward and reverse both take ``n`` passes;
forward mode keeps no tape), then one LU through :func:`jax.numpy.linalg.slogdet`: ``O(n)``
forward passes plus ``n³/3`` flops. The determinant is rebuilt as ``sign · exp(log|det|)``.

**Divergence** ``tr J``, exact. ``method="vmap"`` forms ``J`` with all ``n`` JVPs at once (fast,
memory ``n²`` plus ``n`` copies of the forward's intermediates); ``"loop"`` linearizes once and
runs the ``n`` JVPs ``J e_i`` one after another keeping only entry ``i`` (memory independent of
``n``, no parallelism across directions); ``"auto"`` takes ``vmap`` up to ``n = 512``.

**Laplacian** ``Σ_i ∂²f_k/∂x_i²``, exact, never forming a Hessian: for each basis vector ``e_i``
a forward-over-forward pass gives the second directional derivative ``e_iᵀ ∇²f_k e_i`` of *every*
output ``k`` at once (second-order Taylor mode; one pass costs a small constant times a forward
pass whatever ``f_out`` is, whereas forward-over-reverse HVPs need one reverse pass per output).
Cost ``n`` such passes; ``method`` chooses vmap (all directions at once) or loop, as above.
For MLPs :func:`jaxjac.closed_form.mlp_laplacian` is faster still: it sums over directions
inside every layer instead of at the end. The batched helpers (:mod:`jaxjac.routes`, re-exported
here) take these closed forms (and the closed-form Jacobian for determinants) when ``f`` is
``functools.partial(mlp_apply, params[, activation=…])``, jaxjac's MLP as a function of ``x``.

**Stochastic traces** for large ``n``: Hutchinson's estimator and Hutch++ (see
:mod:`jaxjac._trace`, shared with the curvature module). Each probe costs one JVP (divergence)
or one forward-over-forward pass (Laplacian, all outputs at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac import _autodiff
from jaxjac._checks import check_choice, is_count
from jaxjac._jit import jit_entry
from jaxjac._trace import PROBES, hutchpp, mean_stderr, probes
from jaxjac.routes import (
    batch_divergence,
    batch_jacobian_det,
    batch_laplacian,
    batch_log_abs_det_jacobian,
    batch_slogdet_jacobian,
)

__all__ = [
    "TraceEstimate",
    "batch_divergence",
    "batch_jacobian_det",
    "batch_laplacian",
    "batch_log_abs_det_jacobian",
    "batch_slogdet_jacobian",
    "divergence",
    "hutchinson_divergence",
    "hutchinson_laplacian",
    "hutchpp_divergence",
    "hutchpp_laplacian",
    "jacobian_det",
    "laplacian",
    "log_abs_det_jacobian",
    "slogdet_jacobian",
]

Fn = Callable[[jax.Array], jax.Array]
Method = Literal["auto", "vmap", "loop"]
Probe = Literal["rademacher", "gaussian"]


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
        estimate: the estimate, shape ``()`` for a divergence, ``f_out`` for a Laplacian.
        stderr: its standard error, same shape (see each estimator for what it measures).
        num_probes: scalar int32 array, matrix-vector products used per output.
    """

    estimate: jax.Array
    stderr: jax.Array
    num_probes: jax.Array


def _check_probes(num_probes: int, minimum: int, probe: str) -> None:
    if not is_count(num_probes) or num_probes < minimum:
        raise ValueError(
            f"num_probes must be an integer >= {minimum} (a standard error needs two residual "
            f"samples), got {num_probes!r}"
        )
    check_choice("probe", probe, PROBES)


def _count(num_probes: int) -> jax.Array:
    return jnp.asarray(num_probes, jnp.int32)  # not weak-typed, same dtype with or without x64


def _hutchinson_divergence(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 2, probe)
    x = _autodiff.as_float(x)
    _autodiff.check_square(f, x, "the divergence")
    _, jvp = jax.linearize(f, x)
    vs = probes(key, (num_probes, *x.shape), x.dtype, probe)
    est, se = mean_stderr(jax.vmap(lambda v: jnp.sum(v * jvp(v)))(vs))
    return TraceEstimate(est, se, _count(num_probes))


def _hutchinson_laplacian(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 2, probe)
    x = _autodiff.as_float(x)
    _autodiff.out_struct(f, x)
    vs = probes(key, (num_probes, *x.shape), x.dtype, probe)
    est, se = mean_stderr(jax.vmap(lambda v: _autodiff.second_directional(f, x, v))(vs))
    return TraceEstimate(est, se, _count(num_probes))


def _hutchpp_divergence(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 4, probe)
    x = _autodiff.as_float(x)
    _autodiff.check_square(f, x, "the divergence")
    _, jvp = jax.linearize(f, x)
    matvecs = jax.vmap(lambda v: jvp(v.reshape(x.shape)).reshape(-1))
    est, se = hutchpp(matvecs, x.size, key, num_probes, x.dtype, probe)
    return TraceEstimate(est, se, _count(num_probes))


def _hutchpp_laplacian(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 4, probe)
    x = _autodiff.as_float(x)
    out = _autodiff.out_struct(f, x)

    def one_output(k):
        # Hessian-vector products of output k: forward over reverse, one reverse pass each.
        grad_k = jax.grad(lambda y: f(y).reshape(-1)[k])
        matvecs = jax.vmap(lambda v: jax.jvp(grad_k, (x,), (v.reshape(x.shape),))[1].reshape(-1))
        return hutchpp(matvecs, x.size, key, num_probes, x.dtype, probe)

    est, se = jax.vmap(one_output)(jnp.arange(math.prod(out.shape)))
    return TraceEstimate(est.reshape(out.shape), se.reshape(out.shape), _count(num_probes))


# --- public, jit-compiled entry points --------------------------------------------------------


@jit_entry()
def slogdet_jacobian(f: Fn, x: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Sign and log absolute value of the Jacobian determinant of ``f`` at ``x``.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` (``R^n -> R^n``); hashable, the same object on every
            call.
        x: input of any floating shape; the Jacobian is flattened to ``(x.size, x.size)``.

    Returns:
        ``(sign, logabsdet)``, both ``()``: ``det J = sign · exp(logabsdet)``. At a singular
        point ``sign = 0`` and ``logabsdet = -inf`` (never NaN).

    Raises:
        ValueError: if ``f(x)`` does not have ``x``'s shape (naming both shapes).
    """
    return _autodiff.slogdet(_autodiff.square_jacobian(f, x))


@jit_entry()
def jacobian_det(f: Fn, x: ArrayLike) -> jax.Array:
    """Jacobian determinant of ``f: R^n -> R^n`` at ``x``: the local volume scaling factor.

    Args:
        f: ``f(x) -> array`` of ``x.shape``.
        x: input of any floating shape.

    Returns:
        ``()``, computed as ``sign · exp(log|det|)`` from :func:`slogdet_jacobian`: 0 at a
        singular point, ±inf only if the determinant overflows the dtype. Its derivative
        (``jax.grad``) is the adjugate form of ``jnp.linalg.det``, finite at singular points
        too.

    Raises:
        ValueError: if ``f(x)`` does not have ``x``'s shape.
    """
    return _autodiff.det(_autodiff.square_jacobian(f, x))


@jit_entry()
def log_abs_det_jacobian(f: Fn, x: ArrayLike) -> jax.Array:
    """``log |det J_f(x)|``, the term a normalizing flow subtracts from the base log-density.

    Args:
        f: ``f(x) -> array`` of ``x.shape``.
        x: input of any floating shape.

    Returns:
        ``()``; ``-inf`` at a singular point.

    Raises:
        ValueError: if ``f(x)`` does not have ``x``'s shape.
    """
    return _autodiff.slogdet(_autodiff.square_jacobian(f, x))[1]


@jit_entry("method")
def divergence(f: Fn, x: ArrayLike, *, method: Method = "auto") -> jax.Array:
    """Exact divergence ``Σ_i ∂f_i/∂x_i``, the trace of the Jacobian.

    Args:
        f: ``f(x) -> array`` of ``x.shape``.
        x: input of any floating shape, ``n = x.size``.
        method: ``"vmap"`` forms the ``(n, n)`` Jacobian with ``n`` vectorised JVPs (fastest,
            memory ``O(n²)`` and ``n`` copies of f's intermediates); ``"loop"`` linearizes once
            and runs the ``n`` JVPs sequentially keeping one diagonal entry each (memory
            independent of ``n``); ``"auto"`` uses ``vmap`` for ``n <= 512``. Both exact.

    Returns:
        ``()``.

    Raises:
        ValueError: if ``f(x)`` does not have ``x``'s shape, or on an unknown method.
    """
    return _autodiff.divergence(f, x, method)


@jit_entry("method")
def laplacian(f: Fn, x: ArrayLike, *, method: Method = "auto") -> jax.Array:
    """Exact Laplacian ``Σ_i ∂²f_k/∂x_i²`` of every output, without forming a Hessian.

    Sums the second directional derivatives along the ``n`` basis vectors, each one
    forward-over-forward (second-order Taylor) pass covering all outputs at once: cost ``n``
    such passes, each a small constant times a forward pass of ``f``; memory ``O(n)`` times
    f's intermediates for ``"vmap"``, ``O(1)`` for ``"loop"``.

    Args:
        f: ``f(x) -> array`` of any shape ``f_out``.
        x: input of any floating shape, ``n = x.size``.
        method: ``"vmap"``, ``"loop"`` or ``"auto"``, as in :func:`divergence`.

    Returns:
        ``f_out``.
    """
    return _autodiff.laplacian(f, x, method)


@jit_entry("num_probes", "probe")
def hutchinson_divergence(
    f: Fn, x: ArrayLike, key: jax.Array, *, num_probes: int, probe: Probe = "rademacher"
) -> TraceEstimate:
    """Hutchinson estimate of the divergence: the mean of ``vᵀ J v`` over random probes.

    Cost: one linearization plus ``num_probes`` vectorised JVPs, whatever ``n`` is.

    Args:
        f: ``f(x) -> array`` of ``x.shape``.
        x: input of any floating shape.
        key: PRNG key; the only randomness.
        num_probes: number of probes ``m >= 2``.
        probe: ``"rademacher"`` (±1 entries, lower variance) or ``"gaussian"``.

    Returns:
        :class:`TraceEstimate` with ``estimate`` and ``stderr`` of shape ``()``; ``stderr`` is
        the sample standard deviation (ddof 1) over probes divided by ``sqrt(m)``.
    """
    return _hutchinson_divergence(f, x, key, num_probes, probe)


@jit_entry("num_probes", "probe")
def hutchinson_laplacian(
    f: Fn, x: ArrayLike, key: jax.Array, *, num_probes: int, probe: Probe = "rademacher"
) -> TraceEstimate:
    """Hutchinson estimate of the Laplacian of every output: the mean of ``vᵀ ∇²f_k v``.

    Each probe is one forward-over-forward pass giving ``vᵀ ∇²f_k v`` for all outputs; the same
    probes serve every output.

    Args:
        f: ``f(x) -> array`` of any shape ``f_out``.
        x: input of any floating shape.
        key: PRNG key.
        num_probes: number of probes ``m >= 2``.
        probe: ``"rademacher"`` or ``"gaussian"``.

    Returns:
        :class:`TraceEstimate` with ``estimate`` and ``stderr`` of shape ``f_out``; ``stderr``
        is the per-output sample standard deviation (ddof 1) divided by ``sqrt(m)``.
    """
    return _hutchinson_laplacian(f, x, key, num_probes, probe)


@jit_entry("num_probes", "probe")
def hutchpp_divergence(
    f: Fn, x: ArrayLike, key: jax.Array, *, num_probes: int, probe: Probe = "rademacher"
) -> TraceEstimate:
    """Hutch++ estimate of the divergence: exact on a sketched subspace, Hutchinson on the rest.

    Of the ``m = num_probes`` JVPs, ``k = m // 3`` sketch ``Q = qr(J S)``, ``k`` give
    ``tr(Qᵀ J Q)`` exactly and ``g = m - 2k`` estimate ``tr((I - QQᵀ) J (I - QQᵀ))``. Unbiased;
    exact (up to rounding) once ``k >= n``, i.e. ``m >= 3n``.

    Args:
        f: ``f(x) -> array`` of ``x.shape``.
        x: input of any floating shape.
        key: PRNG key.
        num_probes: total JVPs ``m >= 4`` (so at least two residual probes).
        probe: ``"rademacher"`` or ``"gaussian"``, for both the sketch and the residual.

    Returns:
        :class:`TraceEstimate` of shape ``()``. ``stderr`` is the standard error of the
        residual Hutchinson term given the sketch (its sample std, ddof 1, over ``sqrt(g)``):
        the sketched part has no variance once ``Q`` is drawn. It rests on ``g = m - 2⌊m/3⌋``
        residual samples only, so it is itself noisy below ``m ≈ 30`` (``g ≈ 10``): treat it as
        an order of magnitude there, and ignore the variance the sketch's own draw adds.
    """
    return _hutchpp_divergence(f, x, key, num_probes, probe)


@jit_entry("num_probes", "probe")
def hutchpp_laplacian(
    f: Fn, x: ArrayLike, key: jax.Array, *, num_probes: int, probe: Probe = "rademacher"
) -> TraceEstimate:
    """Hutch++ estimate of the Laplacian of every output: :func:`hutchpp_divergence` per Hessian.

    Hessian-vector products are forward-over-reverse, one reverse pass each, and every output
    needs its own sketch: cost ``f_out.size · num_probes`` HVPs. Worth it over
    :func:`hutchinson_laplacian` when each Hessian is dominated by a few directions.

    Args:
        f: ``f(x) -> array`` of any shape ``f_out``.
        x: input of any floating shape.
        key: PRNG key (the same probes serve every output).
        num_probes: HVPs per output, ``m >= 4``.
        probe: ``"rademacher"`` or ``"gaussian"``.

    Returns:
        :class:`TraceEstimate` with ``estimate`` and ``stderr`` of shape ``f_out``; ``stderr``
        as in :func:`hutchpp_divergence`, per output.
    """
    return _hutchpp_laplacian(f, x, key, num_probes, probe)
