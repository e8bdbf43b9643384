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
inside every layer instead of at the end. The batched helpers take these closed forms (and the
closed-form Jacobian for determinants) when ``f`` is ``functools.partial(mlp_apply, params[,
activation=…])``, jaxjac's MLP as a function of ``x``.

**Stochastic traces** for large ``n`` (Hutchinson 1989): ``tr A = E[vᵀ A v]`` for probes with
``E[v vᵀ] = I``. Rademacher probes (default) have variance ``2 Σ_{i≠j} S_ij²`` per probe,
Gaussian ``2 ‖S‖_F²``, with ``S = (A + Aᵀ)/2``. Each probe costs one JVP (divergence) or one
forward-over-forward pass (Laplacian, all outputs at once). Hutch++ (Meyer, Musco, Musco,
Woodruff 2021) spends a third of the products on a sketch ``Q = qr(A S)``, takes
``tr(Qᵀ A Q)`` exactly and Hutchinson only on the deflated rest ``(I - QQᵀ) A (I - QQᵀ)``;
unbiased for any square ``A`` (``tr A = tr(QᵀAQ) + tr((I-QQᵀ) A (I-QQᵀ))``), exact once the
sketch spans the range of ``A``, and far more accurate when ``A`` is dominated by a few
directions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac import closed_form
from jaxjac._chunks import is_count, map_chunks
from jaxjac.activations import Activation, get_activation
from jaxjac.derivatives import _check_chunk_size, _jit_entry, _map_batch
from jaxjac.nets import check_mlp_input, mlp_apply, validate_mlp_params

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
_METHODS = ("auto", "vmap", "loop")
_PROBES = ("rademacher", "gaussian")
# Above this many directions "auto" loops: vmapping n tangents holds n copies of every
# intermediate of f, which for a network on a batch is what runs out of memory first.
_VMAP_MAX_SIZE = 512


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


# --- checks --------------------------------------------------------------------------------


def _as_float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    return x


def _out_struct(f: Fn, x: jax.Array) -> jax.ShapeDtypeStruct:
    out = jax.eval_shape(f, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"f must return a single array, got {type(out).__name__}")
    return out


def _check_square(f: Fn, x: jax.Array, what: str) -> jax.ShapeDtypeStruct:
    out = _out_struct(f, x)
    if out.shape != x.shape:
        raise ValueError(
            f"{what} needs a square Jacobian, f mapping x to an output of x's shape: x has shape "
            f"{x.shape}, f(x) has shape {out.shape} (a Jacobian of shape {out.shape + x.shape})"
        )
    return out


def _resolve_method(method: str, size: int) -> str:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "auto":
        return "vmap" if size <= _VMAP_MAX_SIZE else "loop"
    return method


def _check_probes(num_probes: int, minimum: int, probe: str) -> None:
    if not is_count(num_probes) or num_probes < minimum:
        raise ValueError(
            f"num_probes must be an integer >= {minimum} (a standard error needs two residual "
            f"samples), got {num_probes!r}"
        )
    if probe not in _PROBES:
        raise ValueError(f"probe must be one of {_PROBES}, got {probe!r}")


# --- per-example building blocks (plain: they compose under vmap, grad, shard_map) ----------


def _basis(x: jax.Array) -> jax.Array:
    """The ``n`` unit vectors in x's shape: ``(n,) + x.shape``."""
    return jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))


def _unit(x: jax.Array, i: jax.Array) -> jax.Array:
    return jnp.zeros(x.size, x.dtype).at[i].set(1).reshape(x.shape)


def _second_directional(f: Fn, x: jax.Array, v: jax.Array) -> jax.Array:
    """``vᵀ ∇²f_k(x) v`` for every output ``k`` (forward-over-forward), shape ``f_out``."""
    return jax.jvp(lambda y: jax.jvp(f, (y,), (v,))[1], (x,), (v,))[1]


def _square_jacobian(f: Fn, x: ArrayLike) -> jax.Array:
    x = _as_float(x)
    _check_square(f, x, "a Jacobian determinant")
    return jax.jacfwd(f)(x).reshape(x.size, x.size)


def _slogdet_jacobian(f: Fn, x: ArrayLike) -> tuple[jax.Array, jax.Array]:
    return _slogdet(_square_jacobian(f, x))


def _slogdet(jac: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|det|)`` of ``(..., n, n)`` matrices, ``-inf`` (never NaN) where singular."""
    # slogdet, not det: det multiplies n LU pivots and under- or overflows for moderate n (a
    # 200-dimensional flow scaling each axis by 0.02 has det 1e-340 = 0.0 in float64, so
    # log|det| = -inf), while slogdet sums their logs from the same LU and stays finite.
    sign, logabsdet = jnp.linalg.slogdet(jac)
    # An exactly singular LU already gives sign 0 and log|det| = -inf; pin the pair so no
    # backend's pivoting path can leak a NaN (from log 0 - log 0) into the sign-0 case.
    return sign, jnp.where(sign == 0, -jnp.inf, logabsdet)


@jax.custom_jvp
def _det(jac: jax.Array) -> jax.Array:
    """``det`` of ``(..., n, n)`` matrices as ``sign · exp(log|det|)``: 0 where singular."""
    sign, logabsdet = _slogdet(jac)
    return sign * jnp.exp(logabsdet)  # singular: 0 · exp(-inf) = 0 · 0 = 0, never NaN


@_det.defjvp
def _det_jvp(primals, tangents):
    # The derivative of exp(log|det|) is NaN where J is singular (log|det| = -inf), while det
    # itself is smooth there (its derivative is the adjugate): take that from jnp.linalg.det.
    (jac,), (tangent,) = primals, tangents
    return _det(jac), jax.jvp(jnp.linalg.det, (jac,), (tangent,))[1]


def _batch_slogdet(f: Fn, xs: jax.Array, chunk_size: int | None) -> tuple[jax.Array, jax.Array]:
    """``(sign, log|det|)`` per row of ``xs``; jaxjac's MLP takes its closed-form Jacobian."""
    return _batch_of_jacobians(_slogdet, f, xs, chunk_size)


def _batch_of_jacobians(reduce: Callable, f: Fn, xs: jax.Array, chunk_size: int | None) -> Any:
    """``reduce`` of every row's square Jacobian; jaxjac's MLP takes its closed-form Jacobian."""
    mlp = _mlp_of_x(f) if xs.ndim == 2 else None
    if mlp is None:
        return _map_batch(lambda x: reduce(_square_jacobian(f, x)), xs, chunk_size)
    params, act = mlp
    check_mlp_input(params, xs)
    _as_float(xs)
    _check_square(f, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype), "a Jacobian determinant")
    _check_chunk_size(chunk_size)
    # The layer product in cache-sized row steps: 1.3x faster than vmap(jacfwd) at B = 4096.
    return map_chunks(lambda rows: reduce(closed_form._jacobian(params, rows, act)), xs, chunk_size)


def _jacobian_det(f: Fn, x: ArrayLike) -> jax.Array:
    return _det(_square_jacobian(f, x))


def _log_abs_det_jacobian(f: Fn, x: ArrayLike) -> jax.Array:
    return _slogdet_jacobian(f, x)[1]


def _divergence(f: Fn, x: ArrayLike, method: str = "auto") -> jax.Array:
    x = _as_float(x)
    out = _check_square(f, x, "the divergence")
    n = x.size
    if _resolve_method(method, n) == "vmap":
        return jnp.trace(jax.jacfwd(f)(x).reshape(n, n))
    # Linearize once (one forward pass, residuals kept), then n tangent-only passes.
    _, jvp = jax.linearize(f, x)

    def body(i, acc):
        return acc + jvp(_unit(x, i)).reshape(-1)[i]

    return jax.lax.fori_loop(0, n, body, jnp.zeros((), out.dtype))


def _laplacian(f: Fn, x: ArrayLike, method: str = "auto") -> jax.Array:
    x = _as_float(x)
    out = _out_struct(f, x)
    if _resolve_method(method, x.size) == "vmap":
        return jnp.sum(jax.vmap(lambda v: _second_directional(f, x, v))(_basis(x)), axis=0)

    def body(i, acc):
        return acc + _second_directional(f, x, _unit(x, i))

    return jax.lax.fori_loop(0, x.size, body, jnp.zeros(out.shape, out.dtype))


def _probes(key: jax.Array, shape: tuple[int, ...], dtype, probe: str) -> jax.Array:
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def _mean_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample mean and ``std / sqrt(m)`` (ddof 1) over the leading axis of ``(m,) + shape``."""
    m = samples.shape[0]
    return jnp.mean(samples, axis=0), jnp.std(samples, axis=0, ddof=1) / math.sqrt(m)


def _count(num_probes: int) -> jax.Array:
    return jnp.asarray(num_probes, jnp.int32)  # not weak-typed, same dtype with or without x64


def _hutchinson_divergence(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 2, probe)
    x = _as_float(x)
    _check_square(f, x, "the divergence")
    _, jvp = jax.linearize(f, x)
    vs = _probes(key, (num_probes, *x.shape), x.dtype, probe)
    est, se = _mean_stderr(jax.vmap(lambda v: jnp.sum(v * jvp(v)))(vs))
    return TraceEstimate(est, se, _count(num_probes))


def _hutchinson_laplacian(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 2, probe)
    x = _as_float(x)
    _out_struct(f, x)
    vs = _probes(key, (num_probes, *x.shape), x.dtype, probe)
    est, se = _mean_stderr(jax.vmap(lambda v: _second_directional(f, x, v))(vs))
    return TraceEstimate(est, se, _count(num_probes))


def _hutchpp(matmat, n, key, num_probes, dtype, probe):
    """Hutch++ trace of an ``(n, n)`` operator given ``matmat: (n, k) -> (n, k)``.

    ``k = num_probes // 3`` products sketch ``Q = qr(A S)``, ``k`` more give ``tr(Qᵀ A Q)``, and
    the remaining ``g = num_probes - 2k`` run Hutchinson on ``(I - QQᵀ) A (I - QQᵀ)``.
    """
    k = num_probes // 3
    g = num_probes - 2 * k
    key_s, key_g = jax.random.split(key)
    # Householder QR: Q stays orthonormal even when A S is rank-deficient (singular A), which
    # is all the split tr A = tr(QᵀAQ) + tr((I-QQᵀ) A (I-QQᵀ)) needs. k > n gives Q of (n, n).
    q, _ = jnp.linalg.qr(matmat(_probes(key_s, (n, k), dtype, probe)))
    low_rank = jnp.trace(q.T @ matmat(q))
    gs = _probes(key_g, (n, g), dtype, probe)
    gs = gs - q @ (q.T @ gs)
    est, se = _mean_stderr(jnp.sum(gs * matmat(gs), axis=0))
    return low_rank + est, se


def _hutchpp_divergence(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 4, probe)
    x = _as_float(x)
    _check_square(f, x, "the divergence")
    _, jvp = jax.linearize(f, x)

    def matvec(v):
        return jvp(v.reshape(x.shape)).reshape(-1)

    matmat = jax.vmap(matvec, in_axes=1, out_axes=1)
    est, se = _hutchpp(matmat, x.size, key, num_probes, x.dtype, probe)
    return TraceEstimate(est, se, _count(num_probes))


def _hutchpp_laplacian(f, x, key, num_probes, probe="rademacher"):
    _check_probes(num_probes, 4, probe)
    x = _as_float(x)
    out = _out_struct(f, x)

    def one_output(k):
        # Hessian-vector products of output k: forward over reverse, one reverse pass each.
        grad_k = jax.grad(lambda y: f(y).reshape(-1)[k])

        def matvec(v):
            return jax.jvp(grad_k, (x,), (v.reshape(x.shape),))[1].reshape(-1)

        matmat = jax.vmap(matvec, in_axes=1, out_axes=1)
        return _hutchpp(matmat, x.size, key, num_probes, x.dtype, probe)

    est, se = jax.vmap(one_output)(jnp.arange(math.prod(out.shape)))
    return TraceEstimate(est.reshape(out.shape), se.reshape(out.shape), _count(num_probes))


# --- public, jit-compiled entry points --------------------------------------------------------


@_jit_entry()
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
    return _slogdet_jacobian(f, x)


@_jit_entry()
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
    return _jacobian_det(f, x)


@_jit_entry()
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
    return _log_abs_det_jacobian(f, x)


@_jit_entry("chunk_size")
def batch_slogdet_jacobian(
    f: Fn, xs: ArrayLike, *, chunk_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """:func:`slogdet_jacobian` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example. For ``functools.partial(mlp_apply,
            params[, activation=…])`` with ``xs`` of shape ``(B, n)`` the closed-form Jacobian
            (:func:`jaxjac.closed_form.mlp_jacobian`) replaces autodiff.
        xs: ``(B,) + x.shape``.
        chunk_size: examples per vectorised chunk to bound peak memory (dividing ``B`` or not);
            ``None`` vectorises the whole batch. Same results.

    Returns:
        ``(sign, logabsdet)``, each ``(B,)``.
    """
    return _batch_slogdet(f, jnp.asarray(xs), chunk_size)


@_jit_entry("chunk_size")
def batch_jacobian_det(f: Fn, xs: ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """:func:`jacobian_det` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example.
        xs: ``(B,) + x.shape``.
        chunk_size: as in :func:`batch_slogdet_jacobian`.

    Returns:
        ``(B,)``.
    """
    return _batch_of_jacobians(_det, f, jnp.asarray(xs), chunk_size)


@_jit_entry("chunk_size")
def batch_log_abs_det_jacobian(f: Fn, xs: ArrayLike, *, chunk_size: int | None = None) -> jax.Array:
    """:func:`log_abs_det_jacobian` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example.
        xs: ``(B,) + x.shape``.
        chunk_size: as in :func:`batch_slogdet_jacobian`.

    Returns:
        ``(B,)``.
    """
    return _batch_slogdet(f, jnp.asarray(xs), chunk_size)[1]


@_jit_entry("method")
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
    return _divergence(f, x, method=method)


@_jit_entry("method")
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
    return _laplacian(f, x, method=method)


@_jit_entry("method", "chunk_size")
def batch_divergence(
    f: Fn, xs: ArrayLike, *, method: Method = "auto", chunk_size: int | None = None
) -> jax.Array:
    """:func:`divergence` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example.
        xs: ``(B,) + x.shape``.
        method: as in :func:`divergence` (chosen from the per-example size).
        chunk_size: as in :func:`batch_slogdet_jacobian`.

    Returns:
        ``(B,)``.
    """
    return _map_batch(lambda x: _divergence(f, x, method), jnp.asarray(xs), chunk_size)


@_jit_entry("method", "chunk_size")
def batch_laplacian(
    f: Fn, xs: ArrayLike, *, method: Method = "auto", chunk_size: int | None = None
) -> jax.Array:
    """:func:`laplacian` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` for one example.
        xs: ``(B,) + x.shape``.
        method: as in :func:`laplacian`. With ``"auto"`` and ``f = functools.partial(mlp_apply,
            params[, activation=…])`` (jaxjac's MLP as a function of ``x``), the closed-form
            :func:`jaxjac.closed_form.mlp_laplacian` runs instead.
        chunk_size: as in :func:`batch_slogdet_jacobian`.

    Returns:
        ``(B,) + f_out``.
    """
    xs = jnp.asarray(xs)
    mlp = _mlp_of_x(f) if method == "auto" and xs.ndim == 2 else None
    if mlp is not None:
        # jaxjac's MLP: the closed-form forward Laplacian sums over directions inside every
        # layer (several times faster than n second-order passes); chunks as asked.
        params, act = mlp
        check_mlp_input(params, xs)  # the width, named, before any matrix product fails on it
        _check_chunk_size(chunk_size)
        return map_chunks(lambda rows: closed_form._laplacian(params, rows, act), xs, chunk_size)
    return _map_batch(lambda x: _laplacian(f, x, method), xs, chunk_size)


def _mlp_of_x(f: Fn) -> tuple[Any, Activation] | None:
    """``(params, activation)`` when ``f(x)`` is ``partial(mlp_apply, params[, activation=…])``."""
    if not (
        isinstance(f, functools.partial)
        and f.func is mlp_apply
        and len(f.args) == 1
        and set(f.keywords) <= {"activation"}
    ):
        return None
    try:
        validate_mlp_params(f.args[0])
    except ValueError:
        return None
    return f.args[0], get_activation(f.keywords.get("activation", "tansig"))


@_jit_entry("num_probes", "probe")
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


@_jit_entry("num_probes", "probe")
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


@_jit_entry("num_probes", "probe")
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


@_jit_entry("num_probes", "probe")
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
