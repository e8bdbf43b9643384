"""The one route resolver, and every batched entry point that asks it.

For a task on a batch, :func:`resolve` decides

* the **route**: ``"closed_form"`` when ``f`` is jaxjac's MLP (:func:`jaxjac.mlp_apply`,
  ``functools.partial(mlp_apply, activation=...)``, :func:`jaxjac.mlp_function`; for the
  calculus tasks, which take ``f(x)``, ``functools.partial(mlp_apply, params[, activation=…])``)
  on rows of features ``(B, n_in)``, else ``"autodiff"``. On the CPU the closed form runs its
  cache-tuned path (:mod:`jaxjac._mlp_cpu`, with the fused Hessian kernel); on other backends
  the whole-batch XLA program of :mod:`jaxjac.closed_form`;
* the **mode**: forward or reverse accumulation, whichever carries fewer vectors (``n_in``
  tangents against ``n_out`` cotangents; the closed form counts multiply-adds), and for the
  autodiff Laplacian whether its basis directions are vectorised or looped;
* the **chunk size**: from ``max_memory_bytes``, a budget for XLA's temporary buffers (the
  inputs and the result itself are not counted: the caller holds them anyway).

Tasks: ``"input_jacobian"``, ``"input_hessian"``, ``"weight_jacobian"`` (of ``f(params, x)``),
``"laplacian"``, ``"divergence"``, ``"slogdet"`` and ``"det"`` (of ``f(x)``; pass
``params=None``). Route names are the same
everywhere: ``route="auto" | "closed_form" | "autodiff"`` on every helper here, on
:func:`jaxjac.sensitivity` and in :class:`Plan`.

Memory and FLOPs are not guessed: with a budget, or in :func:`explain`, the resolver compiles the
chosen program for batches of four and eight examples and reads XLA's own
``memory_analysis()`` and ``cost_analysis()``; per-example cost is the slope, fixed cost the
rest. Plans are cached per ``(task, f, options, shapes, dtypes)``. A result that cannot fit in
the device's memory at all is refused before anything runs. Every entry point is compiled once
per function, options and shapes (see :mod:`jaxjac._jit`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxjac import _autodiff, _hessian_kernel, _mlp_cpu, closed_form, derivatives
from jaxjac._checks import check_batched, check_choice, check_differentiable, positive_int
from jaxjac._chunks import map_chunks
from jaxjac._jit import fn_key, jit_entry, shape_dtype, shapes
from jaxjac._mlp import is_mlp_params, mlp_activation, mlp_of_x
from jaxjac._programs import (
    CALCULUS_TASKS,
    DERIVATIVE_TASKS,
    ROUTES,
    TASKS,
    RouteKey,
    batched_program,
)
from jaxjac.activations import Activation, registry_generation
from jaxjac.nets import check_mlp_input, validate_mlp_params

__all__ = [
    "ROUTES",
    "TASKS",
    "Plan",
    "batch_divergence",
    "batch_input_hessian",
    "batch_input_jacobian",
    "batch_jacobian_abs_sq",
    "batch_jacobian_det",
    "batch_jacobian_gram",
    "batch_jacobian_norm",
    "batch_laplacian",
    "batch_log_abs_det_jacobian",
    "batch_slogdet_jacobian",
    "batch_weight_jacobian",
    "explain",
    "input_hessian",
    "input_jacobian",
    "resolve",
    "weight_jacobian",
]

Fn = Callable[[Any, jax.Array], Any]
Route = Literal["auto", "closed_form", "autodiff"]
_ROUTE_OPTIONS = ("auto", *ROUTES)
_MODES = {
    "input_jacobian": ("auto", "fwd", "rev"),
    "input_hessian": ("auto",),
    "weight_jacobian": ("auto", "fwd", "rev"),
    "laplacian": ("auto", "vmap", "loop"),
    "divergence": ("auto", "vmap", "loop"),
    "slogdet": ("auto",),
    "det": ("auto",),
}


class Plan(NamedTuple):
    """What a batched helper will run, and what it costs.

    Attributes:
        task: one of :data:`TASKS`.
        route: ``"closed_form"`` or ``"autodiff"``.
        mode: how the route accumulates (see :class:`jaxjac._programs.RouteKey`): ``"fwd"`` or
            ``"rev"`` (Jacobians), ``"fwd-over-rev"`` (autodiff Hessian), ``"layer-sum"``
            (closed-form Hessian), ``"outer-product"`` (closed-form weight Jacobian),
            ``"forward-laplacian"`` (closed-form Laplacian), ``"vmap"`` or ``"loop"``
            (autodiff Laplacian).
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
        step_rows: rows the program itself processes at a time within a chunk (the CPU path's
            Jacobian and Hessian of a large batch step through cache-sized blocks of rows), or
            ``None``.
        temp_bytes_stepped: XLA temporary memory of the whole batch's program in row steps
            (measured; it does not grow with the batch), or ``None`` when it is not stepped.
        cpu: whether the closed form runs its CPU-tuned path.
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
    cpu: bool = False

    @property
    def key(self) -> RouteKey:
        """The static description the compiled program is keyed on."""
        return RouteKey(
            self.task, self.route, self.mode, self.chunk_size, self.activation, self.cpu
        )

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
    return -(-plan.result_bytes // max(plan.batch, 1))


def _temp_bytes(plan: Plan, chunk_size: int | None) -> int:
    """Temporaries of ``plan``'s program run in chunks of ``chunk_size`` (``None``: whole).

    In flight at once are ``chunk_size`` examples, or the program's own row steps when it takes
    fewer (``Plan.step_rows``); a chunk's or step's result is a temporary too, until it is copied
    into the output.
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


# --- measuring -----------------------------------------------------------------------------


def _sizes(task: str, f: Callable, params: Any, xs: jax.ShapeDtypeStruct) -> tuple[int, int, int]:
    """``(result bytes, n_in, n_out)``: the result's size and the per-example sizes."""
    x = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
    out = jax.eval_shape(f, params, x) if task in DERIVATIVE_TASKS else jax.eval_shape(f, x)
    n_out = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(out))
    n_in = math.prod(xs.shape[1:])
    per = {
        "input_jacobian": n_out * n_in,
        "input_hessian": n_out * n_in * n_in,
        "laplacian": n_out,
        "divergence": 1,
        "slogdet": 2,
        "det": 1,
    }.get(task)
    if per is None:
        per = n_out * sum(math.prod(jnp.shape(a)) for a in jax.tree_util.tree_leaves(params))
    return xs.shape[0] * per * jnp.dtype(xs.dtype).itemsize, n_in, n_out


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


def _analyse(f, params, xs, key: RouteKey, batch: int) -> tuple[int, float]:
    """XLA's temporary bytes and FLOPs of the program on ``batch`` examples."""
    spec = jax.ShapeDtypeStruct((batch, *xs.shape[1:]), xs.dtype)
    params_spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(*shape_dtype(a)), params)
    compiled = (
        jax.jit(lambda p, b: batched_program(f, p, b, key._replace(chunk_size=None)))
        .lower(params_spec, spec)
        .compile()
    )
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    temp, flops = int(memory.temp_size_in_bytes), float((cost or {}).get("flops", float("nan")))
    if key.cpu and key.task == "input_hessian" and len(params) > 2:
        if _mlp_cpu.fused_default(spec.dtype):  # a custom call XLA's analyses cannot see
            n_in, n_out = params[0]["W"].shape[1], params[-1]["W"].shape[0]
            widths = [layer["W"].shape[0] for layer in params[1:-1]]
            scratch, fused = _hessian_kernel.cost(n_in, n_out, widths, batch, spec.dtype.itemsize)
            temp, flops = temp + scratch, flops + fused
    return temp, flops


# --- deciding ------------------------------------------------------------------------------


def _mlp_params(task: str, f: Any, params: Any) -> tuple[Activation | None, Any]:
    """The MLP's activation and parameters when ``f`` is jaxjac's MLP, else ``(None, None)``."""
    if task in CALCULUS_TASKS:
        found = mlp_of_x(f)
        return (None, None) if found is None else (found[1], found[0])
    act = mlp_activation(f)
    return (act, params) if act is not None and is_mlp_params(params) else (None, None)


def _closed_form_refusal(task: str, f: Any, act: Activation | None, shape) -> str:
    if act is None and task in CALCULUS_TASKS:
        return "f is not jaxjac's MLP as a function of x (functools.partial(mlp_apply, params))"
    if act is None:
        return (
            "f is not jaxjac's MLP (jj.mlp_apply, jj.mlp_function(...), or a functools.partial "
            "of mlp_apply with only its activation bound) with MLP params"
        )
    return f"xs has shape {shape}, not (B, n_in)"


def _decide(task, route, mode, f, params, xs) -> tuple[RouteKey, list[str]]:
    """The route and mode of ``task``, and one sentence per decision."""
    act, mlp = _mlp_params(task, f, params)
    closed_ok = act is not None and len(xs.shape) == 2
    # A forced autodiff mode ("fwd", "rev", "vmap", "loop") asks for autodiff.
    autodiff_mode = mode != "auto" and route == "auto"
    if route == "closed_form" and not closed_ok:
        if task in DERIVATIVE_TASKS and mlp_activation(f) is not None:
            validate_mlp_params(params)  # jaxjac's MLP with other params: say what is wrong
        raise ValueError(
            f"route='closed_form' for {task} needs jaxjac's MLP on a (B, n_in) batch: "
            + _closed_form_refusal(task, f, act, xs.shape)
        )
    reasons = []
    if act is not None and len(xs.shape) == 2:
        check_mlp_input(mlp, xs)  # names the batch's shape, not one example's
    if closed_ok and route != "autodiff" and not autodiff_mode:
        cpu = jax.default_backend() == "cpu"
        sizes = validate_mlp_params(mlp)
        where = (
            "the CPU-tuned path"
            if cpu
            else f"XLA's whole-batch program (backend {jax.default_backend()})"
        )
        if task in ("input_jacobian", "divergence", "slogdet", "det"):
            cost = closed_form.jacobian_cost(sizes)
            acc = (
                mode if mode in ("fwd", "rev") else ("fwd" if cost["fwd"] < cost["rev"] else "rev")
            )
            reasons.append(
                f"jaxjac MLP {sizes} ({act.name}): closed-form layer product on {where}, from the "
                f"{'input' if acc == 'fwd' else 'output'} side ({cost[acc]:,} multiply-adds per "
                f"example against {cost['rev' if acc == 'fwd' else 'fwd']:,})"
            )
            if task == "divergence":
                reasons.append("then its trace")
            elif task != "input_jacobian":
                reasons.append("then one LU per example (jnp.linalg.slogdet)")
        elif task == "input_hessian":
            acc = "layer-sum"
            reasons.append(
                f"jaxjac MLP {sizes} ({act.name}): closed-form layer-sum Hessian on {where}, "
                "several times cheaper than forward-over-reverse autodiff"
            )
            if cpu and len(sizes) > 3:
                reasons.append(
                    "its layer sum runs in jaxjac's fused CPU kernel (scaling, symmetric "
                    "multiply and mirroring in one pass)"
                    if _mlp_cpu.fused_default(xs.dtype)
                    else "its layer sum runs as XLA einsums (the fused kernel needs float32 or "
                    "float64 and the compiled extension: "
                    f"{'installed' if _hessian_kernel.available() else 'not available'})"
                )
        elif task == "weight_jacobian":
            acc = "outer-product"
            reasons.append(f"jaxjac MLP {sizes} ({act.name}): closed-form outer products")
        else:
            acc = "forward-laplacian"
            reasons.append(
                f"jaxjac MLP {sizes} ({act.name}): closed-form forward Laplacian on {where}, "
                "summing over directions inside every layer"
            )
        return RouteKey(task, "closed_form", acc, None, act, cpu), reasons
    if route == "autodiff":
        reasons.append("route 'autodiff' requested")
    elif autodiff_mode:
        reasons.append(f"mode {mode!r} requested: autodiff")
    elif act is not None:
        reasons.append(f"examples of shape {xs.shape[1:]}, not (n_in,): autodiff")
    elif task in DERIVATIVE_TASKS and mlp_activation(f) is not None:
        reasons.append("params are not an MLP parameter list: autodiff")
    else:
        reasons.append("f is not jaxjac's MLP: autodiff")
    n_in = math.prod(xs.shape[1:])
    if task == "input_hessian":
        acc = "fwd-over-rev"
        reasons.append("jax.hessian: forward-over-reverse, one reverse sweep per tangent")
    elif task == "divergence":
        acc = _autodiff.resolve_method(mode, n_in)
        reasons.append(
            f"{n_in} JVPs, one per basis direction ("
            + ("vectorised)" if acc == "vmap" else "after one linearisation, in a loop)")
        )
    elif task == "laplacian":
        acc = _autodiff.resolve_method(mode, n_in)
        reasons.append(
            f"{n_in} forward-over-forward passes, one per basis direction ("
            + ("vectorised)" if acc == "vmap" else "in a loop: memory independent of n)")
        )
    elif task in ("slogdet", "det"):
        acc = "fwd"
        reasons.append("jax.jacfwd (square Jacobian: n passes either way), then one LU")
    else:
        out = jax.eval_shape(f, params, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
        n_out = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(out))
        n_params = sum(math.prod(jnp.shape(a)) for a in jax.tree_util.tree_leaves(params))
        wide = n_in if task == "input_jacobian" else n_params
        if mode in ("fwd", "rev"):
            acc = mode
        else:
            acc = "fwd" if wide <= n_out else "rev"
            what = "inputs" if task == "input_jacobian" else "parameters"
            reasons.append(
                f"{wide} {what} against {n_out} outputs: "
                f"{'forward' if acc == 'fwd' else 'reverse'} mode carries fewer vectors"
            )
    return RouteKey(task, "autodiff", acc, None, None, False), reasons


def resolve(
    task: str,
    f: Callable,
    params: Any,
    xs: Any,
    *,
    route: Route = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    analyse: bool | None = None,
) -> Plan:
    """Decide how a batched ``task`` of ``f`` runs over the rows of ``xs: (B,) + x.shape``.

    Args:
        task: one of :data:`TASKS`.
        f: ``f(params, x)`` for one example; ``f(x)`` for ``"laplacian"`` and ``"slogdet"``.
        params: pytree (``None`` for the calculus tasks).
        xs: the batch, or a :class:`jax.ShapeDtypeStruct` of it.
        route: ``"auto"``, ``"closed_form"`` (refused unless ``f`` is jaxjac's MLP) or
            ``"autodiff"``.
        mode: ``"auto"``; ``"fwd"`` / ``"rev"`` for the Jacobians; ``"vmap"`` / ``"loop"`` for
            the autodiff Laplacian. A mode other than ``"auto"`` with ``route="auto"`` asks for
            autodiff in that mode.
        chunk_size: a fixed chunk size (then the budget only checks it).
        max_memory_bytes: budget for temporary memory; the chunk size is the largest that fits.
        analyse: measure memory and FLOPs by compiling (default: only when a budget is given).

    Returns:
        A :class:`Plan`.

    Raises:
        ValueError: for an unknown task, route or mode, a budget too small for one example, or
            a result larger than the device's memory.
    """
    # A plan seen before: the key holds everything a plan depends on, so the checks below
    # passed for it already; planned helpers call this on every call.
    try:
        # The types too: 3.0 == 3 (and True == 1) would find the plan of a valid option.
        key = (task, fn_key(f), route, mode, chunk_size, type(chunk_size), max_memory_bytes)
        key += (type(max_memory_bytes), analyse, jax.default_backend(), registry_generation())
        key += (shapes(params), shapes(xs))
        found = _PLANS.get(key)
    except TypeError:  # something unhashable: plan without caching (the checks say what)
        key = found = None
    if found is not None:
        return found
    check_choice("task", task, TASKS)
    route, mode = _legacy_mode(route, mode)
    check_choice("route", route, _ROUTE_OPTIONS)
    check_choice("mode", mode, _MODES[task])
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    max_memory_bytes = positive_int("max_memory_bytes", max_memory_bytes, allow_none=True)
    check_batched("xs", tuple(jnp.shape(xs)))
    xs = jax.ShapeDtypeStruct(*shape_dtype(xs))
    check_differentiable("xs", xs.dtype)
    analyse = max_memory_bytes is not None if analyse is None else analyse
    made = _make_plan(task, route, mode, chunk_size, max_memory_bytes, analyse, f, params, xs)
    if key is not None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))  # forget the oldest
        _PLANS[key] = made
    return made


# Plans by (task, function, options, backend, shapes and dtypes): a plan depends on nothing else.
_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 1024


def _legacy_mode(route: str, mode: str) -> tuple[str, str]:
    """``mode="closed_form"`` / ``"autodiff"``, the old spelling of ``route=``: still accepted."""
    if mode in ROUTES:
        warnings.warn(
            f"mode={mode!r} is deprecated: pass route={mode!r}", DeprecationWarning, stacklevel=4
        )
        if route not in ("auto", mode):
            raise ValueError(f"mode={mode!r} contradicts route={route!r}")
        return mode, "auto"
    return route, mode


def _make_plan(task, route, mode, chunk_size, max_memory_bytes, analyse, f, params, xs) -> Plan:
    batch = xs.shape[0]
    act, _ = _mlp_params(task, f, params)
    if act is not None and len(xs.shape) == 1 and task in DERIVATIVE_TASKS:
        n_in = params[0]["W"].shape[1]
        raise ValueError(
            f"xs must be a batch of shape (B, {n_in}) for this MLP, got shape {xs.shape}: one "
            f"example? pass xs[None], or use the per-example helper ({task})"
        )
    key, reasons = _decide(task, route, mode, f, params, xs)
    result_bytes, _, _ = _sizes(task, f, params, xs)
    limit = _memory_limit()
    if limit is not None and result_bytes > limit:
        raise ValueError(
            f"the {task} of a batch of {batch} needs {_fmt_bytes(result_bytes)} for its result "
            f"alone, more than this device's {_fmt_bytes(limit)}; pass fewer examples per call "
            "(e.g. stream the data set in slices) or reduce the result as you go"
        )
    itemsize = jnp.dtype(xs.dtype).itemsize
    mlp = _mlp_params(task, f, params)[1]

    def step_rows(rows: int) -> int | None:  # the CPU path's own row steps
        if key.cpu and task == "input_jacobian":
            return _mlp_cpu.jacobian_step_rows(mlp, rows, itemsize, key.mode)
        if key.cpu and task == "input_hessian":
            return _mlp_cpu.hessian_step_rows(mlp, rows, itemsize)
        return None

    per_example = fixed = flops = stepped_temp = None
    if analyse and batch > 0:
        # Batches of 4 and 8, not 1 and 2: XLA compiles a batch of one to a different program
        # (its temporaries were 9x those of a batch of two), which made the per-example slope
        # negative. From 2 on, temporaries grow linearly.
        t4, f4 = _analyse(f, params, xs, key, 4)
        t8, f8 = _analyse(f, params, xs, key, 8)
        per_example = max((t8 - t4) // 4, 1)
        fixed = max(t4 - 4 * per_example, 0)
        flops = f4 + (f8 - f4) / 4 * (batch - 4)
        # In row steps the temporaries stop growing with the batch, but within a step they are
        # not linear in its rows: the stepped program is measured itself, at the batch's shape.
        if step_rows(batch) is not None:
            stepped_temp = _analyse(f, params, xs, key, batch)[0]
    if max_memory_bytes is not None and batch > 0:
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
        route=key.route,
        mode=key.mode,
        batch=batch,
        chunk_size=chunk_size,
        activation=key.activation,
        flops=flops,
        result_bytes=result_bytes,
        temp_bytes_per_example=per_example,
        temp_bytes_fixed=fixed,
        max_memory_bytes=max_memory_bytes,
        reasons=tuple(reasons),
        step_rows=step_rows(batch if chunk_size is None else chunk_size) if batch else None,
        temp_bytes_stepped=stepped_temp,
        cpu=key.cpu,
    )


def explain(
    task: str,
    f: Callable,
    params: Any,
    xs: Any,
    *,
    route: Route = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
) -> Plan:
    """What the batched helper for ``task`` would run, with measured memory and FLOPs.

    Same arguments as :func:`resolve`; always compiles the program to measure it. ``print`` the
    result for a readable account of every decision.
    """
    return resolve(
        task,
        f,
        params,
        xs,
        route=route,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        analyse=True,
    )


# --- running a plan ------------------------------------------------------------------------


@jit_entry("key")
def _run(f: Fn, params: Any, xs: jax.Array, *, key: RouteKey) -> Any:
    return batched_program(f, params, xs, key)


@jit_entry("task", "route", "mode")
def _run_default(f: Fn, params: Any, xs: jax.Array, *, task: str, route: str, mode: str) -> Any:
    plan = resolve(task, f, params, xs, route=route, mode=mode)
    return batched_program(f, params, xs, plan.key)


@jit_entry("key", donate=("out",))
def _run_into(f: Fn, params: Any, xs: jax.Array, out: Any, *, key: RouteKey) -> Any:
    # ``out``'s values are never read: it is donated so the result is written into its
    # buffers. Fresh output memory is page-faulted in on first touch, which makes large
    # per-example results several times slower than writing into memory that is already
    # mapped; chunks and the CPU Hessian's steps are written into ``out`` instead of into zeros.
    return batched_program(f, params, xs, key, out=out)


# Result layouts for out= checks, by (function, route, shapes).
_OUT_LAYOUTS: dict[tuple, Any] = {}


def _layout(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(a.shape), jnp.dtype(a.dtype).name) for a in leaves]


def _empty_result(task: str, f: Callable, params: Any, xs: jax.Array, key: RouteKey) -> Any:
    """The result of a batch of no rows: every leaf with a leading axis of 0."""
    one = jax.ShapeDtypeStruct((1, *xs.shape[1:]), xs.dtype)
    shape = jax.eval_shape(lambda p, b: batched_program(f, p, b, key), params, one)
    return jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape[1:]), s.dtype), shape)


def run(
    task: str,
    f: Callable,
    params: Any,
    xs: ArrayLike,
    *,
    route: Route = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> Any:
    """Resolve ``task`` for ``f`` on ``xs`` and run it: what every batched helper calls.

    Arguments as in :func:`resolve`; ``out`` as in :func:`batch_input_jacobian`.
    """
    if (
        out is None
        and chunk_size is None
        and max_memory_bytes is None
        and isinstance(route, str)
        and isinstance(mode, str)
        and mode not in ROUTES
        and isinstance(xs, jax.Array)
        and xs.ndim >= 1
        and xs.shape[0] > 0
    ):
        # Without a chunk size or budget the plan depends on shapes alone: it is made while
        # tracing, and a call is one compiled dispatch (planning in Python on every call cost
        # up to 7 % of a small batched Jacobian).
        return _run_default(f, params, xs, task=task, route=route, mode=mode)
    xs = jnp.asarray(xs) if not isinstance(xs, jax.Array) else xs
    plan = resolve(
        task,
        f,
        params,
        xs,
        route=route,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
    )
    if plan.batch == 0:
        return _empty_result(task, f, params, xs, plan.key)
    if out is None:
        return _run(f, params, xs, key=plan.key)
    # eval_shape traces the program (~3 ms): once per function, route and shapes, not per call.
    layout_key = (fn_key(f), plan.key, shapes(params), shapes(xs))
    expected = _OUT_LAYOUTS.get(layout_key)
    if expected is None:
        expected = _layout(jax.eval_shape(lambda: batched_program(f, params, xs, plan.key)))
        if len(_OUT_LAYOUTS) >= _MAX_PLANS:
            _OUT_LAYOUTS.pop(next(iter(_OUT_LAYOUTS)))  # forget the oldest
        _OUT_LAYOUTS[layout_key] = expected
    if _layout(out) != expected:
        raise ValueError(f"out must have the result's layout {expected}, got {_layout(out)}")
    return _run_into(f, params, xs, out, key=plan.key)


# --- batched derivatives of f(params, x) ---------------------------------------------------


def batch_input_jacobian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    route: Route = "auto",
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
        route: ``"auto"`` (the closed form when ``f`` is jaxjac's MLP, else autodiff),
            ``"closed_form"`` or ``"autodiff"``.
        mode: ``"auto"``, or ``"fwd"`` / ``"rev"`` to force the accumulation mode (with
            ``route="auto"`` this asks for autodiff in that mode).
        chunk_size: process ``chunk_size`` examples at a time to bound peak memory (any positive
            size, dividing ``B`` or not); ``None`` vectorises the whole batch. Same results.
        max_memory_bytes: a budget for temporary memory; the resolver picks the largest chunk
            that fits (see :func:`explain`).
        out: a previous result of the same shape, whose memory is reused for this one (it is
            donated: do not use it afterwards). In a loop over a data set, pass the last
            result: writing into mapped memory is several times faster than into fresh pages.

    Returns:
        ``(B,) + f_out.shape + x.shape``.
    """
    return run("input_jacobian", **locals())  # every argument, by name


def batch_input_hessian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    route: Route = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> jax.Array:
    """Per-example input Hessians over a leading batch axis.

    Options as in :func:`batch_input_jacobian`; on the autodiff route the Hessian is
    forward-over-reverse, on the closed-form route the layer sum.

    Returns:
        ``(B,) + f_out.shape + x.shape + x.shape``.
    """
    return run("input_hessian", **locals())  # every argument, by name


def batch_weight_jacobian(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    route: Route = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    out: Any = None,
) -> Any:
    """Per-example weight Jacobians over a leading batch axis.

    Options as in :func:`batch_input_jacobian`.

    Returns:
        A pytree shaped like ``params`` with leaves ``(B,) + f_out.shape + leaf.shape``.
    """
    return run("weight_jacobian", **locals())  # every argument, by name


# --- one example, through the same resolver -------------------------------------------------


def _one(task: str, f: Fn, params: Any, x: Any, route: str, mode: str) -> Any:
    """One example's ``task``: the closed form for jaxjac's MLP on ``(n_in,)``, else autodiff."""
    check_choice("route", route, _ROUTE_OPTIONS)
    mlp = _mlp_params(task, f, params)[0] is not None and jnp.ndim(x) == 1
    if route == "closed_form" or (route == "auto" and mode == "auto" and mlp):
        x = _autodiff.differentiable_input(x)
        result = run(task, f, params, x[None], route=route, mode=mode)
        return jax.tree_util.tree_map(lambda a: a[0], result)
    autodiff = {
        "input_jacobian": derivatives.input_jacobian,
        "input_hessian": derivatives.input_hessian,
        "weight_jacobian": derivatives.weight_jacobian,
    }[task]
    return autodiff(f, params, x) if task == "input_hessian" else autodiff(f, params, x, mode=mode)


def input_jacobian(
    f: Fn, params: Any, x: ArrayLike, *, route: Route = "auto", mode: str = "auto"
) -> jax.Array:
    """Jacobian of ``f(params, x)`` with respect to ``x``, by the route the resolver picks.

    Args:
        f: ``f(params, x) -> array``; hashable, ideally the same object on every call.
        params: any pytree.
        x: one input of any shape.
        route: as in :func:`batch_input_jacobian` (jaxjac's MLP on ``(n_in,)`` takes the
            closed form).
        mode: ``"auto"``, ``"fwd"`` or ``"rev"``.

    Returns:
        ``f_out.shape + x.shape``.
    """
    return _one("input_jacobian", f, params, x, route, mode)


def input_hessian(f: Fn, params: Any, x: ArrayLike, *, route: Route = "auto") -> jax.Array:
    """Hessian of ``f(params, x)`` with respect to ``x``, for every output entry.

    Returns:
        ``f_out.shape + x.shape + x.shape`` (symmetric in the last two groups of axes).
    """
    return _one("input_hessian", f, params, x, route, "auto")


def weight_jacobian(
    f: Fn, params: Any, x: ArrayLike, *, route: Route = "auto", mode: str = "auto"
) -> Any:
    """Jacobian of ``f(params, x)`` with respect to the parameters.

    Args:
        f: ``f(params, x) -> array``.
        params: pytree of arrays.
        x: one input.
        route: as in :func:`batch_input_jacobian`.
        mode: ``"auto"`` (the closed form's outer products for jaxjac's MLP; on autodiff the
            cheaper mode by parameter count against output size, i.e. reverse mode for any
            network with more weights than outputs), or ``"fwd"`` / ``"rev"`` to force autodiff.

    Returns:
        A pytree shaped like ``params`` whose leaves have shape ``f_out.shape + leaf.shape``.
    """
    return _one("weight_jacobian", f, params, x, route, mode)


# --- batched operators of f(x) --------------------------------------------------------------


def batch_laplacian(
    f: Callable,
    xs: ArrayLike,
    *,
    route: Route = "auto",
    method: Literal["auto", "vmap", "loop"] = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """:func:`jaxjac.laplacian` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` for one example.
        xs: ``(B,) + x.shape``.
        route: ``"auto"``: for ``f = functools.partial(mlp_apply, params[, activation=…])``
            (jaxjac's MLP as a function of ``x``) on ``(B, n_in)`` the closed-form forward
            Laplacian, else autodiff; or ``"closed_form"`` / ``"autodiff"``.
        method: the autodiff route's ``"vmap"`` / ``"loop"`` over basis directions (as in
            :func:`jaxjac.laplacian`); with ``route="auto"`` a method other than ``"auto"``
            asks for autodiff.
        chunk_size: examples per vectorised chunk to bound peak memory (dividing ``B`` or not);
            ``None`` vectorises the whole batch. Same results.

    Returns:
        ``(B,) + f_out``.
    """
    xs = _autodiff.as_float(xs)
    return run("laplacian", f, None, xs, route=route, mode=method, chunk_size=chunk_size)


def batch_divergence(
    f: Callable,
    xs: ArrayLike,
    *,
    route: Route = "auto",
    method: Literal["auto", "vmap", "loop"] = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """:func:`jaxjac.divergence` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example.
        xs: ``(B,) + x.shape``.
        route: as in :func:`batch_laplacian` (jaxjac's MLP: the trace of the closed-form
            Jacobian).
        method: the autodiff route's ``"vmap"`` / ``"loop"`` (as in :func:`jaxjac.divergence`).
        chunk_size: as in :func:`batch_laplacian`.

    Returns:
        ``(B,)``.
    """
    xs = _square_batch(f, xs, "the divergence")
    return run("divergence", f, None, xs, route=route, mode=method, chunk_size=chunk_size)


def batch_slogdet_jacobian(
    f: Callable, xs: ArrayLike, *, route: Route = "auto", chunk_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """:func:`jaxjac.slogdet_jacobian` of every example along a leading batch axis.

    Args:
        f: ``f(x) -> array`` of ``x.shape`` for one example. For ``functools.partial(mlp_apply,
            params[, activation=…])`` with ``xs`` of shape ``(B, n)`` the closed-form Jacobian
            replaces autodiff (``route="auto"``).
        xs: ``(B,) + x.shape``.
        route: ``"auto"``, ``"closed_form"`` or ``"autodiff"``.
        chunk_size: as in :func:`batch_laplacian`.

    Returns:
        ``(sign, logabsdet)``, each ``(B,)``.
    """
    return run("slogdet", f, None, _square_batch(f, xs), route=route, chunk_size=chunk_size)


def _square_batch(f: Callable, xs: ArrayLike, what: str = "a Jacobian determinant") -> jax.Array:
    xs = _autodiff.as_float(xs)
    check_batched("xs", xs.shape)
    mlp = mlp_of_x(f)
    if mlp is not None and xs.ndim == 2:
        check_mlp_input(mlp[0], xs)  # the batch's width, named, before squareness
    _autodiff.check_square(f, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype), what)
    return xs


def batch_jacobian_det(
    f: Callable, xs: ArrayLike, *, route: Route = "auto", chunk_size: int | None = None
) -> jax.Array:
    """:func:`jaxjac.jacobian_det` of every example along a leading batch axis: ``(B,)``.

    Arguments as in :func:`batch_slogdet_jacobian`. Computed as ``sign · exp(log|det|)``, with
    the derivative of ``jnp.linalg.det`` (finite at singular points too).
    """
    return run("det", f, None, _square_batch(f, xs), route=route, chunk_size=chunk_size)


def batch_log_abs_det_jacobian(
    f: Callable, xs: ArrayLike, *, route: Route = "auto", chunk_size: int | None = None
) -> jax.Array:
    """:func:`jaxjac.log_abs_det_jacobian` of every example along a leading batch axis.

    Arguments as in :func:`batch_slogdet_jacobian`.

    Returns:
        ``(B,)``; ``-inf`` at a singular point.
    """
    return batch_slogdet_jacobian(f, xs, route=route, chunk_size=chunk_size)[1]


# --- reductions of every example's input Jacobian -------------------------------------------


def _jacobian_map(f, params, xs, mode, chunk_size, reduce):
    """``reduce(J)`` of every example's ``(f_out.size, x.size)`` Jacobian, on the resolved route."""
    xs = jnp.asarray(xs)
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    plan = resolve("input_jacobian", f, params, xs, mode=mode)
    key = plan.key._replace(chunk_size=None)
    n = math.prod(xs.shape[1:])

    def rows(block):
        jac = batched_program(f, params, block, key)  # (b,) + f_out + x.shape
        n_out = math.prod(jac.shape[1 : jac.ndim - (xs.ndim - 1)])
        return jax.vmap(reduce)(jac.reshape(block.shape[0], n_out, n))

    return map_chunks(rows, xs, chunk_size)


@jit_entry("mode", "chunk_size")
def batch_jacobian_gram(
    f: Callable, params: Any, xs: ArrayLike, *, mode: str = "auto", chunk_size: int | None = None
) -> jax.Array:
    """``JᵀJ`` of every example's input Jacobian (summed by ``reduce="sum"``: ``B·E[JᵀJ]``).

    Args:
        f: ``f(params, x) -> array``.
        params: pytree, shared by all examples.
        xs: ``(B,) + x.shape``.
        mode: as in :func:`batch_input_jacobian`.
        chunk_size: as in :func:`batch_input_jacobian`.

    Returns:
        ``(B, n, n)`` with ``n = x.size``, the Jacobian flattened to ``(f_out.size, n)``.
    """
    return _jacobian_map(f, params, xs, mode, chunk_size, lambda j: j.T @ j)


@jit_entry("mode", "chunk_size")
def batch_jacobian_abs_sq(
    f: Callable, params: Any, xs: ArrayLike, *, mode: str = "auto", chunk_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """``|J|`` and ``J²`` entrywise, the summands of per-(output, feature) sensitivities.

    Args:
        f: as in :func:`batch_jacobian_gram`.
        params: as in :func:`batch_jacobian_gram`.
        xs: as in :func:`batch_jacobian_gram`.
        mode: as in :func:`batch_jacobian_gram`.
        chunk_size: as in :func:`batch_jacobian_gram`.

    Returns:
        ``(abs, sq)``, each ``(B,) + f_out.shape + x.shape``.
    """
    xs = jnp.asarray(xs)
    out = jax.eval_shape(f, params, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    shape = (xs.shape[0], *out.shape, *xs.shape[1:])
    absolute, square = _jacobian_map(
        f, params, xs, mode, chunk_size, lambda j: (jnp.abs(j), jnp.square(j))
    )
    return absolute.reshape(shape), square.reshape(shape)


@jit_entry("mode", "chunk_size")
def batch_jacobian_norm(
    f: Callable, params: Any, xs: ArrayLike, *, mode: str = "auto", chunk_size: int | None = None
) -> jax.Array:
    """Frobenius norm ``‖J‖_F`` of every example's input Jacobian.

    Args:
        f: as in :func:`batch_jacobian_gram`.
        params: as in :func:`batch_jacobian_gram`.
        xs: as in :func:`batch_jacobian_gram`.
        mode: as in :func:`batch_jacobian_gram`.
        chunk_size: as in :func:`batch_jacobian_gram`.

    Returns:
        ``(B,)``; under :func:`jaxjac.sharded` it stays sharded per example.
    """
    return _jacobian_map(f, params, xs, mode, chunk_size, jnp.linalg.norm)
