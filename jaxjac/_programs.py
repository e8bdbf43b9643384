"""The batched programs behind every route: what :mod:`jaxjac.routes` compiles and runs.

A program is a plain function of ``(f, params, xs)`` for one :class:`RouteKey`, the static part
of a plan; it composes under ``jit``, ``vmap`` and ``shard_map``. The closed-form route runs
jaxjac's MLP formulas: tuned for the CPU's caches (:mod:`jaxjac._mlp_cpu`) where the program
runs on the CPU, else the readable whole-batch reference (:mod:`jaxjac.closed_form`). The
autodiff route vectorises the per-example blocks of :mod:`jaxjac._autodiff`. Both run in chunks
of ``chunk_size`` rows when the key has one.

Two conventions for ``f``: the derivative tasks take ``f(params, x)``; the calculus tasks
(``laplacian``, ``divergence``, ``slogdet``, ``det``) take ``f(x)`` and ignore ``params`` on the
autodiff route (the closed form reads the MLP's parameters from the ``functools.partial`` that
``f`` is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxjac import _autodiff, _mlp_cpu, closed_form
from jaxjac._chunks import map_chunks
from jaxjac._mlp import mlp_of_x
from jaxjac.activations import Activation

__all__ = [
    "CALCULUS_TASKS",
    "DERIVATIVE_TASKS",
    "ROUTES",
    "TASKS",
    "RouteKey",
    "batched_program",
    "values_and_derivatives",
]

DERIVATIVE_TASKS = ("input_jacobian", "input_hessian", "weight_jacobian")
CALCULUS_TASKS = ("laplacian", "divergence", "slogdet", "det")
TASKS = DERIVATIVE_TASKS + CALCULUS_TASKS
ROUTES = ("closed_form", "autodiff")


class RouteKey(NamedTuple):
    """Everything a compiled batched program depends on besides shapes: hashable and static.

    Attributes:
        task: one of :data:`TASKS`.
        route: ``"closed_form"`` or ``"autodiff"``.
        mode: how the route accumulates: ``"fwd"`` / ``"rev"`` (Jacobians), ``"fwd-over-rev"``
            (autodiff Hessian), ``"layer-sum"`` (closed-form Hessian), ``"outer-product"``
            (closed-form weight Jacobian), ``"forward-laplacian"`` (closed-form Laplacian),
            ``"vmap"`` / ``"loop"`` (autodiff Laplacian over the basis directions).
        chunk_size: rows per step of a sequential loop, or ``None`` for the whole batch.
        activation: the MLP's activation on the closed-form route, else ``None``.
        cpu: whether the closed form takes its CPU-tuned path (:mod:`jaxjac._mlp_cpu`).
    """

    task: str
    route: str
    mode: str
    chunk_size: int | None
    activation: Activation | None
    cpu: bool


def _closed_form_rows(key: RouteKey, params: Any, out: Any) -> Callable[[jax.Array], Any]:
    """The closed form of ``key.task`` as a function of a block of rows ``(b, n_in)``."""
    act = key.activation
    if key.task in ("input_jacobian", "divergence", "slogdet", "det"):
        side = key.mode
        if key.cpu:
            jac = lambda b: _mlp_cpu.jacobian(params, b, act, side)  # noqa: E731
        else:
            jac = lambda b: closed_form.jacobian_rows(params, b, act, side)  # noqa: E731
        if key.task == "slogdet":
            return lambda b: _autodiff.slogdet(jac(b))
        if key.task == "det":
            return lambda b: _autodiff.det(jac(b))
        if key.task == "divergence":
            return lambda b: jnp.trace(jac(b), axis1=1, axis2=2)
        return jac
    if key.task == "input_hessian":
        if key.cpu:
            return lambda b: _mlp_cpu.hessian(params, b, act, out=out)
        return lambda b: closed_form.hessian_rows(params, b, act)
    if key.task == "weight_jacobian":
        return lambda b: closed_form.weight_jacobian_rows(params, b, act)
    if key.cpu:
        return lambda b: _mlp_cpu.laplacian(params, b, act)
    return lambda b: closed_form.laplacian_rows(params, b, act)


def _autodiff_example(key: RouteKey, f: Callable, params: Any) -> Callable[[jax.Array], Any]:
    """The autodiff route of ``key.task`` for one example ``x``."""
    if key.task == "input_jacobian":
        return lambda x: _autodiff.input_jacobian(f, params, x, key.mode)
    if key.task == "input_hessian":
        return lambda x: _autodiff.input_hessian(f, params, x)
    if key.task == "weight_jacobian":
        return lambda x: _autodiff.weight_jacobian(f, params, x, key.mode)
    if key.task == "laplacian":
        return lambda x: _autodiff.laplacian(f, x, key.mode)
    if key.task == "divergence":
        return lambda x: _autodiff.divergence(f, x, key.mode)
    if key.task == "det":
        return lambda x: _autodiff.det(_autodiff.square_jacobian(f, x))
    return lambda x: _autodiff.slogdet(_autodiff.square_jacobian(f, x))


def batched_program(f: Callable, params: Any, xs: jax.Array, key: RouteKey, out: Any = None):
    """The plain (un-jitted) batched computation of ``key`` on ``xs: (B,) + x.shape``.

    Args:
        f: ``f(params, x)``, or ``f(x)`` for the calculus tasks.
        params: the parameters of ``f(params, x)``; ignored for the calculus tasks.
        xs: the batch.
        key: the route.
        out: a buffer of the result's layout that the program writes into instead of a fresh,
            zero-filled one (its values are never read), or ``None``.

    Returns:
        The task's result, batch axis first.
    """
    if key.route == "closed_form":
        if key.task in CALCULUS_TASKS:
            params = mlp_of_x(f)[0]
        # Unchunked, map_chunks calls the Hessian on the whole batch: it fills ``out`` itself.
        whole = out if key.chunk_size is None or key.chunk_size >= xs.shape[0] else None
        return map_chunks(_closed_form_rows(key, params, whole), xs, key.chunk_size, out=out)
    per_example = _autodiff_example(key, f, params)
    return map_chunks(jax.vmap(per_example), xs, key.chunk_size, out=out)


def values_and_derivatives(
    f: Callable, params: Any, xs: jax.Array, key: RouteKey, *, hessian: bool
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Values, input Jacobians and (optionally) input Hessians of ``xs: (B, n_in)`` on one route.

    ``key`` is an ``input_jacobian`` route (its route and activation decide both derivatives).
    A scalar ``f`` counts as ``n_out = 1``.

    Returns:
        ``(values (B, n_out), jac (B, n_out, n_in), hess (B, n_out, n_in, n_in) or None)``.
    """
    batch, n_in = xs.shape
    if key.route == "closed_form":
        act = key.activation
        if key.cpu:
            values, jac = _mlp_cpu.value_and_jacobian(params, xs, act)
            hess = _mlp_cpu.hessian(params, xs, act) if hessian else None
        else:
            values = jax.vmap(lambda x: f(params, x))(xs)
            jac = closed_form.jacobian_rows(params, xs, act)
            hess = closed_form.hessian_rows(params, xs, act) if hessian else None
    else:
        values = jax.vmap(lambda x: f(params, x))(xs)
        jac = jax.vmap(lambda x: _autodiff.input_jacobian(f, params, x))(xs)
        hess = jax.vmap(lambda x: _autodiff.input_hessian(f, params, x))(xs) if hessian else None
    n_out = math.prod(values.shape[1:])
    hess = hess.reshape(batch, n_out, n_in, n_in) if hess is not None else None
    return values.reshape(batch, n_out), jac.reshape(batch, n_out, n_in), hess
