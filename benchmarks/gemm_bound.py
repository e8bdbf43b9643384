r"""How long the XLA route of the closed-form Hessian spends in GEMMs: a bound for that design.

The XLA route is ``jaxjac._mlp_cpu.hessian(..., fused=False)``, the layer sum as XLA einsums; the
default route on the CPU runs the layer sum in a fused kernel instead
(:mod:`jaxjac._hessian_kernel`), which this bound does not describe. The FLOP floor of
RESULTS.md divides the FLOP count by the 2048³ matmul peak. The XLA route cannot run its GEMMs
at that shape: it works in row steps that keep each step's Jacobians in cache (or chunks that
give its shared-weight GEMMs enough rows), and its per-example contractions ``Jzᵀ diag(c) Jz``
are GEMMs with an output dimension of ``n_in``. This module lists every GEMM
the closed form runs on a batch, with the shapes and counts it really uses (read from
``jaxjac.closed_form``'s step sizes), times each on its own with its operands resident (the
fastest of ``repeats`` calls, less the dispatch cost of a trivial call), and sums them:

* forward pass:      ``(R, s_{l-1}) @ (s_{l-1}, s_l)`` for every layer, ``B / R`` times;
* ``Jz_l``:          ``(R n_in, s_{l-1}) @ (s_{l-1}, s_l)`` for ``l = 2 … n-1`` (in front-end
  chunks ``(e n_in, s_{l-1}) @ (s_{l-1}, s_l)``, ``B / e`` times);
* adjoints ``δ_l``:  ``(R n_out, s_l) @ (s_l, s_{l-1})`` for ``l = n-1 … 2``;
* layer 1, packed:   ``(R n_out, s_1) @ (s_1, n_in (n_in + 1) / 2)``;
* contraction:       the upper-triangle row blocks of ``(e, n_out, n_in, H) x (e, n_in, H)``
  for ``e`` examples at a time, ``B / e`` times: ``H = s_2 + … + s_{n-1}`` where the deep
  layers are joined, else one such GEMM for each deep layer with ``H = s_l``,

with ``R`` rows per step (or front-end chunk) and ``e`` examples per contraction step.
Everything else the closed form does (activations, the scaling ``c ⊙ Jz`` that feeds the
contraction, the packed term's gather) is left out, so the sum is a lower bound on the closed
form's time with XLA's GEMMs.
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxjac import _mlp_cpu

__all__ = ["hessian_gemms", "measure_hessian_gemms"]


def hessian_gemms(sizes: list[int], batch: int, itemsize: int) -> list[dict]:
    """The closed-form Hessian's GEMMs on ``batch`` rows: name, shapes, calls and FLOPs each.

    Each entry has ``name``, ``shape`` (``(m, k, n)`` for a plain GEMM or ``(e, n_out, n_in,
    H)`` for the contraction), ``calls`` (times it runs on the batch) and ``flops`` (one call).
    """
    params = [
        {"W": np.empty((b, a), np.dtype(f"f{itemsize}"))} for a, b in itertools.pairwise(sizes)
    ]
    n, n_in, n_out = len(sizes) - 1, sizes[0], sizes[-1]
    rows, chunked = _mlp_cpu.hessian_layout(params, batch, itemsize)
    rows = rows or batch
    steps = -(-batch // rows)
    deep = sizes[2:-1]
    joined, step = _mlp_cpu.contraction_layout(n_out, n_in, deep or [1], itemsize)
    step = min(rows, step)
    # In front-end chunks Jz_l is formed per contraction step of ``step`` examples.
    jz_rows, jz_calls = (step, -(-batch // step)) if chunked else (rows, steps)
    out = [
        {"name": "forward", "shape": (rows, sizes[i - 1], sizes[i]), "calls": steps}
        for i in range(1, n + 1)
    ]
    out += [
        {"name": "Jz", "shape": (jz_rows * n_in, sizes[i - 1], sizes[i]), "calls": jz_calls}
        for i in range(2, n)
    ]
    out += [
        {"name": "adjoint", "shape": (rows * n_out, sizes[i], sizes[i - 1]), "calls": steps}
        for i in range(n - 1, 1, -1)
    ]
    out.append(
        {
            "name": "layer 1 packed",
            "shape": (rows * n_out, sizes[1], n_in * (n_in + 1) // 2),
            "calls": steps,
        }
    )
    for g in out:
        m, k, nn = g["shape"]
        g["flops"] = 2 * m * k * nn
    if deep:
        blocks = _mlp_cpu.symmetric_blocks(n_in)
        for h in [sum(deep)] if joined else deep:
            out.append(
                {
                    "name": "contraction",
                    "shape": (step, n_out, n_in, h),
                    "calls": -(-batch // step),
                    "flops": sum(
                        2 * step * n_out * (hi - lo) * (n_in - lo) * h for lo, hi in blocks
                    ),
                }
            )
    return out


def _fastest(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measure_hessian_gemms(sizes: list[int], batch: int, dtype: str, repeats: int = 50) -> dict:
    """Time every GEMM of :func:`hessian_gemms` alone; ``gemm_s`` is their sum over the batch.

    Returns ``{"gemm_s", "flops", "items"}``, each item with its ``seconds`` a call (the fastest
    call less the dispatch cost of a trivial jitted call, measured alike).
    """
    dt = jnp.dtype(dtype)
    keys = iter(jax.random.split(jax.random.PRNGKey(7), 64))

    def rand(*shape):
        return jax.random.normal(next(keys), shape, dt)

    dispatch = _fastest(jax.jit(lambda a: a + 1), (rand(8),), repeats)
    items = hessian_gemms(sizes, batch, dt.itemsize)
    blocks = _mlp_cpu.symmetric_blocks(sizes[0])
    for g in items:
        if g["name"] == "contraction":
            e, n_out, n_in, deep = g["shape"]
            args = (rand(e, n_out, n_in, deep), rand(e, n_in, deep))

            def fn(m, z):
                return [
                    jnp.einsum("bkih,bjh->bkij", m[:, :, lo:hi], z[:, lo:]) for lo, hi in blocks
                ]
        else:
            m, k, nn = g["shape"]
            args = (rand(m, k), rand(k, nn))

            def fn(a, b):
                return a @ b

        g["seconds"] = max(_fastest(jax.jit(fn), args, repeats) - dispatch, 1e-9)
    return {
        "gemm_s": sum(g["seconds"] * g["calls"] for g in items),
        "flops": sum(g["flops"] * g["calls"] for g in items),
        "items": items,
    }
