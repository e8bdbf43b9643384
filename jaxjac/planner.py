"""The route planner behind ``mode="auto"`` of the batched helpers, and :func:`explain`.

For a batched task it decides

* the **route**: the closed form of :mod:`jaxjac.closed_form` when ``f`` is jaxjac's MLP
  (:func:`jaxjac.mlp_apply`, ``functools.partial(mlp_apply, activation=...)`` or
  :func:`jaxjac.mlp_function`), else autodiff;
* the **accumulation mode**: forward or reverse, whichever carries fewer vectors through ``f``
  (``n_in`` tangents against ``n_out`` cotangents; the closed form counts multiply-adds);
* the **chunk size**: from ``max_memory_bytes``, a budget for XLA's temporary buffers (the
  inputs and the result itself are not counted: the caller holds them anyway).

Memory and FLOPs are not guessed: the planner compiles the chosen program for batches of four and
eight examples and reads XLA's own ``memory_analysis()`` and ``cost_analysis()``; per-example
cost is the slope, fixed cost the rest. Plans are cached per ``(task, f, options, shapes,
dtypes)``, so planning costs two small compiles once, and nothing when no budget is given.
A result that cannot fit in the device's memory at all is refused before anything runs.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxjac import _hessian_kernel, closed_form
from jaxjac._chunks import is_count, map_chunks
from jaxjac.activations import Activation, get_activation
from jaxjac.derivatives import (  # derivatives imports this module lazily
    _check_differentiable,
    _split_partial,
)
from jaxjac.nets import check_mlp_input, mlp_apply, validate_mlp_params

__all__ = ["Plan", "explain", "mlp_activation", "plan"]

TASKS = ("input_jacobian", "input_hessian", "weight_jacobian")


class Plan(NamedTuple):
    """What a batched helper will run, and what it costs.

    Attributes:
        task: ``"input_jacobian"``, ``"input_hessian"`` or ``"weight_jacobian"``.
        route: ``"closed_form"`` or ``"autodiff"``.
        mode: accumulation mode: ``"fwd"`` or ``"rev"`` (Jacobians), ``"fwd-over-rev"``
            (autodiff Hessian) or ``"layer-sum"`` (closed-form Hessian).
        batch: number of examples ``B``.
        chunk_size: examples per step, or ``None`` for the whole batch at once.
        activation: the MLP's :class:`~jaxjac.Activation` on the closed-form route (the object
            itself, so an unregistered one works too), else ``None``.
        flops: estimated floating-point operations for the whole batch (XLA's count).
        result_bytes: size of the result.
        temp_bytes_per_example: XLA temporary memory per example processed at once.
        temp_bytes_fixed: XLA temporary memory independent of the batch.
        max_memory_bytes: the budget asked for, if any.
        reasons: one sentence per decision.
        step_rows: rows the program itself processes at a time within a chunk (the closed-form
            Jacobian and Hessian of a large batch step through cache-sized blocks of rows), or
            ``None``.
        temp_bytes_stepped: XLA temporary memory of the whole batch's program in row steps
            (measured; it does not grow with the batch), or ``None`` when it is not stepped.
    """

    task: str
    route: str
    mode: str
    batch: int
    chunk_size: int | None
    activation: Activation | None
    flops: float | None
    result_bytes: int
    temp_bytes_per_example: int | None
    temp_bytes_fixed: int | None
    max_memory_bytes: int | None
    reasons: tuple[str, ...]
    step_rows: int | None = None
    temp_bytes_stepped: int | None = None

    @property
    def temp_bytes(self) -> int | None:
        """Estimated peak temporary memory at the chosen chunk size."""
        if self.temp_bytes_per_example is None:
            return None
        return _temp_bytes(self, self.chunk_size)

    def __str__(self) -> str:
        chunk = "whole batch" if self.chunk_size is None else f"chunks of {self.chunk_size}"
        lines = [
            f"{self.task} of a batch of {self.batch}: {self.route} route, {self.mode}, {chunk}",
            f"  result {_fmt_bytes(self.result_bytes)}",
        ]
        if self.temp_bytes is not None:
            budget = (
                f" (budget {_fmt_bytes(self.max_memory_bytes)})"
                if self.max_memory_bytes is not None
                else ""
            )
            rows = self.batch if self.chunk_size is None else min(self.chunk_size, self.batch)
            stepped = self.step_rows is not None and self.step_rows < rows
            chunked = stepped or rows < self.batch
            result = _fmt_bytes(_result_bytes_per_example(self))
            if stepped and self.temp_bytes_stepped is not None:
                lines.append(
                    f"  temporary memory ≈ {_fmt_bytes(self.temp_bytes)}{budget}: "
                    f"{self.step_rows} rows at a time (row steps, measured)"
                )
            else:
                lines.append(
                    f"  temporary memory ≈ {_fmt_bytes(self.temp_bytes)}{budget}: "
                    f"{_fmt_bytes(self.temp_bytes_per_example)} per example in flight"
                    + (f", {self.step_rows} at a time (row steps)" if stepped else "")
                    + (f" (+ {result} of its result, copied out per chunk)" if chunked else "")
                    + f" + {_fmt_bytes(self.temp_bytes_fixed)} fixed"
                )
        if self.flops is not None:
            lines.append(f"  ≈ {self.flops / 1e9:.3g} GFLOP")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def _result_bytes_per_example(plan: Plan) -> int:
    return -(-plan.result_bytes // plan.batch)


def _temp_bytes(plan: Plan, chunk_size: int | None) -> int:
    """Temporaries of ``plan``'s program run in chunks of ``chunk_size`` (``None``: whole).

    In flight at once are ``chunk_size`` examples, or the program's own row steps when it takes
    fewer (``Plan.step_rows``, the closed-form Jacobian or Hessian of a large batch); a chunk's
    or step's result is a temporary too, until it is copied into the output.
    """
    rows = plan.batch if chunk_size is None else min(chunk_size, plan.batch)
    stepped = plan.step_rows is not None and plan.step_rows < rows
    if stepped and plan.temp_bytes_stepped is not None:
        return plan.temp_bytes_stepped
    if stepped:
        rows = plan.step_rows
    elif rows == plan.batch:
        return plan.temp_bytes_fixed + rows * plan.temp_bytes_per_example
    per_row = plan.temp_bytes_per_example + _result_bytes_per_example(plan)
    return plan.temp_bytes_fixed + rows * per_row


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def mlp_activation(f: Any) -> Activation | None:
    """The activation if ``f(params, x)`` is jaxjac's MLP, else ``None``.

    Recognises :func:`jaxjac.mlp_apply` (tansig) and ``functools.partial(mlp_apply,
    activation=...)``, which is what :func:`jaxjac.mlp_function` returns.
    """
    if f is mlp_apply:
        return get_activation("tansig")
    if (
        isinstance(f, functools.partial)
        and f.func is mlp_apply
        and not f.args
        and set(f.keywords) <= {"activation"}
    ):
        return get_activation(f.keywords.get("activation", "tansig"))
    return None


def _is_mlp_params(params: Any) -> bool:
    try:
        validate_mlp_params(params)
    except ValueError:
        return False
    return True


# --- the batched programs ------------------------------------------------------------------


class _Route(NamedTuple):
    """The static part of a plan: everything the compiled program depends on."""

    task: str
    route: str
    mode: str
    chunk_size: int | None
    activation: Activation | None


def _batched_program(
    f: Callable, params: Any, xs: jax.Array, route: _Route, out: Any = None
) -> Any:
    """The plain (un-jitted) batched computation a plan describes.

    ``out``: a buffer of the result's layout that the program writes the result into instead
    of a fresh, zero-filled one (its values are never read), or ``None``.
    """
    from jaxjac import derivatives as d  # derivatives imports this module lazily; no cycle

    if route.route == "closed_form":
        act = route.activation
        # Unchunked, map_chunks calls the Hessian on the whole batch: it fills ``out`` itself.
        whole = out if route.chunk_size is None or route.chunk_size >= xs.shape[0] else None
        fns = {
            "input_jacobian": lambda b: closed_form._jacobian(params, b, act, route.mode),
            "input_hessian": lambda b: closed_form._hessian(params, b, act, out=whole),
            "weight_jacobian": lambda b: closed_form._weight_jacobian(params, b, act),
        }
        return map_chunks(fns[route.task], xs, route.chunk_size, out=out)
    per_example = {
        "input_jacobian": lambda x: d._input_jacobian(f, params, x, route.mode),
        "input_hessian": lambda x: d._input_hessian(f, params, x),
        "weight_jacobian": lambda x: d._weight_jacobian(f, params, x, route.mode),
    }[route.task]
    return map_chunks(jax.vmap(per_example), xs, route.chunk_size, out=out)


# --- planning ------------------------------------------------------------------------------


def _result_bytes(task: str, f: Callable, params: Any, xs: jax.Array) -> tuple[int, int, int]:
    """Bytes of the result, and the per-example input and output sizes."""
    out = jax.eval_shape(f, params, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    n_out = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(out))
    n_in = math.prod(xs.shape[1:])
    itemsize = jnp.dtype(xs.dtype).itemsize
    if task == "input_jacobian":
        per = n_out * n_in
    elif task == "input_hessian":
        per = n_out * n_in * n_in
    else:
        per = n_out * sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
    return xs.shape[0] * per * itemsize, n_in, n_out


def _memory_limit() -> int | None:
    """Bytes the result may take at most: the device's memory, or the host's RAM on CPU."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _analyse(f, params, xs, route: _Route, batch: int) -> tuple[int, float]:
    """XLA's temporary bytes and FLOPs of the program on ``batch`` examples."""
    spec = jax.ShapeDtypeStruct((batch, *xs.shape[1:]), xs.dtype)
    params_spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(*_shape_dtype(a)), params)
    compiled = (
        jax.jit(lambda p, b: _batched_program(f, p, b, route._replace(chunk_size=None)))
        .lower(params_spec, spec)
        .compile()
    )
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    temp, flops = int(memory.temp_size_in_bytes), float((cost or {}).get("flops", float("nan")))
    if route.route == "closed_form" and route.task == "input_hessian" and len(params) > 2:
        if closed_form._fused_default(spec):  # the fused kernel: a custom call XLA cannot see
            n_in, n_out = params[0]["W"].shape[1], params[-1]["W"].shape[0]
            widths = [layer["W"].shape[0] for layer in params[1:-1]]
            scratch, fused = _hessian_kernel.cost(n_in, n_out, widths, batch, spec.dtype.itemsize)
            temp, flops = temp + scratch, flops + fused
    return temp, flops


def _fn_key(f: Any) -> Any:
    if not isinstance(f, functools.partial):
        return f
    split = _split_partial(f)
    return f if split is None else (split[0], _shapes(split[1]))


def _shapes(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(_shape_dtype(a) for a in leaves)


def _shape_dtype(a: Any) -> tuple:
    # Arrays and ShapeDtypeStructs answer from their attributes (a tuple and a numpy dtype,
    # hashable): jnp.result_type costs ~10 us a leaf, and every microsecond here is paid on
    # every call of a planned helper.
    try:
        return a.shape, a.dtype
    except AttributeError:
        return jnp.shape(a), jnp.result_type(a)


def plan(
    task: str,
    f: Callable,
    params: Any,
    xs: Any,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    analyse: bool | None = None,
) -> Plan:
    """Plan a batched ``task`` of ``f(params, x)`` over the rows of ``xs: (B,) + x.shape``.

    Args:
        task: ``"input_jacobian"``, ``"input_hessian"`` or ``"weight_jacobian"``.
        f: ``f(params, x)`` for one example.
        params: pytree.
        xs: the batch, or a :class:`jax.ShapeDtypeStruct` of it.
        mode: ``"auto"``, or a forced ``"fwd"`` / ``"rev"`` (autodiff route). ``"closed_form"``
            and ``"autodiff"`` force the route.
        chunk_size: a fixed chunk size (then the budget only checks it).
        max_memory_bytes: budget for temporary memory; the chunk size is the largest that fits.
        analyse: measure memory and FLOPs by compiling (default: only when a budget is given).

    Returns:
        A :class:`Plan`.

    Raises:
        ValueError: for an unknown task or mode, a budget too small for one example, or a
            result larger than the device's memory.
    """
    # A plan seen before: the key holds everything a plan depends on, so the checks below
    # passed for it already. Planned helpers call this on every call; after a long computation
    # each Python operation runs on cold caches (~10-50 us), hence the short path.
    try:
        # The types too: 3.0 == 3 (and True == 1) would find the plan of a valid option.
        key = (task, _fn_key(f), mode, chunk_size, type(chunk_size), max_memory_bytes)
        key += (type(max_memory_bytes), analyse)
        key += (_shapes(params), _shapes(xs))
        found = _PLANS.get(key)
    except TypeError:  # something unhashable: plan without caching (the checks say what)
        key = found = None
    if found is not None:
        return found
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if mode not in ("auto", "fwd", "rev", "closed_form", "autodiff"):
        raise ValueError(
            f"mode must be 'auto', 'fwd', 'rev', 'closed_form' or 'autodiff', got {mode!r}"
        )
    if chunk_size is not None and (not is_count(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if max_memory_bytes is not None and (not is_count(max_memory_bytes) or max_memory_bytes < 1):
        raise ValueError(f"max_memory_bytes must be a positive integer, got {max_memory_bytes!r}")
    chunk_size = int(chunk_size) if chunk_size is not None else None
    max_memory_bytes = int(max_memory_bytes) if max_memory_bytes is not None else None
    if jnp.ndim(xs) < 1:
        raise ValueError(f"xs must have a leading batch axis, got shape {jnp.shape(xs)}")
    xs = jax.ShapeDtypeStruct(*_shape_dtype(xs))
    _check_differentiable("xs", xs.dtype)
    analyse = max_memory_bytes is not None if analyse is None else analyse
    made = _make_plan(task, mode, chunk_size, max_memory_bytes, analyse, f, params, xs)
    if key is not None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))  # forget the oldest
        _PLANS[key] = made
    return made


# Plans by (task, function, options, shapes and dtypes): a plan depends on nothing else.
_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 1024


def _make_plan(task, mode, chunk_size, max_memory_bytes, analyse, f, params, xs) -> Plan:
    reasons = []
    act = mlp_activation(f)
    batch = xs.shape[0]
    mlp = act is not None and _is_mlp_params(params)
    if mlp and len(xs.shape) == 1:
        n_in = params[0]["W"].shape[1]
        raise ValueError(
            f"xs must be a batch of shape (B, {n_in}) for this MLP, got shape {xs.shape}: one "
            f"example? pass xs[None], or use the per-example helper ({task})"
        )
    if mlp and len(xs.shape) == 2:
        check_mlp_input(params, xs)  # names the batch's shape, not one example's
    result_bytes, n_in, n_out = _result_bytes(task, f, params, xs)
    limit = _memory_limit()
    if limit is not None and result_bytes > limit:
        raise ValueError(
            f"the {task} of a batch of {batch} needs {_fmt_bytes(result_bytes)} for its result "
            f"alone, more than this device's {_fmt_bytes(limit)}; pass fewer examples per call "
            "(e.g. stream the data set in slices) or reduce the result as you go"
        )
    # The closed form takes rows of features, (B, n_in); mlp_apply on other ranks broadcasts.
    closed = (
        act is not None
        and len(xs.shape) == 2
        and _is_mlp_params(params)
        and mode in ("auto", "closed_form")
    )
    if mode == "closed_form" and not closed:
        if act is None:
            why = (
                "f is not jaxjac's MLP (jj.mlp_apply, jj.mlp_function(...), or a "
                "functools.partial of mlp_apply with only its activation bound)"
            )
        else:  # MLP params were checked when f was evaluated
            why = f"xs has shape {xs.shape}, not (B, n_in)"
        raise ValueError(f"mode='closed_form' needs jaxjac's MLP on a (B, n_in) batch: {why}")
    if closed:
        sizes = validate_mlp_params(params)
        route = "closed_form"
        if task == "input_jacobian":
            cost = closed_form.jacobian_cost(sizes)
            acc = "fwd" if cost["fwd"] < cost["rev"] else "rev"
            reasons.append(
                f"jaxjac MLP {sizes} ({act.name}): closed-form layer product, from the "
                f"{'input' if acc == 'fwd' else 'output'} side ({cost[acc]:,} multiply-adds per "
                f"example against {cost['rev' if acc == 'fwd' else 'fwd']:,})"
            )
        elif task == "input_hessian":
            acc = "layer-sum"
            reasons.append(
                f"jaxjac MLP {sizes} ({act.name}): closed-form layer-sum Hessian, several times "
                "cheaper than forward-over-reverse autodiff"
            )
            if len(sizes) > 3:
                fused = closed_form._fused_default(xs)
                reasons.append(
                    "its layer sum runs in jaxjac's fused CPU kernel (scaling, symmetric "
                    "multiply and mirroring in one pass)"
                    if fused
                    else "its layer sum runs as XLA einsums (the fused kernel needs the CPU, "
                    "float32 or float64, and the compiled extension: "
                    f"{'installed' if _hessian_kernel.available() else 'not installed'})"
                )
        else:
            acc = "outer-product"
            reasons.append(f"jaxjac MLP {sizes} ({act.name}): closed-form outer products")
    else:
        route = "autodiff"
        if act is not None and mode == "auto" and len(xs.shape) != 2:
            reasons.append(f"examples of shape {xs.shape[1:]}, not (n_in,): autodiff")
        elif act is not None and mode == "auto":
            reasons.append("params are not an MLP parameter list: autodiff")
        elif act is None:
            reasons.append("f is not jaxjac's MLP: autodiff")
        n_params = sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
        wide = n_in if task != "weight_jacobian" else n_params
        if task == "input_hessian":
            acc = "fwd-over-rev"
            reasons.append("jax.hessian: forward-over-reverse, one reverse sweep per tangent")
        elif mode in ("fwd", "rev"):
            acc = mode
            reasons.append(f"mode {mode!r} requested")
        else:
            acc = "fwd" if wide <= n_out else "rev"
            what = "inputs" if task != "weight_jacobian" else "parameters"
            reasons.append(
                f"{wide} {what} against {n_out} outputs: "
                f"{'forward' if acc == 'fwd' else 'reverse'} mode carries fewer vectors"
            )
    static = _Route(task, route, acc, chunk_size, act if closed else None)
    itemsize = jnp.dtype(xs.dtype).itemsize

    def step_rows(rows: int) -> int | None:  # the closed form's own row steps
        if closed and task == "input_jacobian":
            return closed_form._jacobian_step_rows(params, rows, itemsize, acc)
        if closed and task == "input_hessian":
            return closed_form._hessian_step_rows(params, rows, itemsize)
        return None

    per_example = fixed = flops = stepped_temp = None
    if analyse:
        # Batches of 4 and 8, not 1 and 2: XLA compiles a batch of one to a different program
        # (its temporaries were 9x those of a batch of two on a [32, 256, 256, 8] net), which
        # made the per-example slope negative. From 2 on, temporaries grow linearly.
        t4, f4 = _analyse(f, params, xs, static, 4)
        t8, f8 = _analyse(f, params, xs, static, 8)
        per_example = max((t8 - t4) // 4, 1)
        fixed = max(t4 - 4 * per_example, 0)
        flops = f4 + (f8 - f4) / 4 * (batch - 4)
        # In row steps the temporaries stop growing with the batch, but within a step they are
        # not linear in its rows (the closed-form Hessian contracts a few examples at a time):
        # the slope from 4 and 8 overstated a 32-row step by 1.4x. So the stepped program is
        # measured itself, at the batch's shape (whether it steps depends on the batch).
        if step_rows(batch) is not None:
            stepped_temp = _analyse(f, params, xs, static, batch)[0]
    if max_memory_bytes is not None:
        fit = (max_memory_bytes - fixed) // per_example
        if stepped_temp is not None and stepped_temp <= max_memory_bytes:
            fit = batch  # in row steps the whole batch fits
        if fit < batch:
            # Chunked, each chunk's result is a temporary as well (then copied into the output).
            per_example_chunked = per_example + -(-result_bytes // batch)
            fit = (max_memory_bytes - fixed) // per_example_chunked
            if stepped_temp is not None:  # a larger chunk runs in the steps that did not fit
                fit = min(fit, step_rows(batch))
            if fit < 1:
                raise ValueError(
                    f"max_memory_bytes={max_memory_bytes:,} is too small: one example of this "
                    f"{task} needs {_fmt_bytes(fixed + per_example_chunked)} of temporary "
                    "memory (its result included, as chunks are copied into the output)"
                )
        if chunk_size is None:
            chunk_size = None if fit >= batch else int(fit)
            reasons.append(
                f"budget {_fmt_bytes(max_memory_bytes)} fits {min(fit, batch)} examples at once"
                + ("" if chunk_size is None else f": chunks of {chunk_size}")
            )
        elif chunk_size > fit:
            reasons.append(
                f"chunk_size={chunk_size} exceeds the budget (fits {fit}): kept as asked"
            )
    if chunk_size is not None and chunk_size >= batch:
        chunk_size = None
    return Plan(
        task=task,
        route=route,
        mode=acc,
        batch=batch,
        chunk_size=chunk_size,
        activation=act if closed else None,
        flops=flops,
        result_bytes=result_bytes,
        temp_bytes_per_example=per_example,
        temp_bytes_fixed=fixed,
        max_memory_bytes=max_memory_bytes,
        reasons=tuple(reasons),
        step_rows=step_rows(batch if chunk_size is None else chunk_size),
        temp_bytes_stepped=stepped_temp,
    )


def route_of(p: Plan) -> _Route:
    """The static description the compiled program is keyed on."""
    return _Route(p.task, p.route, p.mode, p.chunk_size, p.activation)


def explain(
    task: str,
    f: Callable,
    params: Any,
    xs: Any,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
) -> Plan:
    """What the batched helper for ``task`` would run, with measured memory and FLOPs.

    Same arguments as :func:`plan`; always compiles the program to measure it. ``print`` the
    result for a readable account of every decision.
    """
    return plan(
        task,
        f,
        params,
        xs,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        analyse=True,
    )
