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
import itertools
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac import _autodiff, _mlp
from jaxjac import _curvature_ops as ops
from jaxjac._checks import check_choice, positive_int
from jaxjac._chunks import map_chunks
from jaxjac._curvature_ops import Fn, Loss, LossKind, MatVec
from jaxjac._jit import jit_entry, join_partial, split_partial
from jaxjac._trace import chunked, chunked_mean_stderr, hutchpp
from jaxjac.activations import Activation, get_activation
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


# --- supervised losses --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _SupervisedLoss:
    f: Fn
    loss_kind: str

    def __call__(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return jnp.mean(ops.example_losses(self.loss_kind, ops.outputs(self.f, params, x), y))


def _bound_supervised_loss(bound: tuple, params: Any, batch: Any, *, head, loss_kind):
    return _SupervisedLoss(join_partial(head, bound), loss_kind)(params, batch)


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
    ops.check_kind(loss_kind)
    split = split_partial(f)
    if split is not None and jax.tree_util.tree_leaves(split[1]):
        head, bound = split
        return functools.partial(_bound_supervised_loss, bound, head=head, loss_kind=loss_kind)
    return _SupervisedLoss(f, loss_kind)


def _need_key(key: jax.Array | None, method: str) -> None:
    if key is None:
        raise ValueError(f"method {method!r} is randomised and needs a PRNG key")


# --- public products ---------------------------------------------------------------------------


@jit_entry()
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
    return ops.hvp_operator(loss, params, batch)(v)


@jit_entry("loss_kind")
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
    return ops.ggn_operator(f, loss_kind, params, jnp.asarray(x), jnp.asarray(y))(v)


@jit_entry("loss_kind")
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
    return ops.fisher_operator(f, loss_kind, params, jnp.asarray(x), jnp.asarray(y))(v)


# --- diagonal and trace ------------------------------------------------------------------------


def _exact_diag(matvec: MatVec, flat: jax.Array, chunk_size: int | None) -> jax.Array:
    """``diag(H)`` ``(P,)`` by products with the basis vectors, ``chunk_size`` at a time."""

    def entry(i):
        return matvec(jnp.zeros_like(flat).at[i].set(1))[i]

    return map_chunks(jax.vmap(entry), jnp.arange(flat.size), chunk_size)


def _hutchinson(matvec, flat, key, num_samples, chunk_size, *, diag):
    """Mean and standard error of ``z ⊙ Hz`` (``diag``) or ``zᵀHz`` over Rademacher ``z``."""

    def sample(k):
        z = jax.random.rademacher(k, flat.shape, flat.dtype)
        hz = matvec(z)
        return z * hz if diag else jnp.vdot(z, hz)  # E[z ⊙ Hz] = diag(H), E[zᵀHz] = tr(H)

    return chunked_mean_stderr(sample, jax.random.split(key, num_samples), chunk_size)


@jit_entry("method", "num_samples", "chunk_size")
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
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    check_choice("method", method, ("exact", "hutchinson"))
    flat, unravel, matvec = ops.flat(ops.hvp_operator(loss, params, batch), params)
    if method == "exact":
        diag = _exact_diag(matvec, flat, chunk_size)
        return HessianDiag(unravel(diag), unravel(jnp.zeros_like(diag)))
    _need_key(key, method)
    num_samples = positive_int("num_samples", num_samples, minimum=2)
    mean, stderr = _hutchinson(matvec, flat, key, num_samples, chunk_size, diag=True)
    return HessianDiag(unravel(mean), unravel(stderr))


@jit_entry("method", "num_samples", "chunk_size")
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
            of the budget sketches the top subspace, whose trace is taken exactly; see
            :func:`jaxjac._trace.hutchpp`). Hutch++'s ``stderr`` covers only the residual
            Hutchinson term *given the sketch*: the sketch's own randomness is ignored, so it
            understates the spread of the estimate over keys, most at small ``num_samples``.
        num_samples: total Hessian-vector products for the randomised methods (Hutchinson: at
            least 2; Hutch++: at least 4, split ``k = ⌊S/3⌋`` sketch, ``k`` exact, ``S − 2k``
            Hutchinson probes).
        chunk_size: products evaluated at once; ``None``: all at once.

    Returns:
        :class:`HessianTrace` (scalars).
    """
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    check_choice("method", method, ("exact", "hutchinson", "hutch++"))
    flat, _, matvec = ops.flat(ops.hvp_operator(loss, params, batch), params)
    if method == "exact":
        est = jnp.sum(_exact_diag(matvec, flat, chunk_size))
        return HessianTrace(est, jnp.zeros_like(est))
    _need_key(key, method)
    num_samples = positive_int(
        "num_samples", num_samples, minimum=2 if method == "hutchinson" else 4
    )
    if method == "hutchinson":
        return HessianTrace(*_hutchinson(matvec, flat, key, num_samples, chunk_size, diag=False))
    matvecs = chunked(matvec, chunk_size)
    return HessianTrace(*hutchpp(matvecs, flat.size, key, num_samples, flat.dtype))


# --- eigenvalues and spectral density ----------------------------------------------------------


@jit_entry("k", "method", "num_iters")
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
    k = positive_int("k", k)
    check_choice("method", method, ("lanczos", "dense"))
    flat, unravel, matvec = ops.flat(ops.hvp_operator(loss, params, batch), params)
    if method == "lanczos":
        _need_key(key, method)
        m = ops.check_num_iters(num_iters, k, flat.size)
        theta, vecs = ops.lanczos_top(matvec, flat, key, k, m)
    else:
        ops.check_num_iters(k, k, flat.size)
        hess = jax.hessian(lambda w: loss(unravel(w), batch))(flat)
        # Symmetrise: autodiff Hessians are symmetric only to rounding.
        theta, y = jnp.linalg.eigh(0.5 * (hess + hess.T))
        theta, vecs = theta[::-1][:k], y[:, ::-1][:, :k].T
    residuals = jnp.linalg.norm(jax.vmap(matvec)(vecs) - theta[:, None] * vecs, axis=1)
    return HessianEigs(theta, jax.vmap(unravel)(vecs), residuals)


@jit_entry("num_iters")
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
    return ops.top_eigenvalue(loss, params, batch, key, num_iters)


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


@jit_entry("num_probes", "num_iters")
def _spectral_density(f, params, batch, key, grid, *, sigma, num_probes, num_iters):
    num_probes = positive_int("num_probes", num_probes)
    flat, _, matvec = ops.flat(ops.hvp_operator(f, params, batch), params)
    m = ops.check_num_iters(num_iters, 1, flat.size)

    def probe(k):
        k_start, k_run = jax.random.split(k)
        v0 = jax.random.rademacher(k_start, flat.shape, flat.dtype)
        _, alpha, beta = ops.lanczos(matvec, v0, k_run, m)
        theta, y = ops.ritz(alpha, beta)
        return theta, y[0] ** 2

    nodes, weights = jax.lax.map(probe, jax.random.split(key, num_probes))
    grid = jnp.asarray(grid)
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_probes
    return SpectralDensity(density, nodes, weights)


# --- empirical neural tangent kernel -----------------------------------------------------------


# --- empirical neural tangent kernel -----------------------------------------------------------


def _ntk_jacobian(f, params, x1, x2, chunk_size):
    """``J2`` whole, ``J1`` ``chunk_size`` rows at a time, contracted leaf by leaf.

    Contracting each parameter leaf separately and summing never concatenates the leaves into
    one ``(N, n_out, P)`` array (a copy of the whole Jacobian); forming ``x1``'s Jacobians in
    chunks, each contracted with ``J2`` as soon as it exists, bounds their memory by the chunk.
    ``x2 = None`` means ``x1``: its Jacobians are formed once and contracted with themselves.
    """
    jacobians = jax.vmap(lambda x: _autodiff.weight_jacobian(f, params, x, "rev"))
    jac2 = map_chunks(jacobians, x1 if x2 is None else x2, chunk_size)

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
    return map_chunks(lambda xs: block(jacobians(xs)), x1, chunk_size)


def _ntk_products(f, params, x1, x2):
    """``v ↦ Θ v`` for ``v`` of shape ``(N2, n_out)``: ``J1 (J2ᵀ v)``, never forming ``J``."""
    _, jvp1 = jax.linearize(lambda p: ops.outputs(f, p, x1), params)
    out2, vjp2 = jax.vjp(lambda p: ops.outputs(f, p, x2), params)
    return out2, lambda v: jvp1(vjp2(v)[0])


def _ntk_ntvp(f, params, x1, x2, chunk_size):
    out2, product = _ntk_products(f, params, x1, x2)
    n2, n_out = out2.shape

    def column(idx):  # Θ[:, b, :, j] for idx = b·n_out + j, as (N1, n_out)
        return product(jnp.zeros(n2 * n_out, out2.dtype).at[idx].set(1).reshape(n2, n_out))

    cols = map_chunks(jax.vmap(column), jnp.arange(n2 * n_out), chunk_size)  # (N2·n_out, N1, n_out)
    return cols.reshape(n2, n_out, *cols.shape[1:]).transpose(2, 0, 3, 1)


@jit_entry("method", "chunk_size")
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
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    check_choice("method", method, ("jacobian", "ntvp"))
    x1 = jnp.asarray(x1)
    if method == "jacobian":
        # The Jacobian route never looks at the outputs' shape: check it on one example.
        ops.check_vector(jax.eval_shape(f, params, x1[0]).shape)
        return _ntk_jacobian(f, params, x1, None if x2 is None else jnp.asarray(x2), chunk_size)
    return _ntk_ntvp(f, params, x1, x1 if x2 is None else jnp.asarray(x2), chunk_size)


@jit_entry()
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


def _mlp_adjoints(
    params: MLPParams, x: jax.Array, act: Activation
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per layer ``l = 1 … n``: ``G_l = ∂A/∂z_l`` ``(B, n_out, out_l)`` and inputs ``(B, in_l)``.

    ``G_n = I`` and, for the hidden layers, ``G_l = δ_l ⊙ σ'(z_l)`` with ``δ_l = ∂A/∂a_l`` from
    :func:`jaxjac._mlp.adjoints`.
    """
    fw = _mlp.forward(params, x, act, second=False)
    batch, n_out = x.shape[0], fw.out.shape[-1]
    deltas = _mlp.adjoints(params, fw.d1, batch)
    hidden = [delta * s[:, None, :] for delta, s in zip(deltas, fw.d1, strict=True)]
    top = jnp.broadcast_to(jnp.eye(n_out, dtype=fw.out.dtype), (batch, n_out, n_out))
    return [*hidden, top], fw.acts


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
