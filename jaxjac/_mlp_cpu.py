r"""The closed-form MLP derivatives tuned for the CPU: cache-sized row steps and a fused kernel.

The same formulas as :mod:`jaxjac.closed_form` (the readable reference, which the tests hold
this module to), arranged for a CPU's caches:

* the Jacobian and the forward Laplacian run in steps of rows whose carried blocks stay in
  cache between the GEMM that writes them and the one that reads them;
* the Hessian runs in blocks of rows (the forward pass, the adjoints and layer 1's packed term
  for a block at once), each block's layer sum in steps of a few examples, written into the
  output in place; the layer sum is one call of the fused C++ kernel
  (:mod:`jaxjac._hessian_kernel`) where it is installed, else XLA einsums over the row blocks of
  the upper triangle only.

The resolver (:mod:`jaxjac.routes`) takes this path only when :func:`jax.default_backend` is the
CPU; elsewhere the reference's whole-batch program runs. The sizes below were tuned on 2-core
x86-64 machines with 1-2 MiB of L2 a core; ``benchmarks/README.md`` records the measurements.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxjac import _hessian_kernel
from jaxjac._chunks import for_each_chunk, map_chunks
from jaxjac._mlp import adjoints, forward, mm, promoted
from jaxjac.activations import Activation
from jaxjac.closed_form import input_side, jacobian_side, laplacian_rows
from jaxjac.nets import MLPParams

__all__ = [
    "contract",
    "contraction_layout",
    "fused_default",
    "hessian",
    "hessian_layout",
    "hessian_step_rows",
    "jacobian",
    "jacobian_step_rows",
    "laplacian",
    "symmetric_blocks",
    "value_and_jacobian",
]

# Jacobian: steps of rows whose carried (rows, n_out or n_in, h) block is near JACOBIAN_STEP_BYTES,
# once the whole batch's block exceeds JACOBIAN_WHOLE_BYTES (below that one pass is as fast).
JACOBIAN_STEP_BYTES = 4 * 2**20
JACOBIAN_WHOLE_BYTES = 8 * 2**20
# Hessian: blocks of rows whose (rows, n_in, h) pre-activation Jacobians are near
# HESSIAN_STEP_BYTES, so a block's whole pipeline works in cache. A block that would give its
# shared-weight GEMMs fewer than HESSIAN_SKINNY_ROWS rows runs them skinny; then the blocks get
# HESSIAN_CHUNK_ROWS GEMM rows (or HESSIAN_CHUNK_BYTES of intermediates) and Jz_l is formed per
# contraction step instead.
HESSIAN_STEP_BYTES = 2**20
HESSIAN_SKINNY_ROWS = 128
HESSIAN_CHUNK_ROWS = 512
HESSIAN_CHUNK_BYTES = 8 * 2**20
# XLA's contraction: steps whose scaled (n_out, n_in, h) operands are near CONTRACTION_BYTES,
# in cache; far above it, past glibc's 32 MiB mmap threshold, temporaries are page-faulted anew
# on every call.
CONTRACTION_BYTES = 8 * 2**20
# The fused kernel: steps whose G_l (units, n_in) of every deep layer add up to FUSED_STEP_BYTES.
FUSED_STEP_BYTES = 8 * 2**20
# The forward Laplacian: steps whose (rows, n_in, h) gradients stay near LAPLACIAN_BYTES.
LAPLACIAN_BYTES = 4 * 2**20


# --- Jacobian ---------------------------------------------------------------------------------


def jacobian_step_rows(params, batch: int, itemsize: int, mode: str = "auto") -> int | None:
    """Rows per step of the Jacobian of ``batch`` rows, or ``None`` for one pass."""
    mode = jacobian_side(params, mode)
    width = params[0]["W"].shape[1] if mode == "fwd" else params[-1]["W"].shape[0]
    per_row = width * max(layer["W"].shape[0] for layer in params) * itemsize
    rows = max(8, JACOBIAN_STEP_BYTES // per_row)
    return rows if batch * per_row > JACOBIAN_WHOLE_BYTES and rows < batch else None


def value_and_jacobian(params, x, act, mode="auto"):
    """``(A(x), J(x))``: ``(B, n_out)`` and ``(B, n_out, n_in)``, in cache-sized row steps."""
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)
    mode = jacobian_side(params, mode)
    rows = jacobian_step_rows(params, x.shape[0], x.dtype.itemsize, mode)
    return map_chunks(lambda b: _value_and_jacobian_rows(params, b, act, mode), x, rows)


def jacobian(params, x, act, mode="auto"):
    """``J(x)``: ``(B, n_out, n_in)`` (see :func:`value_and_jacobian`)."""
    return value_and_jacobian(params, x, act, mode)[1]


def _value_and_jacobian_rows(params, x, act, mode):
    fw = forward(params, x, act, second=False)
    batch = x.shape[0]
    if len(params) == 1:
        return fw.out, jnp.broadcast_to(params[0]["W"], (batch, *params[0]["W"].shape))
    if mode == "rev":  # the n_out rows carried back from the output: δ_1 ⊙ σ'(z_1) W_1
        return fw.out, mm(adjoints(params, fw.d1, batch)[0] * fw.d1[0][:, None, :], params[0]["W"])
    jt = input_side(params, fw.d1)[-1]  # the n_in columns carried forward, as rows
    jt = mm(jt * fw.d1[-1][:, None, :], params[-1]["W"].T)  # (B, n_in, n_out)
    return fw.out, jnp.swapaxes(jt, 1, 2)


# --- Hessian ----------------------------------------------------------------------------------


def _unit_side(params, d1):
    """``G_l[i, b] = ∂z_{l,i}/∂x`` of example ``b`` for the deep layers l ≥ 2: ``(h_l, B, n_in)``.

    Each layer is one GEMM ``W_l (h_l, h_{l-1}) @ (h_{l-1}, B·n_in)``, the batch in its columns:
    the layout the fused kernel reads.
    """
    g = params[0]["W"][:, None, :] * d1[0].T[:, :, None]  # σ'(z_1) ⊙ W_1: (h_1, B, n_in)
    gs = []
    for layer, s in itertools.zip_longest(params[1:-1], d1[1:-1]):
        g = (layer["W"] @ g.reshape(g.shape[0], -1)).reshape(layer["W"].shape[0], *g.shape[1:])
        gs.append(g)
        if s is not None:
            g = g * s.T[:, :, None]
    return gs


def hessian_layout(params, batch: int, itemsize: int) -> tuple[int | None, bool]:
    """Rows per block of the Hessian (``None``: one block), and whether in chunks.

    In chunks, ``Jz_l`` is formed within each contraction step. A chunk's front end keeps, per
    row, ``a_l``, ``σ'``, ``σ''`` (``3 H`` numbers for ``H`` hidden units), ``δ_l`` and ``c_l``
    (``2 n_out H``) and the packed term (``n_out n_in (n_in + 1) / 2``). Blocks split the batch
    evenly, as few as their size allows.
    """
    n_in, n_out = params[0]["W"].shape[1], params[-1]["W"].shape[0]
    width = max(layer["W"].shape[0] for layer in params[:-1]) if len(params) > 1 else 1
    rows = max(1, HESSIAN_STEP_BYTES // (n_in * width * itemsize))
    chunked = rows * n_out < HESSIAN_SKINNY_ROWS
    if chunked:
        hidden = sum(layer["W"].shape[0] for layer in params[:-1])
        per_row = itemsize * ((3 + 2 * n_out) * hidden + n_out * n_in * (n_in + 1) // 2)
        rows = max(HESSIAN_CHUNK_BYTES // per_row, -(-HESSIAN_CHUNK_ROWS // n_out))
    if rows >= batch:
        return None, chunked
    return -(-batch // -(-batch // rows)), chunked


def hessian_step_rows(params, batch: int, itemsize: int) -> int | None:
    """Rows per block of the Hessian of ``batch`` rows, or ``None`` for one block."""
    return hessian_layout(params, batch, itemsize)[0]


def symmetric_blocks(n_in: int) -> list[tuple[int, int]]:
    """Row blocks of the upper triangle computed as separate GEMMs (block size ≥ 32)."""
    n_blocks = max(1, min(4, n_in // 32))
    edges = [round(i * n_in / n_blocks) for i in range(n_blocks + 1)]
    return list(itertools.pairwise(edges))


def contraction_layout(n_out: int, n_in: int, widths: list[int], itemsize: int) -> tuple[bool, int]:
    """How XLA contracts the deep layers (``widths`` units each): ``(joined, examples a step)``.

    While one example's scaled operand over all deep units fits in ``CONTRACTION_BYTES``, the
    layers are joined into one GEMM (per step: a batch-sized concatenation costs more than it
    saves); past that, each layer is a GEMM of its own, accumulated.
    """
    per_unit = n_out * n_in * itemsize
    joined = per_unit * sum(widths) <= CONTRACTION_BYTES
    widest = sum(widths) if joined else max(widths)
    return joined, max(1, CONTRACTION_BYTES // (per_unit * widest))


def contract(zts: list[jax.Array], cs: list[jax.Array], base: jax.Array) -> jax.Array:
    """``base + H``, ``H[b,k] = Σ_l Zt_l[b] diag(c_l[b,k]) Zt_l[b]ᵀ``: ``(b, n_out, n_in, n_in)``.

    Args:
        zts: ``Zt_l``, each ``(b, n_in, h_l)``.
        cs: ``c_l``, each ``(b, n_out, h_l)``.
        base: ``(b, n_out, n_in, n_in)``, symmetric in the last two axes.

    Only the row blocks of the upper triangle are multiplied (with 2 blocks 3/4 of the full
    product, with 4 blocks 5/8); one elementwise pass lays them out and mirrors them below the
    diagonal blocks.
    """
    n_in = zts[0].shape[1]

    def rows(lo, hi):  # rows lo:hi of the upper triangle, columns lo:
        terms = [
            jnp.einsum("bkih,bjh->bkij", c[:, :, None, :] * zt[:, None, lo:hi, :], zt[:, lo:, :])
            for zt, c in zip(zts, cs, strict=True)
        ]
        return functools.reduce(jnp.add, terms)

    blocks = symmetric_blocks(n_in)
    if len(blocks) == 1:
        return base + rows(0, n_in)
    pad = ((0, 0), (0, 0), (0, 0))
    upper = jnp.concatenate([jnp.pad(rows(lo, hi), (*pad, (lo, 0))) for lo, hi in blocks], axis=2)
    block_of = np.repeat(np.arange(len(blocks)), [hi - lo for lo, hi in blocks])
    computed = block_of[:, None] <= block_of[None, :]  # (i, j) in or right of i's diagonal block
    return base + jnp.where(computed, upper, jnp.swapaxes(upper, -1, -2))


def fused_default(dtype) -> bool:
    """Whether a Hessian in ``dtype`` takes the fused kernel by default (see _hessian_kernel)."""
    return (
        _hessian_kernel.available()
        and jax.default_backend() == "cpu"
        and np.dtype(dtype) in _hessian_kernel.DTYPES
    )


def hessian(params, x, act, out=None, *, fused=None):
    """The closed-form Hessian of ``x: (B, n_in)``: ``(B, n_out, n_in, n_in)``.

    ``out``, if given, is an array of the result's shape and dtype whose values are never read:
    every step overwrites its rows of it (a donated buffer then holds the result, with no
    zero-fill first). ``fused`` (default :func:`fused_default`) runs each step's layer sum as one
    call of the fused kernel on ``G_l`` laid out units first, instead of :func:`contract`.

    The batch runs in blocks of rows (:func:`hessian_layout`), each block's layer sum in steps
    of a few examples, and every step writes its examples into the output in place. A block or
    step that does not divide its parent is moved back to end at the last row, recomputing a
    few rows instead of running a remainder program.
    """
    params = promoted(params, x)
    x = x.astype(params[0]["W"].dtype)  # float64 weights with float32 inputs: a float64 result
    batch, n_in = x.shape
    n_out = params[-1]["W"].shape[0]
    if len(params) == 1 or batch == 0:
        return jnp.zeros((batch, n_out, n_in, n_in), x.dtype)
    rows, chunked = hessian_layout(params, batch, x.dtype.itemsize)
    rows = rows or batch
    if fused is None:
        fused = fused_default(x.dtype)
    pair = _hessian_kernel.packed_index(n_in)
    if len(params) == 2:
        return map_chunks(lambda b: _hessian_front(params, b, act)[2][:, :, pair], x, rows)
    widths = [layer["W"].shape[0] for layer in params[1:-1]]
    if fused:  # the kernel takes the layers as they are: nothing is joined
        step = max(1, FUSED_STEP_BYTES // (sum(widths) * n_in * x.dtype.itemsize))
        step, joined = -(-rows // -(-rows // step)), None  # as many steps, evened out
    else:
        joined, step = contraction_layout(n_out, n_in, widths, x.dtype.itemsize)
    step = min(step, rows)

    def block(start, out):
        d1, cs, packed = _hessian_front(params, jax.lax.dynamic_slice_in_dim(x, start, rows), act)
        # Jz_l differs per example: formed here for the whole block, or in each step (chunks).
        lead = d1 if (chunked or fused) else input_side(params, d1)[1:]

        def contraction_step(first, out):
            lead_j, cs_j, packed_j = jax.tree_util.tree_map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, first, step), (lead, cs, packed)
            )
            if fused:
                hess = _hessian_kernel.layer_sum(_unit_side(params, lead_j), cs_j, packed_j)
            else:
                zts = input_side(params, lead_j)[1:] if chunked else lead_j
                if joined:
                    zts, cs_j = [jnp.concatenate(zts, axis=-1)], [jnp.concatenate(cs_j, axis=-1)]
                hess = contract(zts, cs_j, packed_j[:, :, pair])
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
    fw = forward(params, x, act, second=True)
    deltas = adjoints(params, fw.d1, x.shape[0])
    cs = [delta * s2[:, None, :] for delta, s2 in zip(deltas, fw.d2, strict=True)]
    w1 = params[0]["W"]
    iu, ju = np.triu_indices(x.shape[1])
    return fw.d1, cs[1:], mm(cs[0], w1[:, iu] * w1[:, ju])


# --- Laplacian --------------------------------------------------------------------------------


def laplacian(params: MLPParams, x: jax.Array, act: Activation) -> jax.Array:
    """The forward Laplacian of ``x: (B, n_in)`` in cache-sized row steps: ``(B, n_out)``."""
    batch, n_in = x.shape
    width = max(layer["W"].shape[0] for layer in params)
    rows = max(1, LAPLACIAN_BYTES // (n_in * width * x.dtype.itemsize))
    return map_chunks(lambda xs: laplacian_rows(params, xs, act), x, rows if rows < batch else None)
