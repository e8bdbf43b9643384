"""Jit-compiled autodiff derivatives of any ``f(params, x)`` with respect to input and weights.

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
* batched forms put the batch axis first: ``(B,) + per-example shape`` (leaf-wise for pytrees).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from jaxjac._chunks import is_count, map_chunks

__all__ = [
    "batch_input_hessian",
    "batch_input_jacobian",
    "batch_weight_jacobian",
    "input_hessian",
    "input_hvp",
    "input_jacobian",
    "input_jvp",
    "input_vjp",
    "weight_hessian",
    "weight_hessian_matrix",
    "weight_hvp",
    "weight_jacobian",
    "weight_jvp",
    "weight_vjp",
]

Fn = Callable[[Any, jax.Array], Any]
Mode = Literal["auto", "fwd", "rev"]
_MODES = ("auto", "fwd", "rev")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not is_count(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def _check_batched(xs: ArrayLike) -> None:
    if jnp.ndim(xs) < 1:
        raise ValueError(
            f"xs must have a leading batch axis, got a scalar of shape {jnp.shape(xs)}"
        )


def resolve_input_mode(n_in: int, n_out: int, mode: str = "auto") -> str:
    """Choose forward or reverse accumulation for an ``(n_out, n_in)`` Jacobian.

    Forward mode costs one pass per input column, reverse mode one per output row, so ``auto``
    picks ``fwd`` when ``n_in <= n_out`` and ``rev`` otherwise.
    """
    _check_mode(mode)
    if mode != "auto":
        return mode
    return "fwd" if n_in <= n_out else "rev"


def _out_size(f: Fn, params: Any, x: jax.Array) -> int:
    out = jax.eval_shape(f, params, x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(out))


def _check_differentiable(name: str, dtype: Any) -> None:
    """Refuse dtypes that cannot be differentiated (integers, booleans), naming ``name``."""
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{name} must be a floating array to differentiate with respect to it, got dtype "
            f"{dtype}; pass {name}.astype(jnp.float32) (or float64)"
        )


def _differentiable_input(x: ArrayLike) -> jax.Array:
    """``x`` as an array (a list or tuple of numbers, as a user may write it), floating."""
    x = jnp.asarray(x)
    _check_differentiable("x", x.dtype)
    return x


# --- per-example building blocks (plain functions: they compose under vmap, grad, shard_map) --


def _input_jacobian(f: Fn, params: Any, x: jax.Array, mode: str = "auto") -> Any:
    mode = resolve_input_mode(math.prod(jnp.shape(x)), _out_size(f, params, x), mode)
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    return jac(lambda x_: f(params, x_))(x)


def _input_hessian(f: Fn, params: Any, x: jax.Array) -> Any:
    # Forward-over-reverse: the cheapest generic composition (one reverse sweep per tangent).
    return jax.hessian(lambda x_: f(params, x_))(x)


def _weight_jacobian(f: Fn, params: Any, x: jax.Array, mode: str = "rev") -> Any:
    _check_mode(mode)
    n_params = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
    mode = resolve_input_mode(n_params, _out_size(f, params, x), mode)
    jac = jax.jacfwd if mode == "fwd" else jax.jacrev
    return jac(lambda p: f(p, x))(params)


def _scalar_loss(f: Fn, params: Any, x: jax.Array) -> Callable[[Any], jax.Array]:
    out = jax.eval_shape(f, params, x)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"f must return a scalar (a loss) for weight Hessians, got shape {shape}")
    return lambda p: f(p, x)


def _weight_hessian(f: Fn, params: Any, x: jax.Array) -> Any:
    return jax.hessian(_scalar_loss(f, params, x))(params)


def _weight_hessian_matrix(f: Fn, params: Any, x: jax.Array) -> jax.Array:
    loss = _scalar_loss(f, params, x)
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda v: loss(unravel(v)))(flat)


def _map_batch(fn: Callable[[jax.Array], Any], xs: jax.Array, chunk_size: int | None) -> Any:
    """Apply ``fn`` to every row of ``xs``: one vmap, or chunks of ``chunk_size`` rows.

    A sequential loop over vmapped chunks (:func:`jaxjac._chunks.map_chunks`), so peak memory
    scales with ``chunk_size`` instead of the batch while the results stay the same.
    """
    _check_batched(xs)
    _check_chunk_size(chunk_size)
    return map_chunks(jax.vmap(fn), xs, chunk_size)


def _batch_weight_jacobian(f, params, xs, mode="rev", chunk_size=None):
    return _map_batch(lambda x: _weight_jacobian(f, params, x, mode), xs, chunk_size)


def _input_jvp(f, params, x, v):
    return jax.jvp(lambda x_: f(params, x_), (x,), (v,))


def _input_vjp(f, params, x, u):
    out, pullback = jax.vjp(lambda x_: f(params, x_), x)
    return out, pullback(u)[0]


def _input_hvp(f, params, x, v):
    return jax.jvp(jax.jacrev(lambda x_: f(params, x_)), (x,), (v,))[1]


def _weight_jvp(f, params, x, tangent):
    return jax.jvp(lambda p: f(p, x), (params,), (tangent,))


def _weight_vjp(f, params, x, u):
    out, pullback = jax.vjp(lambda p: f(p, x), params)
    return out, pullback(u)[0]


def _weight_hvp(f, params, x, v):
    return jax.jvp(jax.grad(_scalar_loss(f, params, x)), (params,), (v,))[1]


# --- public, jit-compiled entry points --------------------------------------------------------


class _PartialHead(NamedTuple):
    """The static part of a ``functools.partial``: the function and its keyword arguments."""

    func: Callable
    keywords: tuple[tuple[str, Any], ...]


def _split_partial(f: Any) -> tuple[_PartialHead, tuple] | None:
    """Split ``partial(func, *arrays, **options)`` into a static head and dynamic array args.

    ``partial(net, params)`` is the idiom for turning a network into a function of ``x``, and
    ``partial(net, activation=...)`` for fixing options. Hashed as one object, every new partial
    would compile anew (and bound params would be baked into the program as constants); keyed
    on ``(func, options)`` with the arrays as arguments, one compiled program serves them all.
    """
    if not isinstance(f, functools.partial):
        return None
    leaves = jax.tree_util.tree_leaves(f.args)
    if not all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        return None
    head = _PartialHead(f.func, tuple(sorted(f.keywords.items())))
    try:
        hash(head)
    except TypeError:
        return None
    return head, f.args


def _jit_entry(*static: str, donate: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Compile a public entry once per (f, static options, shapes): f itself is static.

    A ``functools.partial`` whose positional arguments are arrays is compiled once per
    underlying function and keyword options instead, with those arrays as traced arguments.
    Arguments named in ``donate`` are donated: XLA writes the result into their buffers.
    """

    def wrap(fn: Callable) -> Callable:
        # Donated arguments are passed positionally; with_partial shifts them by one (head and
        # bound replace f). keep_unused: a donated buffer the computation never reads would
        # otherwise be pruned from the program, and nothing would be aliased.
        names = list(inspect.signature(fn).parameters)
        nums = tuple(names.index(name) for name in donate)
        compiled = jax.jit(
            fn, static_argnames=("f", *static), donate_argnums=nums, keep_unused=bool(donate)
        )

        def with_partial(head: _PartialHead, bound: tuple, *args, **kwargs):
            f = functools.partial(head.func, *bound, **dict(head.keywords))
            return fn(f, *args, **kwargs)

        compiled_partial = jax.jit(
            with_partial,
            static_argnames=("head", *static),
            donate_argnums=tuple(i + 1 for i in nums),
            keep_unused=bool(donate),
        )

        @functools.wraps(fn)
        def entry(f: Fn, *args, **kwargs):
            split = _split_partial(f)
            if split is not None:
                return compiled_partial(*split, *args, **kwargs)
            try:
                hash(f)
            except TypeError:
                raise TypeError(
                    f"f must be hashable to be compiled once and cached, got {type(f).__name__}; "
                    "wrap it in a def or functools.partial"
                ) from None
            return compiled(f, *args, **kwargs)

        entry.lower = compiled.lower  # inspect the compiled program: entry.lower(...).as_text()
        return entry

    return wrap


@_jit_entry("mode")
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
    x = _differentiable_input(x)
    return _input_jacobian(f, params, x, mode=mode)


@_jit_entry()
def input_hessian(f: Fn, params: Any, x: ArrayLike) -> jax.Array:
    """Hessian of ``f(params, x)`` with respect to ``x``, for every output entry.

    Returns:
        ``f_out.shape + x.shape + x.shape`` (symmetric in the last two groups of axes).
    """
    x = _differentiable_input(x)
    return _input_hessian(f, params, x)


@_jit_entry("mode")
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
    return _weight_jacobian(f, params, x, mode=mode)


@_jit_entry()
def weight_hessian(f: Fn, params: Any, x: ArrayLike) -> Any:
    """Hessian of a scalar ``f(params, x)`` (a loss) with respect to the parameters.

    Returns:
        A nested pytree: ``H[i][j]`` (structure of ``params`` twice) with leaves of shape
        ``leaf_i.shape + leaf_j.shape``. Use :func:`weight_hessian_matrix` for one flat matrix.

    Raises:
        ValueError: if ``f`` does not return a scalar.
    """
    return _weight_hessian(f, params, x)


@_jit_entry()
def weight_hessian_matrix(f: Fn, params: Any, x: ArrayLike) -> jax.Array:
    """Hessian of a scalar ``f(params, x)`` over the raveled parameters.

    The ordering is that of :func:`jax.flatten_util.ravel_pytree` (leaves in tree order, each
    row-major), so ``ravel_pytree(params)[1]`` maps a row back to a pytree.

    Returns:
        ``(P, P)`` with ``P`` the total parameter count.
    """
    return _weight_hessian_matrix(f, params, x)


# Result layouts for out= checks, by (function, route, shapes): see _planned.
_OUT_LAYOUTS: dict[tuple, Any] = {}


def _planned(task: str, f: Fn, params: Any, xs: ArrayLike, out: Any = None, **options) -> Any:
    if (
        out is None
        and options["chunk_size"] is None
        and options["max_memory_bytes"] is None
        and isinstance(options["mode"], str)
        and isinstance(xs, jax.Array)
    ):
        # Without a chunk size or budget the plan depends on shapes alone: it is made while
        # tracing, and a call is one compiled dispatch. Planning in Python on every call cost
        # 70-160 us on the caches a long computation had cooled, 7 % of the small net's 2.2 ms
        # batched Jacobian (chunk_size=3.0 must still be refused, which a jit cache keyed on
        # chunk_size=3 would not do: those calls take the path below).
        return _run_default_plan(f, params, xs, task=task, mode=options["mode"])
    planner = sys.modules.get("jaxjac.planner")  # the planner builds on this module: imported
    if planner is None:  # when first used, then looked up (an import statement costs more)
        from jaxjac import planner

    plan = planner.plan(task, f, params, xs, **options)
    route = planner.route_of(plan)
    if out is None:
        return _run_plan(f, params, xs, route=route)

    def layout(tree):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return treedef, [(tuple(a.shape), jnp.dtype(a.dtype).name) for a in leaves]

    # eval_shape traces the program (~3 ms): once per function, route and shapes, not per call.
    key = (planner._fn_key(f), route, planner._shapes(params), planner._shapes(xs))
    expected = _OUT_LAYOUTS.get(key)
    if expected is None:
        expected = layout(jax.eval_shape(lambda: _run_plan(f, params, xs, route=route)))
        if len(_OUT_LAYOUTS) >= 1024:
            _OUT_LAYOUTS.pop(next(iter(_OUT_LAYOUTS)))  # forget the oldest
        _OUT_LAYOUTS[key] = expected
    if layout(out) != expected:
        raise ValueError(f"out must have the result's layout {expected}, got {layout(out)}")
    return _run_plan_into(f, params, xs, out, route=route)


@_jit_entry("route")
def _run_plan(f: Fn, params: Any, xs: ArrayLike, *, route: Any) -> Any:
    from jaxjac import planner

    return planner._batched_program(f, params, jnp.asarray(xs), route)


@_jit_entry("task", "mode")
def _run_default_plan(f: Fn, params: Any, xs: jax.Array, *, task: str, mode: str) -> Any:
    from jaxjac import planner

    route = planner.route_of(planner.plan(task, f, params, xs, mode=mode))
    return planner._batched_program(f, params, xs, route)


@_jit_entry("route", donate=("out",))
def _run_plan_into(f: Fn, params: Any, xs: ArrayLike, out: Any, *, route: Any) -> Any:
    # ``out``'s values are never read: it is donated so the result is written into its
    # buffers. Fresh output memory is page-faulted in on first touch, which makes large
    # per-example Jacobians several times slower than writing into memory that is already
    # mapped. Chunks, and the closed-form Hessian's steps, are also written into ``out``
    # instead of into zeros, which XLA on the CPU would write over the whole result first (50
    # ms of 268 MB for the wide net's Hessian).
    from jaxjac import planner

    return planner._batched_program(f, params, jnp.asarray(xs), route, out=out)


def batch_input_jacobian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> jax.Array:
    """Per-example input Jacobians over a leading batch axis (no cross-batch terms).

    Args:
        f: ``f(params, x) -> array`` for one example ``x``.
        params: pytree, shared by all examples.
        xs: ``(B,) + x.shape``.
        mode: ``"auto"`` lets :mod:`jaxjac.planner` choose: the closed form when ``f`` is
            jaxjac's MLP, else the cheaper autodiff mode; ``"fwd"`` or ``"rev"`` force
            autodiff in that mode; ``"closed_form"`` / ``"autodiff"`` force the route.
        chunk_size: process ``chunk_size`` examples at a time to bound peak memory (any positive
            size, dividing ``B`` or not); ``None`` vectorises the whole batch. Same results.
        max_memory_bytes: a budget for temporary memory; the planner picks the largest chunk
            that fits (see :func:`jaxjac.explain`).
        out: a previous result of the same shape, whose memory is reused for this one (it is
            donated: do not use it afterwards). In a loop over a data set, pass the last
            result: writing into mapped memory is several times faster than into fresh pages.

    Returns:
        ``(B,) + f_out.shape + x.shape``.
    """
    return _planned(
        "input_jacobian",
        f,
        params,
        xs,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        out=out,
    )


def batch_input_hessian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> jax.Array:
    """Per-example input Hessians over a leading batch axis.

    ``mode``, ``chunk_size``, ``max_memory_bytes`` and ``out`` as in
    :func:`batch_input_jacobian`; on the autodiff route the Hessian is forward-over-reverse,
    on the closed-form route the layer sum.

    Returns:
        ``(B,) + f_out.shape + x.shape + x.shape``.
    """
    return _planned(
        "input_hessian",
        f,
        params,
        xs,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        out=out,
    )


def batch_weight_jacobian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> Any:
    """Per-example weight Jacobians over a leading batch axis.

    ``mode``, ``chunk_size``, ``max_memory_bytes`` and ``out`` as in
    :func:`batch_input_jacobian`.

    Returns:
        A pytree shaped like ``params`` with leaves ``(B,) + f_out.shape + leaf.shape``.
    """
    return _planned(
        "weight_jacobian",
        f,
        params,
        xs,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        out=out,
    )


@_jit_entry()
def input_jvp(f: Fn, params: Any, x: ArrayLike, v: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Jacobian-vector product in input space without forming the Jacobian.

    Args:
        v: tangent, ``x.shape``.

    Returns:
        ``(f(params, x), J v)``, the second of shape ``f_out.shape``.
    """
    x = _differentiable_input(x)
    return _input_jvp(f, params, x, v)


@_jit_entry()
def input_vjp(f: Fn, params: Any, x: ArrayLike, u: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Vector-Jacobian product in input space.

    Args:
        u: cotangent, ``f_out.shape``.

    Returns:
        ``(f(params, x), uᵀ J)``, the second of shape ``x.shape``.
    """
    x = _differentiable_input(x)
    return _input_vjp(f, params, x, u)


@_jit_entry()
def input_hvp(f: Fn, params: Any, x: ArrayLike, v: ArrayLike) -> jax.Array:
    """Hessian-vector product in input space (forward-over-reverse), for every output entry.

    Args:
        v: direction, ``x.shape``.

    Returns:
        ``f_out.shape + x.shape``: ``Σ_j H[..., :, j] v_j``.
    """
    x = _differentiable_input(x)
    return _input_hvp(f, params, x, v)


@_jit_entry()
def weight_jvp(f: Fn, params: Any, x: ArrayLike, tangent: Any) -> tuple[jax.Array, jax.Array]:
    """Jacobian-vector product in weight space.

    Args:
        tangent: a pytree shaped like ``params``.

    Returns:
        ``(f(params, x), J_w tangent)``, the second of shape ``f_out.shape``.
    """
    return _weight_jvp(f, params, x, tangent)


@_jit_entry()
def weight_vjp(f: Fn, params: Any, x: ArrayLike, u: ArrayLike) -> tuple[jax.Array, Any]:
    """Vector-Jacobian product in weight space.

    Args:
        u: cotangent, ``f_out.shape``.

    Returns:
        ``(f(params, x), uᵀ J_w)``, the second a pytree shaped like ``params``.
    """
    return _weight_vjp(f, params, x, u)


@_jit_entry()
def weight_hvp(f: Fn, params: Any, x: ArrayLike, v: Any) -> Any:
    """Hessian-vector product of a scalar ``f(params, x)`` in weight space.

    Args:
        v: a pytree shaped like ``params``.

    Returns:
        A pytree shaped like ``params``.
    """
    return _weight_hvp(f, params, x, v)
