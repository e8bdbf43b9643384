"""Jit-compiled autodiff derivatives of any ``f(params, x)`` with respect to input and weights.

These are the autodiff route for one example. :mod:`jaxjac.routes` holds the batched helpers and
the routed per-example ones (``jj.input_jacobian`` and friends, which take jaxjac's MLP to its
closed form); this module never looks at the closed form.

Every public function here is compiled once per ``(f, static options, shapes, dtypes)``: ``f``
is a static argument of :func:`jax.jit`, so calling again with the same function object and
shapes reuses the compiled program instead of re-tracing. Pass the *same* function object on
every call (a module-level ``def``); a fresh ``lambda`` per call is a new function and compiles
anew. A ``functools.partial(func, *arrays, **options)`` is recognised: it compiles once per
``(func, options)``, with the bound arrays (typically ``params``) passed as ordinary arguments,
so ``partial(net, new_params)`` on every training step reuses the program.

Layouts (``f_out`` is the shape of ``f(params, x)`` for one example):

* input Jacobian: ``f_out + x.shape``; input Hessian: ``f_out + x.shape + x.shape``;
* weight Jacobian: a pytree shaped like ``params`` whose leaves are ``f_out + leaf.shape``;
* batched forms (:mod:`jaxjac.routes`) put the batch axis first: ``(B,) + per-example shape``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any, Literal

import jax
from jax.typing import ArrayLike

from jaxjac import _autodiff
from jaxjac._jit import jit_entry

__all__ = [
    "input_hessian",
    "input_hvp",
    "input_jacobian",
    "input_jvp",
    "input_vjp",
    "resolve_input_mode",
    "weight_hessian",
    "weight_hessian_matrix",
    "weight_hvp",
    "weight_jacobian",
    "weight_jvp",
    "weight_vjp",
]

Fn = Callable[[Any, jax.Array], Any]
Mode = Literal["auto", "fwd", "rev"]
resolve_input_mode = _autodiff.cheaper_mode
_MOVED_TO_ROUTES = ("batch_input_hessian", "batch_input_jacobian", "batch_weight_jacobian")


@jit_entry("mode")
def input_jacobian(f: Fn, params: Any, x: ArrayLike, *, mode: Mode = "auto") -> jax.Array:
    """Jacobian of ``f(params, x)`` with respect to ``x``.

    Args:
        f: ``f(params, x) -> array``; hashable, ideally the same object on every call.
        params: any pytree, passed through.
        x: input of any shape.
        mode: ``"fwd"`` (one JVP per input entry), ``"rev"`` (one VJP per output entry) or
            ``"auto"``: the cheaper of the two by size (``fwd`` when ``x.size <= f_out.size``).

    Returns:
        ``f_out.shape + x.shape``.
    """
    x = _autodiff.differentiable_input(x)
    return _autodiff.input_jacobian(f, params, x, mode=mode)


@jit_entry()
def input_hessian(f: Fn, params: Any, x: ArrayLike) -> jax.Array:
    """Hessian of ``f(params, x)`` with respect to ``x``, for every output entry.

    Returns:
        ``f_out.shape + x.shape + x.shape`` (symmetric in the last two groups of axes).
    """
    x = _autodiff.differentiable_input(x)
    return _autodiff.input_hessian(f, params, x)


@jit_entry("mode")
def weight_jacobian(f: Fn, params: Any, x: ArrayLike, *, mode: Mode = "rev") -> Any:
    """Jacobian of ``f(params, x)`` with respect to the parameters.

    Args:
        f: ``f(params, x) -> array``.
        params: pytree of arrays.
        x: one input.
        mode: ``"rev"`` (default: networks have far more weights than outputs), ``"fwd"``, or
            ``"auto"`` (by total parameter count against output size).

    Returns:
        A pytree shaped like ``params`` whose leaves have shape ``f_out.shape + leaf.shape``.
    """
    return _autodiff.weight_jacobian(f, params, x, mode=mode)


@jit_entry()
def weight_hessian(f: Fn, params: Any, x: ArrayLike) -> Any:
    """Hessian of a scalar ``f(params, x)`` (a loss) with respect to the parameters.

    Returns:
        A nested pytree: ``H[i][j]`` (structure of ``params`` twice) with leaves of shape
        ``leaf_i.shape + leaf_j.shape``. Use :func:`weight_hessian_matrix` for one flat matrix.

    Raises:
        ValueError: if ``f`` does not return a scalar.
    """
    return _autodiff.weight_hessian(f, params, x)


@jit_entry()
def weight_hessian_matrix(f: Fn, params: Any, x: ArrayLike) -> jax.Array:
    """Hessian of a scalar ``f(params, x)`` over the raveled parameters.

    The ordering is that of :func:`jax.flatten_util.ravel_pytree` (leaves in tree order, each
    row-major), so ``ravel_pytree(params)[1]`` maps a row back to a pytree.

    Returns:
        ``(P, P)`` with ``P`` the total parameter count.
    """
    return _autodiff.weight_hessian_matrix(f, params, x)


@jit_entry()
def input_jvp(f: Fn, params: Any, x: ArrayLike, v: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Jacobian-vector product in input space without forming the Jacobian.

    Args:
        v: tangent, ``x.shape``.

    Returns:
        ``(f(params, x), J v)``, the second of shape ``f_out.shape``.
    """
    x = _autodiff.differentiable_input(x)
    return _autodiff.input_jvp(f, params, x, v)


@jit_entry()
def input_vjp(f: Fn, params: Any, x: ArrayLike, u: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Vector-Jacobian product in input space.

    Args:
        u: cotangent, ``f_out.shape``.

    Returns:
        ``(f(params, x), uᵀ J)``, the second of shape ``x.shape``.
    """
    x = _autodiff.differentiable_input(x)
    return _autodiff.input_vjp(f, params, x, u)


@jit_entry()
def input_hvp(f: Fn, params: Any, x: ArrayLike, v: ArrayLike) -> jax.Array:
    """Hessian-vector product in input space (forward-over-reverse), for every output entry.

    Args:
        v: direction, ``x.shape``.

    Returns:
        ``f_out.shape + x.shape``: ``Σ_j H[..., :, j] v_j``.
    """
    x = _autodiff.differentiable_input(x)
    return _autodiff.input_hvp(f, params, x, v)


@jit_entry()
def weight_jvp(f: Fn, params: Any, x: ArrayLike, tangent: Any) -> tuple[jax.Array, jax.Array]:
    """Jacobian-vector product in weight space.

    Args:
        tangent: a pytree shaped like ``params``.

    Returns:
        ``(f(params, x), J_w tangent)``, the second of shape ``f_out.shape``.
    """
    return _autodiff.weight_jvp(f, params, x, tangent)


@jit_entry()
def weight_vjp(f: Fn, params: Any, x: ArrayLike, u: ArrayLike) -> tuple[jax.Array, Any]:
    """Vector-Jacobian product in weight space.

    Args:
        u: cotangent, ``f_out.shape``.

    Returns:
        ``(f(params, x), uᵀ J_w)``, the second a pytree shaped like ``params``.
    """
    return _autodiff.weight_vjp(f, params, x, u)


@jit_entry()
def weight_hvp(f: Fn, params: Any, x: ArrayLike, v: Any) -> Any:
    """Hessian-vector product of a scalar ``f(params, x)`` in weight space.

    Args:
        v: a pytree shaped like ``params``.

    Returns:
        A pytree shaped like ``params``.
    """
    return _autodiff.weight_hvp(f, params, x, v)


def __getattr__(name: str) -> Any:
    # The batched helpers moved to jaxjac.routes, which sits above this module: the old names
    # are looked up there on first use (importing routes here would make a cycle).
    if name in _MOVED_TO_ROUTES:
        warnings.warn(
            f"jaxjac.derivatives.{name} moved to jaxjac.routes.{name} (also jaxjac.{name})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("jaxjac.routes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
