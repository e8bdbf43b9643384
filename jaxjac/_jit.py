"""The one jit-caching wrapper of every public entry point, and the keys it caches on.

Every public helper is compiled once per ``(f, static options, shapes, dtypes)``: ``f`` (the
network, loss or function of ``x``) is a static argument of :func:`jax.jit`, so calling again
with the same function object and shapes reuses the compiled program. A
``functools.partial(func, *arrays, **options)`` is compiled once per ``(func, options)`` with
the bound arrays (typically ``params``) traced, so ``partial(net, new_params)`` on every training
step reuses the program instead of baking the weights in as constants.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from inspect import Parameter
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KEYWORD_ONLY = Parameter.KEYWORD_ONLY

__all__ = ["PartialHead", "fn_key", "jit_entry", "shape_dtype", "shapes", "split_partial"]


class PartialHead(NamedTuple):
    """The static part of a ``functools.partial``: the function and its keyword arguments."""

    func: Callable
    keywords: tuple[tuple[str, Any], ...]


def split_partial(f: Any) -> tuple[PartialHead, tuple] | None:
    """Split ``partial(func, *arrays, **options)`` into a static head and its bound arrays.

    Returns ``None`` for anything else (a plain function, a partial binding non-arrays, or one
    whose options are unhashable): those are hashed, and compiled, as they are.
    """
    if not isinstance(f, functools.partial):
        return None
    leaves = jax.tree_util.tree_leaves(f.args)
    if not all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        return None
    head = PartialHead(f.func, tuple(sorted(f.keywords.items())))
    try:
        hash(head)
    except TypeError:
        return None
    return head, f.args


def join_partial(head: PartialHead, bound: tuple) -> functools.partial:
    """The ``functools.partial`` that :func:`split_partial` split, rebuilt from its parts."""
    return functools.partial(head.func, *bound, **dict(head.keywords))


def shape_dtype(a: Any) -> tuple:
    """``(shape, dtype)`` of an array, a ShapeDtypeStruct or a Python number, hashable."""
    # Arrays and ShapeDtypeStructs answer from their attributes: jnp.result_type costs ~10 us a
    # leaf, paid on every call of a planned helper.
    try:
        return a.shape, a.dtype
    except AttributeError:
        return jnp.shape(a), jnp.result_type(a)


def shapes(tree: Any) -> tuple:
    """A hashable key of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(shape_dtype(a) for a in leaves)


def fn_key(f: Any) -> Any:
    """A hashable key of ``f`` that a partial's bound arrays enter by shape, not by value."""
    split = split_partial(f)
    return f if split is None else (split[0], shapes(split[1]))


def jit_entry(*static: str, donate: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Compile ``fn(f, ...)`` once per (f, static options, shapes): the first argument is static.

    A ``functools.partial`` whose positional arguments are arrays is compiled once per
    underlying function and keyword options instead, with those arrays as traced arguments.
    Static options may be given positionally or by keyword. Arguments named in ``donate`` are
    donated: XLA writes the result into their buffers. The wrapped function has ``.lower(...)``
    to inspect the compiled program.
    """

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = list(sig.parameters)
        # Donated arguments are passed positionally; with_partial shifts them by one (head and
        # bound replace f). keep_unused: a donated buffer the computation never reads would
        # otherwise be pruned from the program, and nothing would be aliased.
        nums = tuple(names.index(name) for name in donate)
        # Calls that give no static option positionally skip the binding (~15 us a call).
        plain = min((i for i, name in enumerate(names) if name in static), default=len(names))
        first = names[0]  # the network, loss or function: static, hashed
        compiled = jax.jit(
            fn, static_argnames=(first, *static), donate_argnums=nums, keep_unused=bool(donate)
        )

        def with_partial(head: PartialHead, bound: tuple, *args, **kwargs):
            return fn(join_partial(head, bound), *args, **kwargs)

        compiled_partial = jax.jit(
            with_partial,
            static_argnames=("head", *static),
            donate_argnums=tuple(i + 1 for i in nums),
            keep_unused=bool(donate),
        )

        def arguments(args, kwargs):
            # Positionally up to the first static option (donation counts positions), the
            # rest by keyword: the function may be given as f=..., statics positionally.
            if args and len(args) <= plain:
                return args, kwargs
            bound = sig.bind(*args, **kwargs).arguments
            positional = []
            for name in names[:plain]:
                if name not in bound or sig.parameters[name].kind == KEYWORD_ONLY:
                    break
                positional.append(bound[name])
            rest = {k: v for k, v in bound.items() if k not in names[: len(positional)]}
            return tuple(positional), rest

        def target(f: Any, args: tuple, kwargs: dict):
            split = split_partial(f)
            if split is not None:
                return compiled_partial, (*split, *args), kwargs
            try:
                hash(f)
            except TypeError:
                raise TypeError(
                    f"{first} must be hashable to be compiled once and cached, got "
                    f"{type(f).__name__}; wrap it in a def or functools.partial"
                ) from None
            return compiled, (f, *args), kwargs

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            args, kwargs = arguments(args, kwargs)
            jitted, args, kwargs = target(args[0], args[1:], kwargs)
            return jitted(*args, **kwargs)

        def lower(*args, **kwargs):
            args, kwargs = arguments(args, kwargs)
            jitted, args, kwargs = target(args[0], args[1:], kwargs)
            return jitted.lower(*args, **kwargs)

        entry.lower = lower
        return entry

    return wrap
