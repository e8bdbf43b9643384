"""optax transformations built on weight-space curvature: Gauss-Newton steps, sharpness logging.

Both transformations need the current batch, which optax passes as an *extra argument* of
``update`` (:class:`optax.GradientTransformationExtraArgs`). Call every transformation,
chained or not, as::

    updates, state = opt.update(grads, state, params, batch=(x, y))

:func:`optax.chain` forwards ``batch=`` to the members that accept extra arguments and drops it
for the others (``optax.adam``, ``optax.clip_by_global_norm`` …), so these compose with any
optax transformation. ``params`` is required. The batch must be what the curvature needs:
``(x, y)`` with ``x`` of shape ``(B,) + x.shape`` for :func:`scale_by_gauss_newton`, and
whatever ``loss(params, batch)`` takes for :func:`track_sharpness` (the same ``(x, y)`` when
the loss is :func:`jaxjac.curvature.supervised_loss`).

Nothing here is jitted: jit the training step that calls ``update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxjac._checks import check_choice, positive_int
from jaxjac._curvature_ops import (
    Fn,
    Loss,
    LossKind,
    check_kind,
    fisher_operator,
    flat,
    ggn_operator,
    top_eigenvalue,
)

__all__ = [
    "GaussNewtonState",
    "SharpnessState",
    "gauss_newton",
    "scale_by_gauss_newton",
    "track_sharpness",
]

_CURVATURES = ("ggn", "fisher")


class GaussNewtonState(NamedTuple):
    """State of :func:`scale_by_gauss_newton`.

    Attributes:
        count: ``()`` int32, number of updates so far.
        cg_residual: ``()``, relative residual ``‖(C + λI) d − g‖ / ‖g‖`` of the last solve
            (as tracked by the CG recursion): how far the fixed number of CG iterations got.
            Its dtype is that of the raveled parameters (all leaves' promoted dtype).
    """

    count: jax.Array
    cg_residual: jax.Array


class SharpnessState(NamedTuple):
    """State of :func:`track_sharpness`.

    Attributes:
        count: ``()`` int32, number of updates so far.
        key: PRNG key for the next Lanczos start vector.
        sharpness: ``()``, the largest Hessian eigenvalue at the last evaluation (NaN before the
            first), in the dtype of the raveled parameters.
    """

    count: jax.Array
    key: jax.Array
    sharpness: jax.Array


def _conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array], b: jax.Array, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """``num_iters`` CG steps on ``A d = b`` from ``d = 0`` (``A`` SPD); returns ``(d, ‖r‖/‖b‖)``.

    The step sizes are guarded: once the residual is exactly zero (e.g. a zero gradient) the
    iteration stays put instead of dividing zero by zero.
    """

    def safe_div(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)

    def step(_, carry):
        d, r, p, rr = carry
        ap = matvec(p)
        alpha = safe_div(rr, jnp.vdot(p, ap))
        d, r = d + alpha * p, r - alpha * ap
        rr_new = jnp.vdot(r, r)
        return d, r, r + safe_div(rr_new, rr) * p, rr_new

    init = (jnp.zeros_like(b), b, b, jnp.vdot(b, b))
    d, _, _, rr = jax.lax.fori_loop(0, num_iters, step, init)
    return d, safe_div(jnp.sqrt(rr), jnp.linalg.norm(b))


def _flat_dtype(params: Any):
    """The dtype of ``ravel_pytree(params)[0]``, that of every value the updates compute.

    The curvature products, CG and Lanczos run on raveled vectors, so their scalars (the CG
    residual, the sharpness) take the raveled dtype: the promotion of all leaves' dtypes, not
    the first leaf's (float64 for mixed float32/float64 parameters). The state is created with
    it so that ``lax.cond`` branches and ``scan`` carries keep one dtype. Evaluated abstractly:
    nothing is raveled.
    """
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params must have at least one array leaf")
    return jax.eval_shape(lambda p: ravel_pytree(p)[0], params).dtype


def _require(params: Any, batch: Any, who: str) -> None:
    if params is None or batch is None:
        raise ValueError(f"{who}.update needs params and the batch: update(g, s, params, batch=…)")


def _describe(batch: Any) -> str:
    if hasattr(batch, "shape") and hasattr(batch, "dtype"):
        return f"an array of shape {tuple(batch.shape)}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of length {len(batch)}"
    return f"a {type(batch).__name__}"


def _inputs_and_targets(batch: Any, who: str) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"{who}.update needs batch=(x, y), a pair, got {_describe(batch)}")
    return batch[0], batch[1]


def scale_by_gauss_newton(
    f: Fn,
    loss_kind: LossKind,
    *,
    damping: float = 1e-3,
    cg_iters: int = 10,
    curvature: Literal["ggn", "fisher"] = "ggn",
) -> optax.GradientTransformationExtraArgs:
    """Precondition the updates by a damped Gauss-Newton solve: ``d = (C + λI)⁻¹ g``.

    ``C`` is the Gauss-Newton matrix of :func:`jaxjac.curvature.supervised_loss`
    (``curvature="ggn"``, :func:`jaxjac.curvature.ggn_vp`) or the empirical Fisher
    (``"fisher"``), applied matrix-free: one linearisation of the network per step and
    ``cg_iters`` conjugate-gradient iterations of one JVP and one transposed JVP each, starting
    from ``d = 0``. The direction is not negated: follow with
    :func:`optax.scale_by_learning_rate` (or use :func:`gauss_newton`).

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        loss_kind: ``"mse"`` or ``"cross_entropy"``, with the scaling of
            :mod:`jaxjac.curvature` (mean over the batch).
        damping: ``λ > 0``, Levenberg-Marquardt damping: large ``λ`` turns the step into
            gradient descent with step ``1/λ``; it also makes ``C + λI`` positive definite.
        cg_iters: fixed number of CG iterations (the cost per step, in curvature products).
        curvature: ``"ggn"`` or ``"fisher"``.

    Returns:
        A transformation whose ``update(updates, state, params, *, batch=(x, y))`` returns
        ``(C + λI)⁻¹ updates``, a pytree like ``params``; state :class:`GaussNewtonState`.
    """
    check_kind(loss_kind)
    check_choice("curvature", curvature, _CURVATURES)
    if not damping > 0:
        raise ValueError(f"damping must be positive, got {damping!r}")
    cg_iters = positive_int("cg_iters", cg_iters)
    make_operator = ggn_operator if curvature == "ggn" else fisher_operator

    def init_fn(params):
        return GaussNewtonState(jnp.zeros((), jnp.int32), jnp.zeros((), _flat_dtype(params)))

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        _require(params, batch, "scale_by_gauss_newton")
        x, y = _inputs_and_targets(batch, "scale_by_gauss_newton")
        operator = make_operator(f, loss_kind, params, jnp.asarray(x), jnp.asarray(y))
        _, _, matvec = flat(operator, params)
        g, unravel = ravel_pytree(updates)
        d, residual = _conjugate_gradient(lambda w: matvec(w) + damping * w, g, cg_iters)
        return unravel(d), GaussNewtonState(state.count + 1, residual)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gauss_newton(
    f: Fn,
    loss_kind: LossKind,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    damping: float = 1e-3,
    cg_iters: int = 10,
    curvature: Literal["ggn", "fisher"] = "ggn",
) -> optax.GradientTransformationExtraArgs:
    """Damped Gauss-Newton (Levenberg-Marquardt / Hessian-free) optimizer.

    ``optax.chain(scale_by_gauss_newton(...), optax.scale_by_learning_rate(learning_rate))``:
    the update is ``−η (C + λI)⁻¹ g``. ``learning_rate = 1`` is the full Gauss-Newton step.

    Args:
        f: network ``f(params, x) -> (n_out,)`` for one example.
        loss_kind: ``"mse"`` or ``"cross_entropy"``.
        learning_rate: ``η``, a float or an optax schedule.
        damping: ``λ``, as in :func:`scale_by_gauss_newton`.
        cg_iters: CG iterations per step.
        curvature: ``"ggn"`` or ``"fisher"``.

    Returns:
        A transformation; call ``update(grads, state, params, batch=(x, y))``.
    """
    return optax.chain(
        scale_by_gauss_newton(
            f, loss_kind, damping=damping, cg_iters=cg_iters, curvature=curvature
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


def track_sharpness(
    loss: Loss, key: jax.Array, *, num_iters: int = 20, every: int = 1
) -> optax.GradientTransformationExtraArgs:
    """Record the top Hessian eigenvalue (sharpness) in the optimizer state; updates unchanged.

    Every ``every``-th call to ``update`` (the first included) runs ``num_iters`` Lanczos
    iterations of Hessian-vector products of ``loss(params, batch)`` at the ``params`` passed to
    ``update`` (those *before* the update is applied). Read ``state.sharpness`` after the step;
    in a chain, it is the state of this member (e.g. ``state[-1].sharpness``).

    Args:
        loss: ``loss(params, batch) -> scalar``.
        key: PRNG key; split once per evaluation.
        num_iters: Lanczos iterations per evaluation (``min(num_iters, P)``).
        every: evaluate every ``every`` steps; other steps keep the last value.

    Returns:
        A transformation with state :class:`SharpnessState`; call
        ``update(updates, state, params, batch=batch)``.
    """
    every = positive_int("every", every)
    num_iters = positive_int("num_iters", num_iters)

    def init_fn(params):
        return SharpnessState(
            jnp.zeros((), jnp.int32), key, jnp.full((), jnp.nan, _flat_dtype(params))
        )

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        _require(params, batch, "track_sharpness")
        next_key, sub = jax.random.split(state.key)
        value = jax.lax.cond(
            state.count % every == 0,
            lambda: top_eigenvalue(loss, params, batch, sub, num_iters),
            lambda: state.sharpness,
        )
        return updates, SharpnessState(state.count + 1, next_key, value)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
