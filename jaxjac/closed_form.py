r"""Closed-form derivatives of MLPs, layer by layer: a cross-check and a fast path.

Notation, for ``A = W_n σ(W_{n-1} … σ(W_1 x + b_1) … + b_{n-1}) + b_n``::

    a_0 = x,   z_l = W_l a_{l-1} + b_l,   a_l = σ(z_l)   (l = 1 … n-1),   A = W_n a_{n-1} + b_n.

**Jacobian.** By the chain rule ``J = W_n diag(σ'(z_{n-1})) W_{n-1} … diag(σ'(z_1)) W_1``.
The product is accumulated from the output side (``n_out`` rows carried through every layer)
or from the input side (``n_in`` columns), whichever costs fewer multiply-adds.

**Hessian.** Let ``Jz_l = ∂z_l/∂x = W_l diag(σ'(z_{l-1})) Jz_{l-1}`` (``Jz_1 = W_1``) be the
pre-activation Jacobians and ``δ_{l,k} = ∂A_k/∂a_l`` the output adjoints
(``δ_{n-1,k} = W_n[k]``, ``δ_{l-1,k} = (δ_{l,k} ⊙ σ'(z_l)) W_l``). Every ``z_l`` is affine in
``a_{l-1}``, so curvature enters only through the ``σ''`` of each hidden unit:

    ∂²A_k/∂x∂xᵀ = Σ_{l=1}^{n-1} Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l.

(Differentiate ``∂A_k/∂x = Σ_j δ_{l,k,j} σ'(z_{l,j}) ∂z_{l,j}/∂x`` once more: the terms where
the derivative hits ``σ'(z_{l,j})`` give ``σ''(z_{l,j}) ∇z_{l,j} ∇z_{l,j}ᵀ`` for every layer.)

**Weight Jacobian.** With ``g_{l,k} = ∂A_k/∂z_l`` (``g_n = I``,
``g_{l,k} = (g_{l+1,k} W_{l+1}) ⊙ σ'(z_l)``): ``∂A_k/∂W_l = g_{l,k} a_{l-1}ᵀ`` (an outer
product) and ``∂A_k/∂b_l = g_{l,k}``.

**Laplacian.** Forward propagation of (value, gradient, Laplacian):
``∇z = W ∇a``, ``Δz = W Δa``; ``∇a = σ'(z) ∇z``, ``Δa = σ''(z) |∇z|² + σ'(z) Δz``.

Every function takes ``x`` of shape ``(n_in,)`` or ``(B, n_in)`` and returns the same layouts as
the autodiff helpers in :mod:`jaxjac.derivatives`, with the batch axis first when present.
Every public function is jit-compiled once per (activation, options, shapes).
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxjac import _hessian_kernel
from jaxjac._chunks import for_each_chunk, map_chunks
from jaxjac.activations import Activation, get_activation
from jaxjac.nets import MLPParams, check_mlp_input

__all__ = [
    "jacobian_cost",
    "mlp_hessian",
    "mlp_jacobian",
    "mlp_laplacian",
    "mlp_weight_jacobian",
]


class _Forward(NamedTuple):
    """Per-layer quantities of a batched forward pass (hidden layers l = 1 … n-1)."""

    acts: list[jax.Array]  # a_0 … a_{n-1}, each (B, h_l)
    d1: list[jax.Array]  # σ'(z_l), each (B, h_l)
    d2: list[jax.Array]  # σ''(z_l), each (B, h_l)
    out: jax.Array  # (B, n_out)


def _forward(params: MLPParams, x: jax.Array, act: Activation, *, second: bool) -> _Forward:
    acts, d1, d2 = [x], [], []
    a = x
    for layer in params[:-1]:
        z = a @ layer["W"].T + layer["b"]
        a = act.f(z)
        acts.append(a)
        d1.append(act.df(z))
        if second:
            d2.append(act.d2f(z))
    out = a @ params[-1]["W"].T + params[-1]["b"]
    return _Forward(acts, d1, d2, out)


def _promoted(params: MLPParams, x: jax.Array) -> MLPParams:
    """``params`` cast to the dtype of the result.

    Float32 weights with float64 inputs (Flax's and ``mlp_init``'s default with x64 on) would
    otherwise square float32 values in float32.
    """
    dtype = jnp.result_type(x, *jax.tree_util.tree_leaves(params))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def _batched(fn):
    """Accept ``(n_in,)`` or ``(B, n_in)``: run ``fn`` on ``(B, n_in)``, squeeze if unbatched."""

    @functools.wraps(fn)
    def wrapper(params, x, activation="tansig", **kwargs):
        _, shape = check_mlp_input(params, x)
        x = jnp.asarray(x)
        out = fn(params, jnp.atleast_2d(x), get_activation(activation), **kwargs)
        if len(shape) == 1:
            out = jax.tree_util.tree_map(lambda leaf: leaf[0], out)
        return out

    return wrapper


def jacobian_cost(sizes: list[int]) -> dict[str, int]:
    """Multiply-adds per example of the two accumulation orders of the MLP Jacobian.

    Args:
        sizes: ``[n_in, h_1, …, n_out]``.

    Returns:
        ``{"fwd": …, "rev": …}``: from the input side ``n_in Σ_{l≥2} h_l h_{l-1}``, from the
        output side ``n_out Σ_{l<n} h_l h_{l-1}``.
    """
    pairs = [a * b for a, b in itertools.pairwise(sizes)]
    return {"fwd": sizes[0] * sum(pairs[1:]), "rev": sizes[-1] * sum(pairs[:-1])}


def _mm(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` over the last axis of ``a``, as one 2-D GEMM.

    XLA lowers a broadcast ``(B, m, h) @ (h, o)`` to a batched dot that runs about 1.7x slower
    on CPU than the same product with the leading axes flattened into one tall matrix.
    """
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(*a.shape[:-1], w.shape[-1])


def _input_side(params, d1):
    """Transposed pre-activation Jacobians ``Jz_lᵀ = ∂z_l/∂x ᵀ`` for every hidden layer.

    Layout ``(B, n_in, h_l)``: the ``n_in`` input directions are rows, so each layer is one tall
    GEMM ``(B·n_in, h_{l-1}) @ W_lᵀ``. ``Jz_1ᵀ = W_1ᵀ`` is the same for every example and is
    returned unbatched, ``(n_in, h_1)``.
    """
    jts = [params[0]["W"].T]
    for layer, s in zip(params[1:-1], d1[:-1], strict=True):
        jts.append(_mm(jts[-1] * s[:, None, :], layer["W"].T))
    return jts


def _unit_side(params, d1):
    """``G_l[i, b] = ∂z_{l,i}/∂x`` of example ``b`` for the deep layers l ≥ 2: ``(h_l, B, n_in)``.

    Each layer is one GEMM ``W_l (h_l, h_{l-1}) @ (h_{l-1}, B·n_in)``, the batch in its columns.
    """
    g = params[0]["W"][:, None, :] * d1[0].T[:, :, None]  # σ'(z_1) ⊙ W_1: (h_1, B, n_in)
    gs = []
    for layer, s in itertools.zip_longest(params[1:-1], d1[1:-1]):
        g = _mm_left(layer["W"], g)
        gs.append(g)
        if s is not None:
            g = g * s.T[:, :, None]
    return gs


def _mm_left(w, g):
    """``w @ g`` over the first axis of ``g``: ``(o, h) @ (h, …) -> (o, …)``, one GEMM."""
    return (w @ g.reshape(g.shape[0], -1)).reshape(w.shape[0], *g.shape[1:])


# The layer-by-layer Jacobian runs in steps of rows whose carried (rows, n_out or n_in, h) block
# is near _JACOBIAN_STEP_BYTES, in cache between the GEMM that writes it and the one that reads
# it, once the whole batch's block exceeds _JACOBIAN_WHOLE_BYTES. Measured at B = 4096 on a
# 2-core Xeon (2 MiB L2 a core): 1.56x faster on [32, 256, 256, 256, 8] (steps of 512 rows),
# 1.28x on [128, 512, 512, 512, 512, 16] (128 rows); steps of 2-8 MiB were all within 5 % of
# the best; at B = 256 (2 and 8 MiB blocks) one pass is as fast.
_JACOBIAN_STEP_BYTES = 4 * 2**20
_JACOBIAN_WHOLE_BYTES = 8 * 2**20


def _jacobian_side(params, mode: str) -> str:
    if mode == "auto":
        sizes = [params[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in params]
        cost = jacobian_cost(sizes)
        return "fwd" if cost["fwd"] < cost["rev"] else "rev"
    if mode not in ("fwd", "rev"):
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    return mode


def _jacobian_step_rows(params, batch: int, itemsize: int, mode: str = "auto") -> int | None:
    """Rows per step of the closed-form Jacobian of ``batch`` rows, or ``None`` for one pass."""
    mode = _jacobian_side(params, mode)
    width = params[0]["W"].shape[1] if mode == "fwd" else params[-1]["W"].shape[0]
    per_row = width * max(layer["W"].shape[0] for layer in params) * itemsize
    rows = max(8, _JACOBIAN_STEP_BYTES // per_row)
    return rows if batch * per_row > _JACOBIAN_WHOLE_BYTES and rows < batch else None


def _value_and_jacobian(params, x, act, mode="auto"):
    """``(A(x), J(x))``: ``(B, n_out)`` and ``(B, n_out, n_in)``, in cache-sized row steps."""
    mode = _jacobian_side(params, mode)
    rows = _jacobian_step_rows(params, x.shape[0], x.dtype.itemsize, mode)
    return map_chunks(lambda b: _value_and_jacobian_rows(params, b, act, mode), x, rows)


def _jacobian(params, x, act, mode="auto"):
    return _value_and_jacobian(params, x, act, mode)[1]


def _value_and_jacobian_rows(params, x, act, mode):
    fw = _forward(params, x, act, second=False)
    batch = x.shape[0]
    if mode == "rev":
        # Carry the n_out rows G = ∂A/∂a_l from the output back to the input.
        g = jnp.broadcast_to(params[-1]["W"], (batch, *params[-1]["W"].shape))
        for layer, s in zip(reversed(params[:-1]), reversed(fw.d1), strict=True):
            g = _mm(g * s[:, None, :], layer["W"])
        return fw.out, g
    # Carry the n_in columns (as rows, see _input_side) from the input to the output.
    if len(params) == 1:
        return fw.out, jnp.broadcast_to(params[0]["W"], (batch, *params[0]["W"].shape))
    jt = _input_side(params, fw.d1)[-1]
    jt = _mm(jt * fw.d1[-1][:, None, :], params[-1]["W"].T)  # (B, n_in, n_out)
    return fw.out, jnp.swapaxes(jt, 1, 2)


def _output_adjoints(params, d1, batch):
    """``δ_l = ∂A/∂a_l`` for l = n-1 … 1 (returned in layer order), each ``(B, n_out, h_l)``."""
    delta = jnp.broadcast_to(params[-1]["W"], (batch, *params[-1]["W"].shape))
    deltas = [delta]
    for layer, s in zip(reversed(params[1:-1]), reversed(d1[1:]), strict=True):
        delta = _mm(delta * s[:, None, :], layer["W"])
        deltas.append(delta)
    return deltas[::-1]


# The Hessian runs in steps of rows whose (rows, n_in, h) pre-activation Jacobians are near
# _HESSIAN_STEP_BYTES, so the whole pipeline of one step (forward pass, Jz_l, adjoints,
# contraction) works in cache instead of streaming batch-sized intermediates through memory.
# Measured on [32, 256, 256, 256, 8] (2-core Xeon, 2 MiB L2 a core): 1.2x faster at B = 256 and
# 1.5x at B = 4096 in float32 (steps of 32 rows), 1.4-1.5x in float64 (16 rows); steps of twice
# that were 1.1-1.3x slower than these. Within a step the contraction runs a few examples at a
# time, its (n_out, n_in, h) intermediates near _CONTRACTION_BYTES: on a 2-core AMD EPYC (1 MiB L2
# a core, 32 MiB L3) 1.1-1.2x faster than 16 MiB on the small net at B = 256 and 4096, float32 and
# float64 (8 examples a sub-step in float32; 2-8 MiB were level, 1 MiB slower). Since every step
# writes into the output in place (see _hessian), 8 MiB beat 4 on a 2-core Xeon (2 MiB L2 a core):
# 1.07x on the small net (16 examples a step in float32) and 1.04x on the wide one (2 examples) at
# B = 256, float32. Far above that, past glibc's 32 MiB mmap threshold, temporaries are mapped
# afresh and page-faulted on every call (a 50 MB one made the contraction of 4 examples of the
# wide net 1.5x slower).
#
# A step's front end (forward pass, adjoints δ_l, layer 1's packed term) multiplies its rows by
# weights every row shares: the adjoint and packed GEMMs have rows·n_out rows. A step that gives
# them fewer than _HESSIAN_SKINNY_ROWS runs them skinny (the wide net's steps of 4 rows: 64-row
# adjoints at 220-275 GFLOP/s, 4-row forward GEMMs at 49-76, where the machine peaks at 450), so
# the Hessian then runs in chunks whose front end has _HESSIAN_CHUNK_ROWS GEMM rows (or
# _HESSIAN_CHUNK_BYTES of intermediates, if more), and Jz_l is formed within the contraction's
# steps of a few examples instead (also when the whole batch is one such step: at B = 4 the
# wide net ran 1.06x faster that way than with Jz_l formed for all 4 examples at once, on a 2-core
# Xeon). Medians of per-round ratios against the steps alone, 2-core AMD EPYC (Zen 5, 1 MiB
# L2 a core):
# [128, 512, 512, 512, 512, 16] (steps of 4 rows in float32, 2 in float64; chunks of 32) ran
# 1.08-1.17x faster at B = 256 in float32, 1.15x in float64, 1.10x at B = 4096; chunks of 24
# to 256 rows were all 1.05-1.11x. [32, 256, 256, 256, 8] keeps its steps: chunked it read
# 1.0x at B = 256 in float32 (256 GEMM rows a step), 0.94-0.96x at B = 4096 and 0.96x in
# float64 (128 rows).
_HESSIAN_STEP_BYTES = 2**20
_HESSIAN_SKINNY_ROWS = 128
_HESSIAN_CHUNK_ROWS = 512
_HESSIAN_CHUNK_BYTES = 8 * 2**20
_CONTRACTION_BYTES = 8 * 2**20


def _hessian_layout(params, batch: int, itemsize: int) -> tuple[int | None, bool]:
    """Rows per step of the closed-form Hessian (``None``: one pass), and whether in chunks.

    In chunks, ``Jz_l`` is formed within each contraction step (see above). A chunk's front end
    keeps, per row, ``a_l``, ``σ'``, ``σ''`` (``3 H`` numbers for ``H`` hidden units),
    ``δ_l`` and ``c_l`` (``2 n_out H``) and the packed term (``n_out n_in (n_in + 1) / 2``).
    Steps split the batch evenly, as few as their size allows.
    """
    n_in, n_out = params[0]["W"].shape[1], params[-1]["W"].shape[0]
    width = max(layer["W"].shape[0] for layer in params[:-1]) if len(params) > 1 else 1
    rows = max(1, _HESSIAN_STEP_BYTES // (n_in * width * itemsize))
    chunked = rows * n_out < _HESSIAN_SKINNY_ROWS
    if chunked:
        hidden = sum(layer["W"].shape[0] for layer in params[:-1])
        per_row = itemsize * ((3 + 2 * n_out) * hidden + n_out * n_in * (n_in + 1) // 2)
        rows = max(_HESSIAN_CHUNK_BYTES // per_row, -(-_HESSIAN_CHUNK_ROWS // n_out))
    return (None if rows >= batch else -(-batch // -(-batch // rows))), chunked


def _hessian_step_rows(params, batch: int, itemsize: int) -> int | None:
    """Rows per step of the closed-form Hessian of ``batch`` rows, or ``None`` for one pass."""
    return _hessian_layout(params, batch, itemsize)[0]


def _symmetric_blocks(n_in: int) -> list[tuple[int, int]]:
    """Row blocks of the upper triangle computed as separate GEMMs (block size ≥ 32)."""
    n_blocks = max(1, min(4, n_in // 32))
    edges = [round(i * n_in / n_blocks) for i in range(n_blocks + 1)]
    return list(itertools.pairwise(edges))


def _contraction_layout(
    n_out: int, n_in: int, widths: list[int], itemsize: int
) -> tuple[bool, int]:
    """How the deep layers (``widths`` units each) are contracted: ``(joined, examples a step)``.

    The scaled ``(n_out, n_in, h)`` operands of a step stay near ``_CONTRACTION_BYTES``, in
    cache. While one example's operand over all deep units fits, the layers are joined into one
    GEMM (per step: a batch-sized concatenation costs more than it saves); past that, each
    layer is a GEMM of its own, accumulated. On the wide net (a 12.6 MB joined operand in
    float32) the Hessian ran 0.99-1.07x as fast as with one joined GEMM, median 1.04x, in five
    interleaved runs at B = 256 in float32, and 0.98x in float64 (2-core Xeon, 2 MiB L2 a core).
    """
    per_unit = n_out * n_in * itemsize
    joined = per_unit * sum(widths) <= _CONTRACTION_BYTES
    widest = sum(widths) if joined else max(widths)
    return joined, max(1, _CONTRACTION_BYTES // (per_unit * widest))


def _contract(zts: list[jax.Array], cs: list[jax.Array], base: jax.Array) -> jax.Array:
    """``base + H``, ``H[b,k] = Σ_l Zt_l[b] diag(c_l[b,k]) Zt_l[b]ᵀ``: ``(b, n_out, n_in, n_in)``.

    Args:
        zts: ``Zt_l``, each ``(b, n_in, h_l)``.
        cs: ``c_l``, each ``(b, n_out, h_l)``.
        base: ``(b, n_out, n_in, n_in)``, symmetric in the last two axes.

    Each entry of ``zts`` is a GEMM of its own, accumulated. Only the row blocks of the upper
    triangle are multiplied (with 2 blocks 3/4 of the full product, with 4 blocks 5/8); one
    elementwise pass then lays them out and mirrors them below the diagonal blocks. Adding each
    block and its transpose into ``base`` in place instead took 8 passes over slices of it:
    on the wide net (4 blocks) 0.5 ms of the 3.8 ms an example, with one core idle.
    """
    n_in = zts[0].shape[1]

    def rows(lo, hi):  # rows lo:hi of the upper triangle, columns lo:
        terms = [
            jnp.einsum("bkih,bjh->bkij", c[:, :, None, :] * zt[:, None, lo:hi, :], zt[:, lo:, :])
            for zt, c in zip(zts, cs, strict=True)
        ]
        return functools.reduce(jnp.add, terms)

    blocks = _symmetric_blocks(n_in)
    if len(blocks) == 1:
        return base + rows(0, n_in)
    pad = ((0, 0), (0, 0), (0, 0))
    upper = jnp.concatenate([jnp.pad(rows(lo, hi), (*pad, (lo, 0))) for lo, hi in blocks], axis=2)
    block_of = np.repeat(np.arange(len(blocks)), [hi - lo for lo, hi in blocks])
    computed = block_of[:, None] <= block_of[None, :]  # (i, j) in or right of i's diagonal block
    return base + jnp.where(computed, upper, jnp.swapaxes(upper, -1, -2))


# The fused kernel's steps: examples whose G_l (units, n_in) of every deep layer add up to about
# _FUSED_STEP_BYTES, within the blocks of _hessian_layout, dividing them evenly. Measured against
# XLA's contraction (2-core AMD EPYC, 1 MiB L2 a core, paired rounds, float32): on
# [128, 512, 512, 512, 512, 16] at B = 256 steps of 8 examples (blocks of 32) 1.34x, of 4 1.10x,
# of 16 1.26x; on [32, 256, 256, 256, 8] steps of 32 (its blocks) 1.24x, 64 and 256 1.26-1.27x.
_FUSED_STEP_BYTES = 8 * 2**20


def _fused_default(x: jax.Array) -> bool:
    """Whether the Hessian of ``x`` takes the fused kernel by default (see _hessian_kernel)."""
    return (
        _hessian_kernel.available()
        and jax.default_backend() == "cpu"
        and np.dtype(x.dtype) in _hessian_kernel.DTYPES
    )


def _hessian(params, x, act, out=None, *, fused=None):
    """The closed-form Hessian of ``x`` ``(B, n_in)``: ``(B, n_out, n_in, n_in)``.

    ``out``, if given, is an array of the result's shape and dtype whose values are never read:
    every step overwrites its rows of it (a donated buffer then holds the result, with no
    zero-fill first; see ``derivatives._run_plan_into``).

    The batch runs in blocks of rows (see ``_hessian_layout``), each block's contraction in
    steps of a few examples (``_contraction_layout``), and every step writes its examples into
    the output in place. Stacking the steps of a block first (``lax.map``) and then the blocks
    (``map_chunks``) wrote the result twice more. With the contraction's single assembly pass
    and 8 MiB contraction steps as well, against stacking (2-core Xeon, 2 MiB L2 a core,
    medians of paired rounds): the wide net [128, 512, 512, 512, 512, 16] ran 1.18x faster at
    B = 256 in float32 (1046 ms against 1240), 1.11x in float64, 1.14x at B = 4096; the small
    net [32, 256, 256, 256, 8] 1.12x at B = 256 in float32 (31.1 ms against 35.4), 1.13x in
    float64, 1.14x at B = 4096. The stacking alone cost the wide net 4 %.
    A block or step that does not divide its parent is moved back to end at the last row,
    recomputing a few rows instead of running a remainder program.

    ``fused`` (default: where the compiled kernel is installed and the program runs on the CPU
    in float32 or float64) runs each step's layer sum as one fused kernel call on ``G_l`` laid
    out units first (:func:`_unit_side`), instead of XLA's contraction (:func:`_contract`).
    """
    params = _promoted(params, x)
    batch, n_in = x.shape
    n_out = params[-1]["W"].shape[0]
    if len(params) == 1:
        return jnp.zeros((batch, n_out, n_in, n_in), x.dtype)
    rows, chunked = _hessian_layout(params, batch, params[0]["W"].dtype.itemsize)
    rows = rows or batch
    if fused is None:
        fused = _fused_default(x)
    pair = _hessian_kernel.packed_index(n_in)
    if len(params) == 2:
        return map_chunks(lambda b: _hessian_front(params, b, act)[2][:, :, pair], x, rows)
    widths = [layer["W"].shape[0] for layer in params[1:-1]]
    if fused:  # the kernel takes the layers as they are: nothing is joined
        step = max(1, _FUSED_STEP_BYTES // (sum(widths) * n_in * x.dtype.itemsize))
        step, joined = -(-rows // -(-rows // step)), None  # as many steps, evened out
    else:
        joined, step = _contraction_layout(n_out, n_in, widths, x.dtype.itemsize)
    step = min(step, rows)

    def block(start, out):
        d1, cs, packed = _hessian_front(params, jax.lax.dynamic_slice_in_dim(x, start, rows), act)
        # Jz_l differs per example: formed here for the whole block, or in each step (chunks).
        lead = d1 if (chunked or fused) else _input_side(params, d1)[1:]

        def contraction_step(first, out):
            lead_j, cs_j, packed_j = jax.tree_util.tree_map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, first, step), (lead, cs, packed)
            )
            if fused:
                hess = _hessian_kernel.layer_sum(_unit_side(params, lead_j), cs_j, packed_j)
            else:
                zts = _input_side(params, lead_j)[1:] if chunked else lead_j
                if joined:
                    zts, cs_j = [jnp.concatenate(zts, axis=-1)], [jnp.concatenate(cs_j, axis=-1)]
                hess = _contract(zts, cs_j, packed_j[:, :, pair])
            return jax.lax.dynamic_update_slice_in_dim(out, hess, start + first, 0)

        return for_each_chunk(rows, step, contraction_step, out)

    if out is None:
        out = jnp.zeros((batch, n_out, n_in, n_in), x.dtype)
    return for_each_chunk(batch, rows, block, out)


def _hessian_front(params, x, act):
    """A block's shared-weight work: ``(σ'(z_l), c_l for l ≥ 2, layer 1's packed term)``.

    ``c_l = σ''(z_l) ⊙ δ_l`` is ``(B, n_out, h_l)``. Layer 1's ``Jz_1 = W_1`` is shared by all
    examples, so ``H_1[b,k] = Σ_h c_1[b,k,h] W_1[h]ᵀ W_1[h]`` is one large GEMM against the
    packed upper triangle of the outer products ``W_1[h] W_1[h]ᵀ``: ``(B, n_out, n_in (n_in +
    1) / 2)``.
    """
    fw = _forward(params, x, act, second=True)
    deltas = _output_adjoints(params, fw.d1, x.shape[0])
    cs = [delta * s2[:, None, :] for delta, s2 in zip(deltas, fw.d2, strict=True)]
    w1 = params[0]["W"]
    iu, ju = np.triu_indices(x.shape[1])
    return fw.d1, cs[1:], _mm(cs[0], w1[:, iu] * w1[:, ju])


def _weight_jacobian(params, x, act):
    fw = _forward(params, x, act, second=False)
    batch, n_out = x.shape[0], params[-1]["W"].shape[0]
    g = jnp.broadcast_to(jnp.eye(n_out, dtype=x.dtype), (batch, n_out, n_out))  # ∂A/∂z_n
    grads = []
    for i in range(len(params) - 1, -1, -1):
        grads.append({"W": jnp.einsum("bko,bi->bkoi", g, fw.acts[i]), "b": g})
        if i > 0:
            g = _mm(g, params[i]["W"]) * fw.d1[i - 1][:, None, :]
    return grads[::-1]


# Rows per step of the forward Laplacian: its (rows, n_in, h) gradients stay near this size, in
# cache between the GEMM that writes them and the one that reads them (1.4x faster than one
# pass over a batch of 256 on the [32, 256, 256, 256, 8] net).
_LAPLACIAN_BYTES = 4 * 2**20


def _laplacian(params, x, act):
    batch, n_in = x.shape
    width = max(layer["W"].shape[0] for layer in params)
    rows = max(1, _LAPLACIAN_BYTES // (n_in * width * x.dtype.itemsize))
    return map_chunks(
        lambda xs: _laplacian_rows(params, xs, act), x, rows if rows < batch else None
    )


def _laplacian_rows(params, x, act):
    # Gradients carried transposed, (B, n_in, h): one tall GEMM per layer (see _input_side).
    batch = x.shape[0]
    params = _promoted(params, x)
    gz = params[0]["W"].T  # ∂z_1/∂x ᵀ, shared: (n_in, h_1)
    lz = jnp.zeros((batch, params[0]["W"].shape[0]), x.dtype)  # Δz_1 = 0: z_1 is affine in x
    z = x @ params[0]["W"].T + params[0]["b"]
    for layer in params[1:]:
        s1, s2 = act.df(z), act.d2f(z)
        lap = s2 * jnp.sum(gz * gz, axis=-2) + s1 * lz  # Δa = σ''|∇z|² + σ' Δz
        z = act.f(z) @ layer["W"].T + layer["b"]
        lz = lap @ layer["W"].T
        if layer is not params[-1]:  # the output layer needs Δz only
            gz = _mm(gz * s1[:, None, :], layer["W"].T)  # ∇z' = W σ'(z) ∇z
    return lz


@functools.partial(jax.jit, static_argnames=("activation", "mode"))
@_batched
def mlp_jacobian(
    params: MLPParams,
    x: ArrayLike,
    activation: str | Activation = "tansig",
    *,
    mode: Literal["auto", "fwd", "rev"] = "auto",
) -> jax.Array:
    """Input Jacobian of the MLP as the layer-by-layer product.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.
        mode: ``"rev"`` multiplies from the output side, ``"fwd"`` from the input side;
            ``"auto"`` picks the one with fewer multiply-adds (:func:`jacobian_cost`).

    Returns:
        ``(n_out, n_in)`` or ``(B, n_out, n_in)``.
    """
    return _jacobian(params, x, activation, mode)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_hessian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> jax.Array:
    """Exact input Hessian of every output, ``Σ_l Jz_lᵀ diag(σ''(z_l) ⊙ δ_{l,k}) Jz_l``.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        ``(n_out, n_in, n_in)`` or ``(B, n_out, n_in, n_in)``, symmetric in the last two axes.
    """
    return _hessian(params, x, activation)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_weight_jacobian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> MLPParams:
    """Jacobian of the outputs with respect to every weight and bias, in outer-product form.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        A list like ``params`` with ``"W": ([B,] n_out, out_l, in_l)`` and
        ``"b": ([B,] n_out, out_l)``, the layout of :func:`jaxjac.weight_jacobian`.
    """
    return _weight_jacobian(params, x, activation)


@functools.partial(jax.jit, static_argnames=("activation",))
@_batched
def mlp_laplacian(
    params: MLPParams, x: ArrayLike, activation: str | Activation = "tansig"
) -> jax.Array:
    """Laplacian ``Σ_i ∂²A_k/∂x_i²`` of every output by forward (value, gradient, Laplacian).

    Never forms a Hessian: the cost is that of a forward-mode Jacobian plus one row sum.

    Args:
        params: list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.

    Returns:
        ``(n_out,)`` or ``(B, n_out)``.
    """
    return _laplacian(params, x, activation)
