r"""Weight-space curvature of a loss: Hessian, Gauss-Newton and Fisher products, spectrum, NTK.

Everything here is matrix-free: the ``P × P`` curvature matrices (``P`` the total parameter
count) are only ever touched through products with parameter pytrees, except in the ``"dense"``
and ``"exact"`` routes meant for small models and as cross-checks.

**Conventions.**

* A *loss* is ``loss(params, batch) -> scalar``: ``batch`` is any pytree, passed through.
* A *network* is ``f(params, x) -> (n_out,)`` for **one** example ``x``; batches ``x`` of shape
  ``(B,) + x.shape`` are mapped with :func:`jax.vmap`. (:func:`jaxjac.mlp_apply` qualifies.)
* The supervised losses (``loss_kind``) are **means over the batch** of per-example losses
  ``ℓ_b`` of the outputs ``z_b = f(params, x_b)``:

  ============== ======================================= ===================================
  ``loss_kind``  ``ℓ_b(z)``, ``y`` of shape              output-space Hessian ``∂²ℓ_b/∂z²``
  ============== ======================================= ===================================
  ``"mse"``      ``½ ‖z − y_b‖²``, ``(B, n_out)``         ``I``
                 (integer ``y`` is cast, not one-hot)
  ``"cross_      ``−Σ_k t_k log softmax(z)_k``, integer  ``diag(p) − p pᵀ``,
  entropy"``     labels ``(B,)`` or targets ``t``         ``p = softmax(z)`` (targets summing
                 ``(B, n_out)``; a label outside         to one)
                 ``[0, n_out)`` makes ``ℓ_b`` NaN
  ============== ======================================= ===================================

  so ``L = (1/B) Σ_b ℓ_b`` (:func:`supervised_loss` builds it) and, with the per-example output
  Jacobians ``J_b = ∂z_b/∂θ`` of shape ``(n_out, P)`` and gradients ``g_b = ∇_θ ℓ_b``:

  * Hessian ``H = ∇²_θ L``;
  * Gauss-Newton ``G = (1/B) Σ_b J_bᵀ (∂²ℓ_b/∂z²) J_b`` (for cross-entropy, also the Fisher of the
    model's predictive distribution);
  * empirical Fisher ``F = (1/B) Σ_b g_b g_bᵀ``.

* Parameter vectors are pytrees shaped like ``params``. Where routines work on flat vectors
  (Lanczos, Hutch++), the order is that of :func:`jax.flatten_util.ravel_pytree`; batches of
  vectors are pytrees whose leaves carry a leading axis, ``(k,) + leaf.shape``.
* Randomised routes take an explicit ``key``; results are deterministic given the key.

**Cost in products** (one product ≈ 2-4 passes of the network over the batch):

* ``hessian_diag(method="exact")``: ``P`` Hessian-vector products (in chunks of
  ``chunk_size``); ``"hutchinson"``: ``num_samples`` products, standard error ``O(1/√S)``.
* ``hessian_trace``: ``"exact"`` ``P``; ``"hutchinson"`` and ``"hutch++"`` ``num_samples``
  (Hutch++ spends a third on a sketch, a third on the sketch's trace and a third on Hutchinson
  of the deflated rest; its error falls like ``1/S`` instead of ``1/√S`` for decaying spectra).
* ``hessian_eigs(method="lanczos")``: ``num_iters + k`` products, memory ``num_iters · P``;
  ``"dense"``: ``P`` products and an ``O(P³)`` eigendecomposition, memory ``P²``.
* NTK: see :func:`ntk_memory`.

Public entry points are :func:`jax.jit`-compiled once per (function, static options, shapes):
the loss or network is a static argument, so pass the same object on every call (a module-level
``def``, or keep the object returned by :func:`supervised_loss`, which compares equal for equal
``(f, loss_kind)``). Internal helpers are plain functions and compose under ``vmap``/``grad``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from jaxjac._chunks import is_count, map_chunks
from jaxjac.activations import Activation, get_activation
from jaxjac.closed_form import _forward
from jaxjac.derivatives import _batch_weight_jacobian, _jit_entry, _split_partial
from jaxjac.nets import MLPParams, check_mlp_input

__all__ = [
    "HessianDiag",
    "HessianEigs",
    "HessianTrace",
    "SpectralDensity",
    "empirical_fisher_vp",
    "ggn_vp",
    "hessian_diag",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "mlp_ntk",
    "ntk",
    "ntk_memory",
    "ntk_vp",
    "sharpness",
    "spectral_density",
    "supervised_loss",
]

Fn = Callable[[Any, jax.Array], jax.Array]
Loss = Callable[[Any, Any], jax.Array]
LossKind = Literal["mse", "cross_entropy"]
MatVec = Callable[[jax.Array], jax.Array]
_LOSS_KINDS = ("mse", "cross_entropy")


class HessianDiag(NamedTuple):
    """Diagonal of the Hessian.

    Attributes:
        diag: pytree shaped like ``params``.
        stderr: pytree shaped like ``params``, the standard error of each entry (zeros for the
            exact route).
    """

    diag: Any
    stderr: Any


class HessianTrace(NamedTuple):
    """Trace of the Hessian.

    Attributes:
        estimate: scalar.
        stderr: scalar standard error of ``estimate`` (zero for the exact route).
    """

    estimate: jax.Array
    stderr: jax.Array


class HessianEigs(NamedTuple):
    """Largest (algebraic) eigenvalues of the Hessian, in descending order.

    Attributes:
        eigenvalues: ``(k,)``, descending.
        eigenvectors: pytree shaped like ``params`` with leaves ``(k,) + leaf.shape``, unit norm
            over the whole pytree; ``eigenvectors[i]`` belongs to ``eigenvalues[i]`` (sign is
            arbitrary).
        residuals: ``(k,)``, ``‖H u_i − λ_i u_i‖``: some true eigenvalue lies within this of
            ``λ_i`` (a converged Ritz pair has a residual near rounding).
    """

    eigenvalues: jax.Array
    eigenvectors: Any
    residuals: jax.Array


class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature estimate of the Hessian's eigenvalue density.

    Attributes:
        density: ``(G,)``, the Gaussian-smoothed density on ``grid``, integrating to one.
        nodes: ``(num_probes, num_iters)``, Ritz values of each probe's Lanczos run.
        weights: ``(num_probes, num_iters)``, their quadrature weights (each row sums to one).
    """

    density: jax.Array
    nodes: jax.Array
    weights: jax.Array


def _entry(*static: str) -> Callable[[Callable], Callable]:
    """Jit a public entry once per (callable, static options, shapes), via ``_jit_entry``.

    The first parameter (the loss or network) is static; a ``functools.partial`` binding arrays
    is compiled once per underlying function with those arrays traced (see
    :func:`jaxjac.derivatives._jit_entry`). Static options given positionally are bound to
    ``fn``'s signature and passed by keyword, so they are static wherever they stand.
    """

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = list(sig.parameters)
        first = names[0]
        # Calls that give no static option positionally skip the binding (~15 us a call).
        plain = min((i for i, name in enumerate(names) if name in static), default=len(names))

        def body(f, *args, **kwargs):
            return fn(f, *args, **kwargs)

        jitted = _jit_entry(*static)(body)

        def bind(args, kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            return arguments.pop(first), arguments

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            if args and len(args) <= plain:
                return jitted(*args, **kwargs)
            f, rest = bind(args, kwargs)
            return jitted(f, **rest)

        def lower(*args, **kwargs):  # inspect the compiled program: entry.lower(...).compile()
            f, rest = bind(args, kwargs)
            return jitted.lower(f, **rest)

        entry.lower = lower
        return entry

    return wrap


# --- supervised losses and their output-space Hessians ----------------------------------------


def _check_kind(loss_kind: str) -> None:
    if loss_kind not in _LOSS_KINDS:
        raise ValueError(f"loss_kind must be one of {_LOSS_KINDS}, got {loss_kind!r}")


def _check_vector(shape: tuple[int, ...]) -> None:
    if len(shape) != 1:
        raise ValueError(
            f"f(params, x) must return a vector (n_out,) per example, got shape {shape}"
        )


def _outputs(f: Fn, params: Any, x: jax.Array) -> jax.Array:
    """Network outputs over the batch, ``(B, n_out)``."""
    out = jax.vmap(f, in_axes=(None, 0))(params, x)
    _check_vector(out.shape[1:])
    return out


def _targets(loss_kind: str, y: jax.Array, out: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Targets of the outputs' shape and dtype, and for integer labels their validity ``(B,)``.

    Integer labels (cross-entropy only) must have shape ``(B,)``; a label outside
    ``[0, n_out)`` is marked invalid (its loss is made NaN, never silently zero). For ``"mse"``
    integer targets are numbers, cast to the outputs' dtype.
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


def _example_losses(loss_kind: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example losses ``ℓ_b``, ``(B,)``; NaN for integer labels outside ``[0, n_out)``."""
    _check_kind(loss_kind)
    targets, valid = _targets(loss_kind, y, out)
    if loss_kind == "mse":
        residual = out - targets
        return 0.5 * jnp.sum(residual * residual, axis=-1)
    # log_softmax subtracts the max before exponentiating: no overflow for large logits.
    losses = -jnp.sum(targets * jax.nn.log_softmax(out, axis=-1), axis=-1)
    if valid is not None:
        losses = jnp.where(valid, losses, jnp.nan)
    return losses


def _output_hessian_vp(loss_kind: str, out: jax.Array, u: jax.Array) -> jax.Array:
    """``(∂²ℓ_b/∂z²) u_b`` for every example, ``(B, n_out)``; independent of the targets."""
    if loss_kind == "mse":
        return u
    p = jax.nn.softmax(out, axis=-1)
    return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)  # (diag(p) − ppᵀ) u


@dataclasses.dataclass(frozen=True)
class _SupervisedLoss:
    f: Fn
    loss_kind: str

    def __call__(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return jnp.mean(_example_losses(self.loss_kind, _outputs(self.f, params, x), y))


def _bound_supervised_loss(bound: tuple, params: Any, batch: Any, *, head, loss_kind):
    f = functools.partial(head.func, *bound, **dict(head.keywords))
    return _SupervisedLoss(f, loss_kind)(params, batch)


def supervised_loss(f: Fn, loss_kind: LossKind) -> Loss:
    """The batch-mean loss ``L(params, (x, y)) = (1/B) Σ_b ℓ_b`` of the module conventions.

    Its Hessian is the one whose Gauss-Newton part :func:`ggn_vp` multiplies by. The returned
    callable is hashable and compares equal for equal ``(f, loss_kind)``, so jitted entry points
    do not recompile for a fresh but equal loss. When ``f`` is a ``functools.partial`` binding
    arrays positionally (``partial(net, w)``), the loss is itself a ``functools.partial`` with
    those arrays bound, which the entry points trace as arguments: losses of fresh partials of
    the same function and options, binding arrays of the same shapes, share one compilation.

    For ``"cross_entropy"``, an integer label outside ``[0, n_out)`` gives that example a NaN
    loss (and so a NaN mean), so a bad label is never silently dropped. For ``"mse"``, integer
    targets are numbers of shape ``(B, n_out)``, cast to the outputs' dtype (never one-hot).

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        loss_kind: ``"mse"`` or ``"cross_entropy"``.

    Returns:
        ``loss(params, (x, y)) -> scalar`` with ``x`` of shape ``(B,) + x.shape`` and ``y`` as in
        the module table.
    """
    _check_kind(loss_kind)
    split = _split_partial(f)
    if split is not None and jax.tree_util.tree_leaves(split[1]):
        head, bound = split
        return functools.partial(_bound_supervised_loss, bound, head=head, loss_kind=loss_kind)
    return _SupervisedLoss(f, loss_kind)


# --- matrix-free operators (plain functions) ---------------------------------------------------


def _hvp_operator(loss: Loss, params: Any, batch: Any) -> Callable[[Any], Any]:
    # Linearise the gradient once (forward-over-reverse): every product then reuses the forward
    # and backward residuals instead of re-running the network.
    _, hvp_fn = jax.linearize(jax.grad(lambda p: loss(p, batch)), params)
    return hvp_fn


def _ggn_operator(f: Fn, loss_kind: str, params: Any, x: jax.Array, y: jax.Array):
    _check_kind(loss_kind)
    out, jvp_fn = jax.linearize(lambda p: _outputs(f, p, x), params)
    _targets(loss_kind, y, out)  # shape check only: the GGN does not depend on y
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    n = out.shape[0]
    return lambda v: vjp_fn(_output_hessian_vp(loss_kind, out, jvp_fn(v)) / n)[0]


def _fisher_operator(f: Fn, loss_kind: str, params: Any, x: jax.Array, y: jax.Array):
    # F v = (1/B) Σ_b g_b (g_b · v) = Gᵀ (G v) / B with G the (B, P) per-example gradients:
    # one JVP and one VJP of the per-example losses, never forming G.
    ells = lambda p: _example_losses(loss_kind, _outputs(f, p, x), y)  # noqa: E731
    losses, jvp_fn = jax.linearize(ells, params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    n = losses.shape[0]
    return lambda v: vjp_fn(jvp_fn(v) / n)[0]


def _flat(operator: Callable[[Any], Any], params: Any):
    """The operator on raveled vectors: returns ``(flat_params, unravel, matvec)``."""
    flat, unravel = ravel_pytree(params)
    return flat, unravel, lambda w: ravel_pytree(operator(unravel(w)))[0]


def _map(fn: Callable, xs: jax.Array, chunk_size: int | None) -> Any:
    """``fn`` over the rows of ``xs``: one vmap, or sequential vmapped chunks to bound memory.

    Chunks go through :func:`jaxjac._chunks.map_chunks`: each is written into the output in
    place and a last partial chunk is moved back to end at the last row, so peak memory is one
    chunk of ``chunk_size`` rows (``lax.map(batch_size=)`` runs the remainder as a second
    program whose working set adds to the first's).
    """
    return map_chunks(jax.vmap(fn), xs, chunk_size)


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` as a Python int if it is a positive integer (NumPy's included, bool not)."""
    if value is None and allow_none:
        return None
    if not is_count(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _need_key(key: jax.Array | None, method: str) -> None:
    if key is None:
        raise ValueError(f"method {method!r} is randomised and needs a PRNG key")


# --- public products ---------------------------------------------------------------------------


@_entry()
def hvp(loss: Loss, params: Any, batch: Any, v: Any) -> Any:
    """Hessian-vector product ``H v`` of ``loss(params, batch)`` (forward-over-reverse).

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree.
        batch: any pytree, passed to ``loss``.
        v: pytree shaped like ``params``.

    Returns:
        Pytree shaped like ``params``.
    """
    return _hvp_operator(loss, params, batch)(v)


@_entry("loss_kind")
def ggn_vp(f: Fn, loss_kind: LossKind, params: Any, x: ArrayLike, y: ArrayLike, v: Any) -> Any:
    """Gauss-Newton-vector product ``G v = (1/B) Σ_b J_bᵀ (∂²ℓ_b/∂z²) J_b v``.

    One linearisation of the network over the batch, one JVP and one transposed JVP; the
    ``(B, n_out, P)`` Jacobian is never formed. ``G`` is positive semidefinite for both loss
    kinds and equals the Hessian of :func:`supervised_loss` when ``f`` is linear in ``params``.

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        loss_kind: ``"mse"`` (``∂²ℓ/∂z² = I``) or ``"cross_entropy"`` (``diag(p) − ppᵀ``).
        params: pytree.
        x: ``(B,) + x.shape``.
        y: ``(B, n_out)`` targets, or ``(B,)`` integer labels for cross-entropy (only shapes are
            checked: the Gauss-Newton matrix does not depend on the targets).
        v: pytree shaped like ``params``.

    Returns:
        Pytree shaped like ``params``.
    """
    return _ggn_operator(f, loss_kind, params, jnp.asarray(x), jnp.asarray(y))(v)


@_entry("loss_kind")
def empirical_fisher_vp(
    f: Fn, loss_kind: LossKind, params: Any, x: ArrayLike, y: ArrayLike, v: Any
) -> Any:
    """Empirical-Fisher-vector product ``F v = (1/B) Σ_b g_b (g_bᵀ v)``, ``g_b = ∇_θ ℓ_b``.

    Computed as ``Gᵀ (G v) / B`` with one JVP and one transposed JVP of the ``B`` per-example
    losses, without materialising the ``(B, P)`` per-example gradients ``G``.

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        loss_kind: ``"mse"`` or ``"cross_entropy"``.
        params: pytree.
        x: ``(B,) + x.shape``.
        y: ``(B, n_out)`` targets, or ``(B,)`` integer labels for cross-entropy.
        v: pytree shaped like ``params``.

    Returns:
        Pytree shaped like ``params``.
    """
    return _fisher_operator(f, loss_kind, params, jnp.asarray(x), jnp.asarray(y))(v)


# --- diagonal and trace ------------------------------------------------------------------------


def _exact_diag(matvec: MatVec, flat: jax.Array, chunk_size: int | None) -> jax.Array:
    def entry(i):
        return matvec(jnp.zeros_like(flat).at[i].set(1))[i]

    return _map(entry, jnp.arange(flat.size), chunk_size)


def _moments(sample: Callable[[jax.Array], Any], keys: jax.Array, chunk_size: int | None):
    """Mean and standard error of ``sample(key)`` over ``keys``, ``chunk_size`` at a time.

    Chunks are merged with Chan et al.'s pairwise update of (count, mean, sum of squared
    deviations): memory is one chunk of samples, and the variance never suffers the
    cancellation of ``E[s²] − E[s]²``.
    """
    n = keys.shape[0]
    c = n if chunk_size is None else min(chunk_size, n)

    def chunk(ks):
        s = jax.vmap(sample)(ks)
        mean = jnp.mean(s, axis=0)
        return jnp.asarray(ks.shape[0], s.dtype), mean, jnp.sum((s - mean) ** 2, axis=0)

    def merge(a, b):
        (na, ma, qa), (nb, mb, qb) = a, b
        total = na + nb
        d = mb - ma
        return total, ma + d * (nb / total), qa + qb + d * d * (na * nb / total)

    full = n // c
    acc = chunk(keys[:c])
    if full > 1:
        rest = keys[c : full * c].reshape(full - 1, c)
        acc = jax.lax.scan(lambda a, ks: (merge(a, chunk(ks)), None), acc, rest)[0]
    if n % c:
        acc = merge(acc, chunk(keys[full * c :]))
    _, mean, sq = acc
    return mean, jnp.sqrt(sq / ((n - 1) * n))


def _hutchinson_diag(matvec, flat, key, num_samples, chunk_size):
    def sample(k):
        z = jax.random.rademacher(k, flat.shape, flat.dtype)
        return z * matvec(z)  # E[z ⊙ Hz] = diag(H) for Rademacher z

    return _moments(sample, jax.random.split(key, num_samples), chunk_size)


@_entry("method", "num_samples", "chunk_size")
def hessian_diag(
    loss: Loss,
    params: Any,
    batch: Any,
    key: jax.Array | None = None,
    *,
    method: Literal["exact", "hutchinson"] = "exact",
    num_samples: int = 100,
    chunk_size: int | None = None,
) -> HessianDiag:
    """Diagonal of the Hessian of ``loss(params, batch)``.

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree with ``P`` entries in all.
        batch: any pytree, passed to ``loss``.
        key: PRNG key, needed by ``"hutchinson"``.
        method: ``"exact"``: ``e_iᵀ H e_i`` by ``P`` Hessian-vector products against basis
            vectors (small models). ``"hutchinson"``: the mean of ``z ⊙ Hz`` over
            ``num_samples`` Rademacher vectors ``z`` (unbiased, per-entry standard error).
        num_samples: Hutchinson samples, at least 2.
        chunk_size: products evaluated at once (vectorised); ``None``: all at once. Memory is
            ``chunk_size`` products; results do not depend on it.

    Returns:
        :class:`HessianDiag` of pytrees shaped like ``params``.
    """
    chunk_size = _positive_int("chunk_size", chunk_size, allow_none=True)
    flat, unravel, matvec = _flat(_hvp_operator(loss, params, batch), params)
    if method == "exact":
        diag = _exact_diag(matvec, flat, chunk_size)
        return HessianDiag(unravel(diag), unravel(jnp.zeros_like(diag)))
    if method == "hutchinson":
        _need_key(key, method)
        num_samples = _positive_int("num_samples", num_samples)
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2, got {num_samples}")
        mean, stderr = _hutchinson_diag(matvec, flat, key, num_samples, chunk_size)
        return HessianDiag(unravel(mean), unravel(stderr))
    raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")


def _hutchinson_trace(matvec, flat, key, num_samples, chunk_size):
    def sample(k):
        z = jax.random.rademacher(k, flat.shape, flat.dtype)
        return jnp.vdot(z, matvec(z))

    return _moments(sample, jax.random.split(key, num_samples), chunk_size)


def _hutchpp_trace(matvec, flat, key, num_matvecs, chunk_size):
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): exact trace on a sketched top subspace.

    ``tr(H) = tr(Qᵀ H Q) + tr((I − QQᵀ) H (I − QQᵀ))``: the first term exactly with ``k``
    products, the second by Hutchinson on projected probes. ``Q`` spans ``H S`` for a Rademacher
    sketch ``S``, so it captures the large eigenvalues that dominate Hutchinson's variance. The
    standard error is that of the Hutchinson part given ``Q`` (the first term has none).
    """
    k = num_matvecs // 3
    k_sketch, k_rest = jax.random.split(key)
    sketch = jax.random.rademacher(k_sketch, (k, flat.size), flat.dtype)
    q, _ = jnp.linalg.qr(_map(matvec, sketch, chunk_size).T)  # (P, k), orthonormal columns
    head = jnp.sum(q.T * _map(matvec, q.T, chunk_size))

    def sample(kk):
        z = jax.random.rademacher(kk, flat.shape, flat.dtype)
        z = z - q @ (q.T @ z)
        return jnp.vdot(z, matvec(z))

    mean, stderr = _moments(sample, jax.random.split(k_rest, num_matvecs - 2 * k), chunk_size)
    return head + mean, stderr


@_entry("method", "num_samples", "chunk_size")
def hessian_trace(
    loss: Loss,
    params: Any,
    batch: Any,
    key: jax.Array | None = None,
    *,
    method: Literal["exact", "hutchinson", "hutch++"] = "hutchinson",
    num_samples: int = 100,
    chunk_size: int | None = None,
) -> HessianTrace:
    """Trace of the Hessian of ``loss(params, batch)`` with its standard error.

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree with ``P`` entries in all.
        batch: any pytree, passed to ``loss``.
        key: PRNG key, needed by the randomised methods.
        method: ``"exact"`` (sum of the exact diagonal, ``P`` products), ``"hutchinson"``
            (mean of ``zᵀHz`` over Rademacher ``z``) or ``"hutch++"`` (variance-reduced: a third
            of the budget sketches the top subspace, whose trace is taken exactly). Hutch++'s
            ``stderr`` covers only the residual Hutchinson term *given the sketch*: the
            sketch's own randomness is ignored, so it understates the spread of the estimate
            over keys, most at small ``num_samples`` (at 12 samples, z-scores over many keys
            had a standard deviation of about 2 instead of 1).
        num_samples: total Hessian-vector products for the randomised methods (Hutchinson: at
            least 2; Hutch++: at least 4, split ``k = ⌊S/3⌋`` sketch, ``k`` exact, ``S − 2k``
            Hutchinson probes).
        chunk_size: products evaluated at once; ``None``: all at once.

    Returns:
        :class:`HessianTrace` (scalars).
    """
    chunk_size = _positive_int("chunk_size", chunk_size, allow_none=True)
    flat, _, matvec = _flat(_hvp_operator(loss, params, batch), params)
    if method == "exact":
        est = jnp.sum(_exact_diag(matvec, flat, chunk_size))
        return HessianTrace(est, jnp.zeros_like(est))
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'exact', 'hutchinson' or 'hutch++', got {method!r}")
    _need_key(key, method)
    num_samples = _positive_int("num_samples", num_samples)
    if num_samples < (2 if method == "hutchinson" else 4):
        raise ValueError(f"num_samples={num_samples} is too few for {method!r}")
    if method == "hutchinson":
        return HessianTrace(*_hutchinson_trace(matvec, flat, key, num_samples, chunk_size))
    return HessianTrace(*_hutchpp_trace(matvec, flat, key, num_samples, chunk_size))


# --- Lanczos, eigenvalues and spectral density ---------------------------------------------


def _lanczos(matvec: MatVec, v0: jax.Array, key: jax.Array, num_iters: int):
    """Lanczos tridiagonalisation with full reorthogonalisation.

    Returns ``(basis (m, n), alpha (m,), beta (m - 1,))`` with ``basis`` orthonormal rows and
    ``T = tridiag(beta, alpha, beta) = basis H basisᵀ``. Each new vector is orthogonalised
    against the whole basis twice (classical Gram-Schmidt, "twice is enough"), which keeps the
    basis orthogonal to rounding, so no ghost copies of converged eigenvalues appear. If the
    Krylov space becomes invariant (``beta`` at rounding level), the run continues from a random
    vector orthogonal to the basis with ``beta = 0``: ``T`` splits into blocks whose eigenvalues
    are all genuine, and ``num_iters = n`` recovers the whole spectrum. The restart vector is
    drawn and orthogonalised only at a breakdown (:func:`jax.lax.cond`), so an ordinary step
    costs one product and one double Gram-Schmidt pass (under ``vmap`` the cond becomes a
    select and both branches run).
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


def _ritz(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (descending) and eigenvectors (columns) of the Lanczos tridiagonal."""
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    theta, y = jnp.linalg.eigh(t)
    return theta[::-1], y[:, ::-1]


def _lanczos_top(matvec, flat, key, k, num_iters):
    """Top-``k`` Ritz values ``(k,)`` and vectors ``(k, P)`` from a random start."""
    k_start, k_run = jax.random.split(key)
    v0 = jax.random.normal(k_start, flat.shape, flat.dtype)
    basis, alpha, beta = _lanczos(matvec, v0, k_run, num_iters)
    theta, y = _ritz(alpha, beta)
    return theta[:k], y[:, :k].T @ basis


def _num_iters(num_iters: int, k: int, size: int) -> int:
    k = _positive_int("k", k)
    num_iters = _positive_int("num_iters", num_iters)
    if k > size:
        raise ValueError(f"k={k} exceeds the parameter count {size}")
    if num_iters < k:
        raise ValueError(f"num_iters={num_iters} must be at least k={k}")
    return min(num_iters, size)  # the Krylov space cannot outgrow the parameter space


def _top_eigenvalue(loss, params, batch, key, num_iters):
    """Largest Hessian eigenvalue by Lanczos (plain, for use inside jitted training steps)."""
    flat, _, matvec = _flat(_hvp_operator(loss, params, batch), params)
    theta, _ = _lanczos_top(matvec, flat, key, 1, _num_iters(num_iters, 1, flat.size))
    return theta[0]


@_entry("k", "method", "num_iters")
def hessian_eigs(
    loss: Loss,
    params: Any,
    batch: Any,
    key: jax.Array | None = None,
    *,
    k: int = 1,
    method: Literal["lanczos", "dense"] = "lanczos",
    num_iters: int = 30,
) -> HessianEigs:
    """Top-``k`` (largest algebraic) eigenpairs of the Hessian of ``loss(params, batch)``.

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree with ``P`` entries in all.
        batch: any pytree, passed to ``loss``.
        key: PRNG key for the Lanczos start vector (unused by ``"dense"``).
        k: number of eigenpairs, ``1 ≤ k ≤ P``.
        method: ``"lanczos"``: ``min(num_iters, P)`` Hessian-vector products with full
            reorthogonalisation (memory ``num_iters · P``), plus ``k`` to report residuals;
            extreme eigenvalues converge first, and ``num_iters = P`` is exact to rounding.
            ``"dense"``: :func:`jnp.linalg.eigh` of the ``P × P`` Hessian (small models; the
            cross-check).
        num_iters: Lanczos iterations, at least ``k``.

    Returns:
        :class:`HessianEigs`, eigenvalues descending.
    """
    k = _positive_int("k", k)
    flat, unravel, matvec = _flat(_hvp_operator(loss, params, batch), params)
    if method == "lanczos":
        _need_key(key, method)
        theta, vecs = _lanczos_top(matvec, flat, key, k, _num_iters(num_iters, k, flat.size))
    elif method == "dense":
        _num_iters(k, k, flat.size)
        hess = jax.hessian(lambda w: loss(unravel(w), batch))(flat)
        theta, y = _ritz_dense(hess)
        theta, vecs = theta[:k], y[:, :k].T
    else:
        raise ValueError(f"method must be 'lanczos' or 'dense', got {method!r}")
    residuals = jnp.linalg.norm(jax.vmap(matvec)(vecs) - theta[:, None] * vecs, axis=1)
    return HessianEigs(theta, jax.vmap(unravel)(vecs), residuals)


def _ritz_dense(hess: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Symmetrise: autodiff Hessians are symmetric only to rounding.
    theta, y = jnp.linalg.eigh(0.5 * (hess + hess.T))
    return theta[::-1], y[:, ::-1]


@_entry("num_iters")
def sharpness(
    loss: Loss, params: Any, batch: Any, key: jax.Array, *, num_iters: int = 20
) -> jax.Array:
    """Sharpness: the largest Hessian eigenvalue of ``loss(params, batch)``, by Lanczos.

    ``min(num_iters, P)`` Hessian-vector products. Under gradient descent with step ``η`` the
    loss can only decrease stably while the sharpness stays below ``2/η`` (the edge of
    stability).

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree.
        batch: any pytree, passed to ``loss``.
        key: PRNG key for the start vector.
        num_iters: Lanczos iterations.

    Returns:
        Scalar.
    """
    return _top_eigenvalue(loss, params, batch, key, num_iters)


def spectral_density(
    loss: Loss,
    params: Any,
    batch: Any,
    key: jax.Array,
    grid: ArrayLike,
    *,
    sigma: float,
    num_probes: int = 8,
    num_iters: int = 30,
) -> SpectralDensity:
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al.).

    For each random unit probe ``v``, Lanczos gives nodes ``θ_j`` and weights
    ``τ_j = (e_1ᵀ y_j)²`` with ``Σ_j τ_j g(θ_j) ≈ vᵀ g(H) v``; averaging over probes estimates
    ``(1/P) Σ_i δ(t − λ_i)``, here smoothed by a Gaussian of width ``sigma``.
    Cost: ``num_probes · min(num_iters, P)`` products, memory ``num_iters · P``.

    Args:
        loss: ``loss(params, batch) -> scalar``.
        params: pytree with ``P`` entries in all.
        batch: any pytree, passed to ``loss``.
        key: PRNG key for the probes.
        grid: ``(G,)`` points at which to evaluate the density.
        sigma: Gaussian smoothing width (same units as the eigenvalues), positive.
        num_probes: random probes.
        num_iters: Lanczos iterations per probe.

    Returns:
        :class:`SpectralDensity`.

    Raises:
        ValueError: if ``sigma`` is not positive (checked when it is a concrete number).
    """
    try:
        value = float(sigma)
    except (TypeError, jax.errors.ConcretizationTypeError):
        value = None  # traced, or not a scalar: left to the computation
    if value is not None and not value > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    return _spectral_density(
        loss, params, batch, key, grid, sigma=sigma, num_probes=num_probes, num_iters=num_iters
    )


@_entry("num_probes", "num_iters")
def _spectral_density(loss, params, batch, key, grid, *, sigma, num_probes, num_iters):
    num_probes = _positive_int("num_probes", num_probes)
    flat, _, matvec = _flat(_hvp_operator(loss, params, batch), params)
    m = _num_iters(num_iters, 1, flat.size)

    def probe(k):
        k_start, k_run = jax.random.split(k)
        v0 = jax.random.rademacher(k_start, flat.shape, flat.dtype)
        _, alpha, beta = _lanczos(matvec, v0, k_run, m)
        theta, y = _ritz(alpha, beta)
        return theta, y[0] ** 2

    nodes, weights = jax.lax.map(probe, jax.random.split(key, num_probes))
    grid = jnp.asarray(grid)
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_probes
    return SpectralDensity(density, nodes, weights)


# --- empirical neural tangent kernel -----------------------------------------------------------


def _ntk_jacobian(f, params, x1, x2, chunk_size):
    """``J2`` whole, ``J1`` ``chunk_size`` rows at a time, contracted leaf by leaf.

    Contracting each parameter leaf separately and summing never concatenates the leaves into
    one ``(N, n_out, P)`` array (a copy of the whole Jacobian); forming ``x1``'s Jacobians in
    chunks, each contracted with ``J2`` as soon as it exists, bounds their memory by the chunk.
    ``x2 = None`` means ``x1``: its Jacobians are formed once and contracted with themselves.
    """
    jac2 = _batch_weight_jacobian(f, params, x1 if x2 is None else x2, "rev", chunk_size)

    def block(jac1):  # leaves (c, n_out) + leaf.shape -> Θ[rows]: (c, N2, n_out, n_out)
        def contract(j1, j2):
            return jnp.einsum(
                "aip,bjp->abij", j1.reshape(*j1.shape[:2], -1), j2.reshape(*j2.shape[:2], -1)
            )

        terms = jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, jac1, jac2))
        return functools.reduce(jnp.add, terms)

    if x2 is None:
        if chunk_size is None or chunk_size >= x1.shape[0]:
            return block(jac2)

        def rows(idx):  # a chunk of x1's Jacobians, sliced from the ones already formed
            return block(jax.tree_util.tree_map(lambda j: j[idx], jac2))

        return map_chunks(rows, jnp.arange(x1.shape[0]), chunk_size)
    jacobians = functools.partial(_batch_weight_jacobian, f, params, mode="rev")
    return map_chunks(lambda xs: block(jacobians(xs)), x1, chunk_size)


def _ntk_products(f, params, x1, x2):
    """``v ↦ Θ v`` for ``v`` of shape ``(N2, n_out)``: ``J1 (J2ᵀ v)``, never forming ``J``."""
    _, jvp1 = jax.linearize(lambda p: _outputs(f, p, x1), params)
    out2, vjp2 = jax.vjp(lambda p: _outputs(f, p, x2), params)
    return out2, lambda v: jvp1(vjp2(v)[0])


def _ntk_ntvp(f, params, x1, x2, chunk_size):
    out2, product = _ntk_products(f, params, x1, x2)
    n2, n_out = out2.shape

    def column(idx):  # Θ[:, b, :, j] for idx = b·n_out + j, as (N1, n_out)
        return product(jnp.zeros(n2 * n_out, out2.dtype).at[idx].set(1).reshape(n2, n_out))

    cols = _map(column, jnp.arange(n2 * n_out), chunk_size)  # (N2·n_out, N1, n_out)
    return cols.reshape(n2, n_out, *cols.shape[1:]).transpose(2, 0, 3, 1)


@_entry("method", "chunk_size")
def ntk(
    f: Fn,
    params: Any,
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    *,
    method: Literal["jacobian", "ntvp"] = "jacobian",
    chunk_size: int | None = None,
) -> jax.Array:
    """Empirical neural tangent kernel ``Θ[a, b, i, j] = ⟨∂f_i(x1_a)/∂θ, ∂f_j(x2_b)/∂θ⟩``.

    Memory of each route: :func:`ntk_memory`.

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        params: pytree with ``P`` entries in all.
        x1: ``(N1,) + x.shape``.
        x2: ``(N2,) + x.shape``; ``None`` means ``x1``.
        method: ``"jacobian"``: per-example weight Jacobians ``(N, n_out, P)`` of both batches,
            contracted over ``P``. ``"ntvp"``: NTK-vector products ``J1 (J2ᵀ u)`` against the
            ``N2 · n_out`` unit cotangents ``u`` (one VJP and one JVP each), never forming a
            Jacobian. Both are exact.
        chunk_size: ``"jacobian"``: examples whose Jacobians are formed at once (``x2``'s are
            formed in such chunks and kept whole; ``x1``'s are contracted with them chunk by
            chunk and dropped, so memory is ``(N2 + chunk_size) n_out P``; for ``x2 = None``
            the Jacobians are formed once, ``N1 n_out`` VJPs); ``"ntvp"``: products at once.
            ``None``: all at once. Results do not depend on it.

    Returns:
        ``(N1, N2, n_out, n_out)``, the neural-tangents layout: example axes first, then the
        output index of ``x1``'s example, then that of ``x2``'s. For ``x2 = x1`` the
        ``(N1 n_out) × (N1 n_out)`` matrix ``Θ.transpose(0, 2, 1, 3)`` is symmetric PSD.
    """
    chunk_size = _positive_int("chunk_size", chunk_size, allow_none=True)
    x1 = jnp.asarray(x1)
    if method == "jacobian":
        # The Jacobian route never looks at the outputs' shape: check it on one example.
        _check_vector(jax.eval_shape(f, params, x1[0]).shape)
        return _ntk_jacobian(f, params, x1, None if x2 is None else jnp.asarray(x2), chunk_size)
    if method == "ntvp":
        return _ntk_ntvp(f, params, x1, x1 if x2 is None else jnp.asarray(x2), chunk_size)
    raise ValueError(f"method must be 'jacobian' or 'ntvp', got {method!r}")


@_entry()
def ntk_vp(f: Fn, params: Any, x1: ArrayLike, x2: ArrayLike, v: ArrayLike) -> jax.Array:
    """NTK-vector product ``Σ_{b,j} Θ[a, b, i, j] v[b, j] = J1 (J2ᵀ v)``, matrix-free.

    One VJP over ``x2`` and one JVP over ``x1``: memory ``O(P + N1 n_out)`` beyond the network's
    activations, e.g. for kernel regression by conjugate gradients without ever forming ``Θ``.

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        params: pytree.
        x1: ``(N1,) + x.shape``.
        x2: ``(N2,) + x.shape``.
        v: ``(N2, n_out)``.

    Returns:
        ``(N1, n_out)``.
    """
    _, product = _ntk_products(f, params, jnp.asarray(x1), jnp.asarray(x2))
    return product(jnp.asarray(v))


def _mlp_adjoints(params: MLPParams, x: jax.Array, act: Activation):
    """Per layer: adjoints ``G_l = ∂A/∂z_l`` ``(B, n_out, out_l)``, inputs ``(B, in_l)``."""
    fw = _forward(params, x, act, second=False)
    n_out = params[-1]["W"].shape[0]
    g = jnp.broadcast_to(jnp.eye(n_out, dtype=x.dtype), (x.shape[0], n_out, n_out))
    adjoints = [g]
    for i in range(len(params) - 1, 0, -1):
        g = jnp.einsum("bko,oi->bki", g, params[i]["W"]) * fw.d1[i - 1][:, None, :]
        adjoints.append(g)
    return adjoints[::-1], fw.acts


def _mlp_ntk(params, x1, x2, act):
    g1, a1 = _mlp_adjoints(params, x1, act)
    g2, a2 = _mlp_adjoints(params, x2, act)
    theta = 0
    for gl1, al1, gl2, al2 in zip(g1, a1, g2, a2, strict=True):
        # ∂A_i/∂W_l = g_{l,i} a_{l-1}ᵀ and ∂A_i/∂b_l = g_{l,i}, so the weight and bias parts of
        # ⟨∂A_i(x), ∂A_j(x')⟩ factor as (g_{l,i}·g'_{l,j}) (a_{l-1}·a'_{l-1} + 1).
        inputs = al1 @ al2.T + 1  # (N1, N2)
        theta = theta + jnp.einsum("aih,bjh->abij", gl1, gl2) * inputs[:, :, None, None]
    return theta


@functools.partial(jax.jit, static_argnames=("activation",))
def mlp_ntk(
    params: MLPParams,
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    activation: str | Activation = "tansig",
) -> jax.Array:
    r"""Empirical NTK of an MLP in closed form, without any per-parameter Jacobian.

    With ``G_l = ∂A/∂z_l`` the output adjoints of layer ``l``'s pre-activations
    ``(N, n_out, out_l)`` and ``a_{l-1}`` its inputs ``(N, in_l)``::

        Θ[a, b, i, j] = Σ_l (G1_l[a, i] · G2_l[b, j]) (a1_{l-1}[a] · a2_{l-1}[b] + 1).

    Memory ``O(N (n_out Σ_l out_l + Σ_l in_l) + N1 N2 n_out²)``: independent of ``P``.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x1: ``(N1, n_in)``.
        x2: ``(N2, n_in)``; ``None`` means ``x1``.
        activation: hidden-layer activation.

    Returns:
        ``(N1, N2, n_out, n_out)``, the layout of :func:`ntk`.
    """
    x2 = x1 if x2 is None else x2
    for x in (x1, x2):
        _, shape = check_mlp_input(params, x)
        if len(shape) != 2:
            raise ValueError(f"mlp_ntk needs batched inputs (N, n_in), got shape {shape}")
    return _mlp_ntk(params, jnp.asarray(x1), jnp.asarray(x2), get_activation(activation))


def ntk_memory(
    method: Literal["jacobian", "ntvp", "mlp"],
    *,
    n1: int,
    n2: int,
    n_out: int,
    n_params: int = 0,
    sizes: list[int] | None = None,
    chunk_size: int | None = None,
    itemsize: int = 8,
    n_leaves: int | None = None,
) -> int:
    r"""Bytes each NTK route holds beyond its arguments: XLA's temporaries plus the output Θ.

    An upper bound on the peak, counted from what each route may keep alive at once (as
    XLA's CPU buffer assignment lays it out); the scheduler often does better, e.g. by
    contracting one parameter leaf's Jacobian before forming the next, so the measured peak
    lies between about a third of this and this. With ``c`` the chunk (``"jacobian"``:
    examples of ``x1`` at a time, ``min(chunk_size, N1)``; ``"ntvp"``: products at once,
    ``min(chunk_size, N2 n_out)``; ``None``: all), ``P`` the parameter count, ``K = N1 N2 n_out²``
    the kernel, ``K_c = c N2 n_out²`` one chunk's block of it, ``Λ`` the number of parameter
    arrays (pytree leaves), ``L`` the number of layers and, for a network with layer sizes
    ``[n_in, h_1, …, n_out]``, ``H = Σ_l out_l`` (every layer's outputs) and ``h = Σ h_l``
    (hidden widths only):

    ==============  ====================================================================
    ``method``      elements held at the peak
    ==============  ====================================================================
    ``"jacobian"``  ``(N2 + c) n_out P``: ``x2``'s Jacobians whole and one chunk of
                    ``x1``'s, contracted leaf by leaf (never concatenated); ``+ Λ K_c``
                    (the per-leaf blocks, which XLA may hold all at once before summing)
                    ``+ 2K`` (Θ and the copy the chunk loop writes into).
                    Activations: ``(c2 + c)(n_out H + 2h)``, the ``n_out`` reverse
                    sweeps' cotangents and the stored activations and derivatives of the
                    examples being differentiated (``c2 = min(chunk_size, N2)``).
    ``"ntvp"``      ``(2c + 1) P``: the ``c`` VJPs' parameter cotangents, a second copy of
                    them in the layout the JVP's contractions read, and one transposed
                    copy of the weights; ``+ c (N1 + N2) n_out`` (unit cotangents and JVP
                    outputs) ``+ 2K`` (the products' columns and their transpose, Θ).
                    Activations: ``(N1 + N2)(c H + 2h)``, the per-product
                    tangents and cotangents and the two linearisations' residuals.
    ``"mlp"``       ``(N1 + N2)(Σ_l (2 n_out out_l + in_l) + h)``: the adjoints ``G_l``
                    and a transposed copy for the contraction, the layer inputs and the
                    activation derivatives; ``+ (2L + 1) K`` (Θ, and each layer's term
                    and its product with the inputs' Gram matrix, which XLA may hold for all
                    layers at once). No ``P``.
    ==============  ====================================================================

    The activation terms are added when ``sizes`` is given (they need the widths); without
    it the autodiff routes count only the ``P`` and kernel terms, which dominate when the layers
    are much wider than the batch (per layer ``in_l out_l`` against ``N in_l``-ish).

    Compute: ``"jacobian"`` costs ``(N1 + N2) n_out`` VJPs and an ``N1 N2 n_out² P``
    contraction; ``"ntvp"`` ``N2 n_out`` (VJP + JVP) pairs; ``"mlp"`` one forward and adjoint
    pass plus ``Σ_l N1 N2 n_out² out_l`` multiply-adds.

    Args:
        method: ``"jacobian"``, ``"ntvp"`` or ``"mlp"`` (:func:`mlp_ntk`).
        n1: examples in ``x1``.
        n2: examples in ``x2``.
        n_out: outputs per example.
        n_params: ``P``, needed by ``"jacobian"`` and ``"ntvp"``.
        sizes: MLP layer sizes ``[n_in, h_1, …, n_out]``: needed by ``"mlp"``; for the other
            routes, adds the activation terms.
        n_leaves: ``Λ``, the parameter arrays (``"jacobian"``); ``None``: two per layer
            (weights and biases) when ``sizes`` is given, else one.
        chunk_size: the ``chunk_size`` passed to :func:`ntk` (``None``: all at once).
        itemsize: bytes per element (8 for float64).

    Returns:
        Bytes, an integer.
    """
    kernel = n1 * n2 * n_out * n_out
    if method not in ("jacobian", "ntvp", "mlp"):
        raise ValueError(f"method must be 'jacobian', 'ntvp' or 'mlp', got {method!r}")
    if sizes is None and method == "mlp":
        raise ValueError("method 'mlp' needs the layer sizes")
    outs = 0 if sizes is None else sum(sizes[1:])  # H
    hidden = 0 if sizes is None else sum(sizes[1:-1])  # h

    def chunk(n: int) -> int:
        return n if chunk_size is None else min(chunk_size, n)

    if method == "jacobian":
        c1, c2 = chunk(n1), chunk(n2)
        if n_leaves is None:
            n_leaves = 1 if sizes is None else 2 * (len(sizes) - 1)
        acts = (c1 + c2) * (n_out * outs + 2 * hidden)
        blocks = n_leaves * c1 * n2 * n_out * n_out
        return itemsize * ((n2 + c1) * n_out * n_params + blocks + 2 * kernel + acts)
    if method == "ntvp":
        c = chunk(n2 * n_out)
        acts = (n1 + n2) * (c * outs + 2 * hidden)
        return itemsize * ((2 * c + 1) * n_params + c * (n1 + n2) * n_out + 2 * kernel + acts)
    layers = sum(2 * n_out * o + i for i, o in itertools.pairwise(sizes))
    n_layers = len(sizes) - 1
    return itemsize * ((n1 + n2) * (layers + hidden) + (2 * n_layers + 1) * kernel)
