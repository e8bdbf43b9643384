r"""Workloads, routes, float64 references, FLOP counts and memory estimates of the benchmarks.

**Networks.** tanh MLPs, last layer linear (jaxjac's default activation ``tansig`` is
``2/(1+exp(-2z)) - 1 = tanh z``; the torch peer uses ``torch.tanh``)::

    small  = [32, 256, 256, 256, 8]              142k parameters
    wide   = [128, 512, 512, 512, 512, 16]       862k parameters
    square = [64, 256, 256, 64]                  (log|det J| needs n_in = n_out)

Weights: ``jaxjac.mlp_init(PRNGKey(0), sizes, dtype=float64)`` cast to the workload dtype; inputs
``N(0, 1)`` from ``PRNGKey(1)``, cast likewise. The float64 reference is computed from the *cast*
weights and inputs (promoted back to float64), so it is the exact derivative of the very function
every route evaluates and the error measures only the route's rounding.

**Tasks** (``B`` examples; result layout, batch axis first):

* ``jacobian``: ``(B, n_out, n_in)``;  ``hessian``: ``(B, n_out, n_in, n_in)``;
* ``laplacian``: ``(B, n_out)``, ``Σ_i ∂²A_k/∂x_i²``;
* ``weight_jacobian``: per layer ``W: (B', n_out, out_l, in_l)``, ``b: (B', n_out, out_l)`` with
  ``B' = max(1, B // 8)`` examples (the output is ``n_out · P`` numbers *per example*: 1.1 M on the
  small net, 13.8 M on the wide one, so B = 256 would write 1.2 GB / 14 GB);
* ``per_example_grads`` of ``L(x, y) = ½ ‖A(x) - y‖²``: per layer ``(B, out_l, in_l)`` and
  ``(B, out_l)``;
* ``logdet``: ``log|det ∂A/∂x|`` of the square net, ``(B,)``;
* ``sensitivity``: ``E|∂A_k/∂x_i|`` and ``E[(∂A_k/∂x_i)²]`` over ``N = 10⁵`` samples,
  ``(n_out, n_in)`` each, streamed in chunks of 4096.

**FLOP counts** (per example, multiply-add = 2 FLOPs, elementwise work ignored; ``s_0 … s_n`` the
layer sizes, ``n`` layers, ``M(a, b) = Σ_{l=a}^{b} s_l s_{l-1}``, ``H = Σ_{l=1}^{n-1} s_l`` hidden
units). Each is the cheapest exact algorithm we know, so ``flops / matmul peak`` is a floor:

* forward:          ``F = 2 M(1, n)``
* Jacobian:         ``F + 2 min(n_out M(1, n-1), n_in M(2, n))`` (the cheaper accumulation side;
  the first/last weight matrix is the seed, free);
* Hessian:          ``F + 2 (n_in + n_out) M(2, n-1) + n_out n_in (n_in + 1) H``: forward
  pre-activation Jacobians ``Jz_l``, backward adjoints ``δ_l``, and the layer sum
  ``Σ_l Jz_lᵀ diag(σ'' ⊙ δ_{l,k}) Jz_l`` over the upper triangle only (``n_in(n_in+1)/2``
  entries, ``s_l`` multiply-adds each, for every output);
* Laplacian:        ``F + 2 n_in M(2, n-1) + 2 n_in H + 2 M(2, n)``: forward gradients ``∇z_l``,
  their squared row norms, and one forward-sized pass carrying the Laplacian;
* weight Jacobian:  ``F + 2 n_out M(2, n-1) + n_out M(1, n)``: backward rows ``g_l`` and one
  multiply per written entry of the outer products; its output is ``n_out P`` numbers;
* per-example grads: ``F + 2 M(2, n) + M(1, n)``: one backward row, one multiply per entry;
* log|det J|:       Jacobian + ``(2/3) n_in³`` (LU);
* sensitivity:      ``N`` Jacobians.

**Memory estimates** (``estimate_bytes``) decide which routes run under ``--mem-budget-gb``; they
are deliberately rough (calibrated on measured peak RSS: jax.hessian peaks at 2.4 GiB on the
wide net at B = 256 float32, torch.func at 1.8x that) and every skip is reported with its
estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj
from jaxjac import _mlp_cpu

NETS: dict[str, list[int]] = {
    "small": [32, 256, 256, 256, 8],
    "wide": [128, 512, 512, 512, 512, 16],
    "square": [64, 256, 256, 64],
}
TASKS = (
    "jacobian",
    "hessian",
    "laplacian",
    "weight_jacobian",
    "per_example_grads",
    "logdet",
    "sensitivity",
)
SENSITIVITY_SAMPLES = 100_000
SENSITIVITY_CHUNK = 4096
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}

net = jj.mlp_apply  # the function every JAX route differentiates: f(params, x), tansig = tanh


def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example squared error ``½ ‖A(x) - y‖²``."""
    r = net(params, x) - y
    return 0.5 * jnp.sum(r * r)


def loss_xy(params: Any, xy: jax.Array) -> jax.Array:
    """``loss`` with input and target concatenated, ``xy = [x, y]``: one array per example."""
    n_in = params[0]["W"].shape[1]
    return loss(params, xy[:n_in], xy[n_in:])


# --- workloads ------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    net: str
    sizes: list[int]
    batch: int  # rows actually differentiated (B' for the weight Jacobian, N for sensitivity)
    dtype: str
    params: list[dict[str, jax.Array]]
    xs: jax.Array  # (batch, n_in)
    ys: jax.Array  # (batch, n_out): regression targets of the per-example loss

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def n_params(self) -> int:
        return sum(a * b + a for a, b in itertools.pairwise(self.sizes[::-1]))

    def params64(self) -> list[dict[str, jax.Array]]:
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), self.params)

    def numpy_params(self) -> list[np.ndarray]:
        """Flat ``[W_1, b_1, W_2, b_2, …]`` numpy copies, in the workload dtype (for torch)."""
        return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(self.params)]


def task_batch(task: str, batch: int) -> int:
    if task == "weight_jacobian":
        return max(1, batch // 8)
    if task == "sensitivity":
        return SENSITIVITY_SAMPLES
    return batch


def make_workload(net_name: str, batch: int, dtype: str) -> Workload:
    sizes = NETS[net_name]
    params = jj.mlp_init(jax.random.PRNGKey(0), sizes, dtype=jnp.float64)
    params = jax.tree_util.tree_map(lambda a: a.astype(DTYPES[dtype]), params)
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    xs = jax.random.normal(kx, (batch, sizes[0]), jnp.float64).astype(DTYPES[dtype])
    ys = jax.random.normal(ky, (batch, sizes[-1]), jnp.float64).astype(DTYPES[dtype])
    return Workload(net_name, sizes, batch, dtype, params, xs, ys)


# --- FLOP counts (see the module docstring) --------------------------------------------------


def _m(sizes: list[int], lo: int, hi: int) -> int:
    """``M(lo, hi) = Σ_{l=lo}^{hi} s_l s_{l-1}`` over 1-based layers."""
    return sum(sizes[i] * sizes[i - 1] for i in range(lo, hi + 1))


def flops_per_example(task: str, sizes: list[int]) -> float:
    n, n_in, n_out = len(sizes) - 1, sizes[0], sizes[-1]
    hidden = sum(sizes[1:-1])
    fwd = 2 * _m(sizes, 1, n)
    jac = fwd + 2 * min(n_out * _m(sizes, 1, n - 1), n_in * _m(sizes, 2, n))
    if task in ("jacobian", "sensitivity"):
        return jac
    elif task == "hessian":
        return fwd + 2 * (n_in + n_out) * _m(sizes, 2, n - 1) + n_out * n_in * (n_in + 1) * hidden
    if task == "laplacian":
        return fwd + 2 * n_in * _m(sizes, 2, n - 1) + 2 * n_in * hidden + 2 * _m(sizes, 2, n)
    if task == "weight_jacobian":
        return fwd + 2 * n_out * _m(sizes, 2, n - 1) + n_out * _m(sizes, 1, n)
    if task == "per_example_grads":
        return fwd + 2 * _m(sizes, 2, n) + _m(sizes, 1, n)
    if task == "logdet":
        return jac + 2 * n_in**3 / 3
    raise ValueError(task)


def output_numbers_per_example(task: str, sizes: list[int]) -> int:
    n_in, n_out = sizes[0], sizes[-1]
    n_params = sum(a * b + a for a, b in itertools.pairwise(sizes[::-1]))
    return {
        "jacobian": n_out * n_in,
        "hessian": n_out * n_in * n_in,
        "laplacian": n_out,
        "weight_jacobian": n_out * n_params,
        "per_example_grads": n_params,
        "logdet": 1,
        "sensitivity": 0,  # streamed: the result is (2, n_out, n_in) whatever N is
    }[task]


def output_bytes(task: str, wl: Workload, itemsize: int | None = None) -> int:
    itemsize = wl.itemsize if itemsize is None else itemsize
    return wl.batch * output_numbers_per_example(task, wl.sizes) * itemsize


# --- float64 references ----------------------------------------------------------------------


def _chunked(fn: Callable[[jax.Array, jax.Array], list], xs, ys, rows: int) -> list[np.ndarray]:
    """Run ``fn`` on row blocks of ``rows`` and concatenate each output leaf on the host."""
    parts = [fn(xs[i : i + rows], ys[i : i + rows]) for i in range(0, xs.shape[0], rows)]
    return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0]))]


def _leaves(tree: Any) -> list:
    return jax.tree_util.tree_leaves(tree)


def reference(task: str, wl: Workload) -> tuple[list[np.ndarray], float]:
    """The float64 result of ``task`` as a list of leaves, and its self-check error.

    The reference is the closed form in float64 where one exists (fast, chunked) and plain JAX
    autodiff in float64 otherwise; the closed-form references are themselves checked against
    float64 autodiff on the first 4 examples (the returned error, relative to the largest entry).
    """
    p = wl.params64()
    xs = wl.xs.astype(jnp.float64)
    ys = wl.ys.astype(jnp.float64)
    per_row = max(1, output_numbers_per_example(task, wl.sizes) * 8)
    rows = int(max(1, min(wl.batch, 2**27 // per_row)))
    cf = jj.closed_form
    head, yhead = xs[:4], ys[:4]
    vm = functools.partial(jax.vmap, in_axes=(None, 0))

    if task == "sensitivity":  # streamed: sums of |J| and J² over chunks, never all of J
        sums = [np.zeros((wl.n_out, wl.n_in)), np.zeros((wl.n_out, wl.n_in))]
        for i in range(0, wl.batch, SENSITIVITY_CHUNK):
            jac = np.asarray(cf.mlp_jacobian(p, xs[i : i + SENSITIVITY_CHUNK]))
            sums[0] += np.abs(jac).sum(axis=0)
            sums[1] += (jac * jac).sum(axis=0)
        check = [vm(jax.jacrev(net, argnums=1))(p, head)]
        return [s / wl.batch for s in sums], rel_error([cf.mlp_jacobian(p, head)], check)
    if task == "jacobian":
        ref = _chunked(lambda x, y: [cf.mlp_jacobian(p, x)], xs, ys, rows)
        check = [vm(jax.jacrev(net, argnums=1))(p, head)]
    elif task == "hessian":
        ref = _chunked(lambda x, y: [cf.mlp_hessian(p, x)], xs, ys, rows)
        check = [vm(jax.hessian(net, argnums=1))(p, head)]
    elif task == "laplacian":
        ref = _chunked(lambda x, y: [cf.mlp_laplacian(p, x)], xs, ys, rows)
        hess = vm(jax.hessian(net, argnums=1))(p, head)
        check = [jnp.trace(hess, axis1=-2, axis2=-1)]
    elif task == "weight_jacobian":
        ref = _chunked(lambda x, y: _leaves(cf.mlp_weight_jacobian(p, x)), xs, ys, rows)
        check = _leaves(vm(jax.jacrev(net, argnums=0))(p, head))
    elif task == "per_example_grads":
        grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
        ref = _chunked(lambda x, y: _leaves(grads(p, x, y)), xs, ys, rows)
        # Independent check: contract the closed-form weight Jacobian with the residual.
        wjac = cf.mlp_weight_jacobian(p, head)
        res = net(p, head) - yhead
        check = [jnp.einsum("bk,bk...->b...", res, leaf) for leaf in _leaves(wjac)]
    elif task == "logdet":
        ref = _chunked(lambda x, y: [np.linalg.slogdet(cf.mlp_jacobian(p, x))[1]], xs, ys, rows)
        check = [jnp.linalg.slogdet(vm(jax.jacfwd(net, argnums=1))(p, head))[1]]
    else:
        raise ValueError(task)
    return ref, rel_error([leaf[:4] for leaf in ref], check)


def rel_error(got: list, ref: list) -> float:
    """``max_leaf max|got - ref| / max|ref|``, in float64 on the host (NaN counts as wrong)."""
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        g = np.asarray(g)
        r = np.asarray(r)
        if g.shape != r.shape:
            return math.inf
        scale = float(np.max(np.abs(r))) if r.size else 1.0
        diff = np.max(np.abs(g.astype(np.float64) - r)) if r.size else 0.0
        worst = max(worst, float(diff) / max(scale, np.finfo(np.float64).tiny))
        if not np.isfinite(diff):
            return math.inf
    return worst


def tolerance(dtype: str) -> float:
    """``4 sqrt(eps)`` of the dtype, relative to the largest reference entry.

    float32: 1.4e-3, loose enough for rounding accumulated over ~10³-term sums and a few layers;
    float64: 6e-8, which a route that silently computes in float32 exceeds (its errors are
    ~1e-6), while formula errors are O(1) in either dtype.
    """
    return 4 * math.sqrt(float(np.finfo(dtype).eps))


# --- routes ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """One way to compute a task. ``make(wl)`` returns a zero-argument callable (the timed call).

    ``family``: ``jaxjac`` (public helper), ``closed`` (jaxjac.closed_form), ``naive`` (plain JAX
    composition), ``folx``, ``torch``. ``lib`` decides blocking and the library block it runs in.
    ``mem(wl)``: estimated peak bytes of one call, for skipping infeasible combinations.
    """

    name: str
    family: str
    make: Callable[[Workload], Callable[[], Any]]
    mem: Callable[[Workload], float]
    leaves: Callable[[Any], list] = _leaves

    @property
    def lib(self) -> str:
        return "torch" if self.family == "torch" else "jax"


def _hidden(wl: Workload) -> int:
    return sum(wl.sizes[1:-1])


def _mem_out(task: str, factor: float, extra: Callable[[Workload], float] | None = None):
    def mem(wl: Workload) -> float:
        more = extra(wl) if extra else 0.0
        return factor * output_bytes(task, wl) + more

    return mem


def _mem_second_order(factor: float):
    """Forward-over-reverse holds ``(B, n_in, n_out, Σh)`` tangents of the reverse pass."""

    def mem(wl: Workload) -> float:
        return factor * 0.6 * wl.batch * wl.n_in * wl.n_out * _hidden(wl) * wl.itemsize

    return mem


def _mem_taylor(factor: float, side: str = "in"):
    """Tangent-carrying routes hold ``factor`` layers of ``(B, n_side, max h)`` tangents, plus
    the forward pass's activations ``(B, Σh)`` twice (values and derivatives)."""

    def mem(wl: Workload) -> float:
        width = wl.n_in if side == "in" else wl.n_out
        tangents = factor * wl.batch * width * max(wl.sizes[1:-1], default=1)
        return (tangents + 2 * wl.batch * _hidden(wl)) * wl.itemsize

    return mem


# jaxjac routes. Options the planner may add later (max_memory_bytes=) are left at defaults.


def _jj_jacobian(wl):
    return lambda: jj.batch_input_jacobian(net, wl.params, wl.xs)


def _jj_hessian(wl):
    return lambda: jj.batch_input_hessian(net, wl.params, wl.xs)


def _jj_hessian_into(wl):
    return lambda out: jj.batch_input_hessian(net, wl.params, wl.xs, out=out)


def _jj_laplacian(wl):
    return lambda: jj.batch_laplacian(functools.partial(net, wl.params), wl.xs)


def _jj_weight_jacobian(wl):
    return lambda: jj.batch_weight_jacobian(net, wl.params, wl.xs)


def _jj_grads(wl):
    xys = jnp.concatenate([wl.xs, wl.ys], axis=1)
    return lambda: jj.batch_weight_jacobian(loss_xy, wl.params, xys)


def _into(make_call):
    """A route that passes its previous result as ``out=``: jit donation reuses the memory.

    The first call allocates; later calls write into the last result's buffers (donated, so
    the runner must not hold on to an earlier result: it only checks the first one).
    """

    def make(wl):
        state = {"out": None}
        call = make_call(wl)

        def run():
            state["out"] = call(state["out"])
            return state["out"]

        return run

    return make


def _jj_weight_jacobian_into(wl):
    return lambda out: jj.batch_weight_jacobian(net, wl.params, wl.xs, out=out)


def _jj_grads_into(wl):
    xys = jnp.concatenate([wl.xs, wl.ys], axis=1)
    return lambda out: jj.batch_weight_jacobian(loss_xy, wl.params, xys, out=out)


def _jj_logdet(wl):
    return lambda: jj.batch_log_abs_det_jacobian(functools.partial(net, wl.params), wl.xs)


def sensitivity_fn() -> Callable | None:
    """``jaxjac.sensitivity`` (the function) if this checkout has it, else ``None``."""
    obj = getattr(jj, "sensitivity", None)
    if obj is None:
        try:
            obj = importlib.import_module("jaxjac.sensitivity")
        except ImportError:
            return None
    if not callable(obj):  # the module: take the function of the same name
        obj = getattr(obj, "sensitivity", None)
    return obj if callable(obj) else None


def _jj_sensitivity(wl):
    fn = sensitivity_fn()

    def run():
        report = fn(net, wl.params, wl.xs, chunk_size=SENSITIVITY_CHUNK)
        return [np.asarray(report.mean_abs), np.asarray(report.dgsm)]

    return run


# closed form


def _cf(name):
    def make(wl):
        fn = getattr(jj.closed_form, name)
        return lambda: fn(wl.params, wl.xs)

    return make


@jax.jit
def _cf_hessian_xla(params, xs):
    """The closed-form Hessian with its layer sum as XLA einsums: what the fused kernel replaced."""
    return _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)


@jax.jit
def _cf_logdet(params, xs):
    return jnp.linalg.slogdet(jj.closed_form.mlp_jacobian(params, xs))[1]


# naive JAX compositions, each compiled once at import


_in_batch = functools.partial(jax.vmap, in_axes=(None, 0))
naive_jacrev = jax.jit(_in_batch(jax.jacrev(net, argnums=1)))
naive_jacfwd = jax.jit(_in_batch(jax.jacfwd(net, argnums=1)))
naive_hessian = jax.jit(_in_batch(jax.hessian(net, argnums=1)))
naive_weight_jacrev = jax.jit(_in_batch(jax.jacrev(net, argnums=0)))
naive_grad = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))


@jax.jit
def naive_trace_hessian(params, xs):
    return jnp.trace(_in_batch(jax.hessian(net, argnums=1))(params, xs), axis1=-2, axis2=-1)


@jax.jit
def naive_logdet_jacfwd(params, xs):
    return jnp.linalg.slogdet(_in_batch(jax.jacfwd(net, argnums=1))(params, xs))[1]


@jax.jit
def naive_logdet_jacrev(params, xs):
    return jnp.linalg.slogdet(_in_batch(jax.jacrev(net, argnums=1))(params, xs))[1]


def _call(fn, *names):
    def make(wl):
        return lambda: fn(*(getattr(wl, n) for n in names))

    return make


def _naive_sensitivity(wl):
    """The obvious streaming loop: jit(vmap(jacrev)) per chunk, float64 sums on the host."""

    def run():
        abs_sum = np.zeros((wl.n_out, wl.n_in))
        sq_sum = np.zeros((wl.n_out, wl.n_in))
        for i in range(0, wl.batch, SENSITIVITY_CHUNK):
            jac = np.asarray(naive_jacrev(wl.params, wl.xs[i : i + SENSITIVITY_CHUNK]))
            jac = jac.astype(np.float64)
            abs_sum += np.abs(jac).sum(axis=0)
            sq_sum += (jac * jac).sum(axis=0)
        return [abs_sum / wl.batch, sq_sum / wl.batch]

    return run


# folx


def folx_available() -> bool:
    try:
        importlib.import_module("folx")
    except ImportError:
        return False
    return True


@functools.cache
def _folx_laplacian():
    import folx

    def one(params, x):
        return folx.forward_laplacian(functools.partial(net, params))(x).laplacian

    return jax.jit(_in_batch(one))


def _folx(wl):
    fn = _folx_laplacian()
    return lambda: fn(wl.params, wl.xs)


# torch.func peers: the same network from numpy copies of the same weights, same dtype


def torch_available() -> bool:
    try:
        importlib.import_module("torch")
    except ImportError:
        return False
    return True


def _torch_net(flat: list, x):
    import torch

    for i in range(0, len(flat) - 2, 2):
        x = torch.tanh(x @ flat[i].T + flat[i + 1])
    return x @ flat[-2].T + flat[-1]


def _torch_loss(flat: list, x, y):
    r = _torch_net(flat, x) - y
    return 0.5 * (r * r).sum()


def _torch_inputs(wl: Workload):
    import torch

    flat = [torch.from_numpy(a) for a in wl.numpy_params()]
    return flat, torch.from_numpy(np.array(wl.xs)), torch.from_numpy(np.array(wl.ys))


def _torch(kind: str):
    def make(wl):
        from torch import func, linalg

        flat, xs, ys = _torch_inputs(wl)
        if kind == "jacrev":
            fn = func.vmap(func.jacrev(_torch_net, argnums=1), in_dims=(None, 0))
        elif kind == "jacfwd":
            fn = func.vmap(func.jacfwd(_torch_net, argnums=1), in_dims=(None, 0))
        elif kind == "hessian":
            fn = func.vmap(func.hessian(_torch_net, argnums=1), in_dims=(None, 0))
        elif kind == "trace_hessian":
            hess = func.vmap(func.hessian(_torch_net, argnums=1), in_dims=(None, 0))
            return lambda: hess(flat, xs).diagonal(dim1=-2, dim2=-1).sum(-1)
        elif kind == "weight_jacrev":
            fn = func.vmap(func.jacrev(_torch_net, argnums=0), in_dims=(None, 0))
        elif kind == "grad":
            grad = func.vmap(func.grad(_torch_loss, argnums=0), in_dims=(None, 0, 0))
            return lambda: grad(flat, xs, ys)
        elif kind == "logdet":
            jac = func.vmap(func.jacfwd(_torch_net, argnums=1), in_dims=(None, 0))
            return lambda: linalg.slogdet(jac(flat, xs)).logabsdet
        else:
            raise ValueError(kind)
        return lambda: fn(flat, xs)

    return make


def _torch_leaves(out: Any) -> list:
    if isinstance(out, (list, tuple)):
        return [o.detach().numpy() for o in out]
    return [out.detach().numpy()]


def _sens_leaves(out: Any) -> list:
    return list(out)


def routes(task: str) -> list[Route]:
    """Every route of ``task``, JAX ones first; availability is decided by the runner."""
    big = _mem_second_order
    table: dict[str, list[Route]] = {
        "jacobian": [
            Route("jaxjac auto", "jaxjac", _jj_jacobian, _mem_taylor(2)),
            Route("closed form reference", "closed", _cf("mlp_jacobian"), _mem_taylor(1)),
            Route(
                "vmap(jacrev)", "naive", _call(naive_jacrev, "params", "xs"), _mem_taylor(2, "out")
            ),
            Route("vmap(jacfwd)", "naive", _call(naive_jacfwd, "params", "xs"), _mem_taylor(2)),
            Route("torch vmap(jacrev)", "torch", _torch("jacrev"), _mem_taylor(3), _torch_leaves),
            Route("torch vmap(jacfwd)", "torch", _torch("jacfwd"), _mem_taylor(3), _torch_leaves),
        ],
        "hessian": [
            Route("jaxjac auto", "jaxjac", _jj_hessian, big(1)),
            Route("jaxjac auto, out=", "jaxjac", _into(_jj_hessian_into), big(1)),
            Route("closed form reference", "closed", _cf("mlp_hessian"), _mem_out("hessian", 4)),
            Route(
                "closed form, XLA contraction",
                "closed",
                _call(_cf_hessian_xla, "params", "xs"),
                _mem_out("hessian", 4),
            ),
            Route("vmap(hessian)", "naive", _call(naive_hessian, "params", "xs"), big(1)),
            Route("torch vmap(hessian)", "torch", _torch("hessian"), big(1.8), _torch_leaves),
        ],
        "laplacian": [
            Route("jaxjac auto", "jaxjac", _jj_laplacian, _mem_taylor(4)),
            Route("closed form reference", "closed", _cf("mlp_laplacian"), _mem_taylor(2)),
            Route(
                "trace(vmap(hessian))",
                "naive",
                _call(naive_trace_hessian, "params", "xs"),
                big(1),
            ),
            Route("folx forward_laplacian", "folx", _folx, _mem_taylor(3)),
            Route(
                "torch trace(vmap(hessian))",
                "torch",
                _torch("trace_hessian"),
                big(1.8),
                _torch_leaves,
            ),
        ],
        "weight_jacobian": [
            Route("jaxjac auto", "jaxjac", _jj_weight_jacobian, _mem_out("weight_jacobian", 3)),
            Route(
                "jaxjac auto, out=",
                "jaxjac",
                _into(_jj_weight_jacobian_into),
                _mem_out("weight_jacobian", 3),
            ),
            Route(
                "closed form reference",
                "closed",
                _cf("mlp_weight_jacobian"),
                _mem_out("weight_jacobian", 2),
            ),
            Route(
                "vmap(jacrev wrt params)",
                "naive",
                _call(naive_weight_jacrev, "params", "xs"),
                _mem_out("weight_jacobian", 3),
            ),
            Route(
                "torch vmap(jacrev wrt params)",
                "torch",
                _torch("weight_jacrev"),
                _mem_out("weight_jacobian", 4),
                _torch_leaves,
            ),
        ],
        "per_example_grads": [
            Route(
                "jaxjac weight_jacobian(loss)",
                "jaxjac",
                _jj_grads,
                _mem_out("per_example_grads", 3),
            ),
            Route(
                "jaxjac weight_jacobian(loss), out=",
                "jaxjac",
                _into(_jj_grads_into),
                _mem_out("per_example_grads", 3),
            ),
            Route(
                "vmap(grad)",
                "naive",
                _call(naive_grad, "params", "xs", "ys"),
                _mem_out("per_example_grads", 3),
            ),
            Route(
                "torch vmap(grad)",
                "torch",
                _torch("grad"),
                _mem_out("per_example_grads", 4),
                _torch_leaves,
            ),
        ],
        "logdet": [
            Route("jaxjac auto", "jaxjac", _jj_logdet, _mem_taylor(2)),
            Route(
                "closed form reference + slogdet",
                "closed",
                _call(_cf_logdet, "params", "xs"),
                _mem_taylor(1),
            ),
            Route(
                "slogdet(vmap(jacfwd))",
                "naive",
                _call(naive_logdet_jacfwd, "params", "xs"),
                _mem_taylor(2),
            ),
            Route(
                "slogdet(vmap(jacrev))",
                "naive",
                _call(naive_logdet_jacrev, "params", "xs"),
                _mem_taylor(2),
            ),
            Route(
                "torch slogdet(vmap(jacfwd))",
                "torch",
                _torch("logdet"),
                _mem_taylor(3),
                _torch_leaves,
            ),
        ],
        "sensitivity": [
            Route("jaxjac.sensitivity", "jaxjac", _jj_sensitivity, lambda wl: 0.0, _sens_leaves),
            Route(
                "chunked jit(vmap(jacrev))",
                "naive",
                _naive_sensitivity,
                lambda wl: 0.0,
                _sens_leaves,
            ),
        ],
    }
    return table[task]


def route_unavailable(route: Route) -> str | None:
    """Why ``route`` cannot run in this environment, or ``None``."""
    if route.family == "torch" and not torch_available():
        return "torch not installed (pip install -e '.[bench]')"
    if route.family == "folx" and not folx_available():
        return "folx not installed (pip install -e '.[bench]')"
    if route.name == "jaxjac.sensitivity" and sensitivity_fn() is None:
        return "not available yet (no jaxjac.sensitivity in this checkout)"
    return None
