r"""The closed-form Hessian's layer sum as one fused CPU kernel (an XLA FFI call).

For a step of ``B`` examples the kernel computes, for every output ``k``::

    H[b, k] = base[b, k] + Σ_l G_l[:, b]ᵀ diag(c_l[b, k]) G_l[:, b]        (n_in × n_in)

with ``G_l[i, b] = ∂z_{l,i}/∂x`` and ``c_l = σ''(z_l) ⊙ δ_l`` (see :mod:`jaxjac.closed_form`).
XLA has to write the scaled operand ``c ⊙ G`` to memory before its GEMM and multiplies the full
square; the kernel (``csrc/hessian_contract.cc``) copies each example's ``G`` once into a panel
that stays in L2, scales its columns for two outputs at a time into a buffer beside it, runs
register-blocked multiplies over the blocks on and above the diagonal only, and writes each
result mirrored. Measured on the layer sums alone (2-core AMD
EPYC, float32): 2.2x faster than XLA's contraction on ``[32, 256, 256, 256, 8]`` and 1.2-1.4x on
``[128, 512, 512, 512, 512, 16]``; the whole Hessian 1.25-1.35x.

The kernel is built by ``pip install`` (``setup.py``) when a C++ compiler is there. Where it is
missing, or the program runs on another platform, or in another dtype than float32/float64,
:func:`layer_sum` computes the same sum with ``jnp.einsum``. Derivatives of the result (a Hessian
inside a loss) go through that reference too: :func:`layer_sum` is a ``custom_jvp`` whose tangent
is the reference's.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DTYPES", "available", "cost", "layer_sum", "packed_index", "reference_layer_sum"]

_TARGET = "jaxjac_hessian_layer_sum"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the kernel computes in


@functools.cache
def _registered() -> bool:
    """Load the compiled kernel and register it with XLA, once; ``False`` if it was not built.

    ``JAXJAC_FUSED_HESSIAN=0`` in the environment leaves it unloaded: the Hessian then takes
    XLA's route (for comparisons, or where a build was copied to a CPU it was not built for).
    """
    if os.environ.get("JAXJAC_FUSED_HESSIAN", "1") == "0":
        return False
    spec = importlib.util.find_spec("jaxjac._hessian_contract")
    if spec is None or spec.origin is None:
        return False
    library = ctypes.cdll.LoadLibrary(spec.origin)
    handler = jax.ffi.pycapsule(library.JaxjacHessianContract)
    jax.ffi.register_ffi_target(_TARGET, handler, platform="cpu")
    return True


def available() -> bool:
    """Whether the compiled kernel is installed and enabled (CPU, float32 and float64 only)."""
    return _registered()


# The kernel's own buffers (csrc/hessian_contract.cc), per worker thread: a panel of at most
# _PANEL units of G in two layouts, and one (n_in, n_in) accumulator per output.
_PANEL = 512
_LANES = 64  # bytes a vector; columns are padded to two vectors, rows to four


def cost(n_in: int, n_out: int, widths: list[int], batch: int, itemsize: int) -> tuple[int, float]:
    """``(scratch bytes, FLOPs)`` of one kernel call that XLA's analyses do not see.

    The scratch is the kernel's buffers for every CPU core (the workers of XLA's thread pool);
    the FLOPs are the multiply-adds of the layer sum over the upper triangle,
    ``2 batch n_out Σ_l h_l n_in (n_in + 1) / 2``.
    """
    group = 2 * _LANES // itemsize
    cols, rows = -(-n_in // group) * group, -(-n_in // 4) * 4
    panel = min(_PANEL, max(widths))
    scratch = itemsize * (panel * (rows + cols) + n_out * rows * cols) * (os.cpu_count() or 1)
    return scratch, float(batch * n_out * sum(widths) * n_in * (n_in + 1))


def packed_index(n_in: int) -> np.ndarray:
    """``(n_in, n_in)``: where ``(i, j)`` sits in the packed upper triangle (``triu_indices``)."""
    iu, ju = np.triu_indices(n_in)
    pair = np.zeros((n_in, n_in), np.int32)
    pair[iu, ju] = pair[ju, iu] = np.arange(iu.size)
    return pair


def reference_layer_sum(gs: list[jax.Array], cs: list[jax.Array], packed: jax.Array) -> jax.Array:
    """The layer sum by ``jnp.einsum``: what the kernel computes, for any platform and dtype.

    Args:
        gs: ``G_l``, each ``(h_l, B, n_in)``.
        cs: ``c_l``, each ``(B, n_out, h_l)``.
        packed: ``(B, n_out, n_in (n_in + 1) / 2)``, the upper triangle of ``base`` row by row
            (``np.triu_indices`` order).

    Returns:
        ``(B, n_out, n_in, n_in)``, symmetric in the last two axes.
    """
    hess = packed[:, :, packed_index(gs[0].shape[-1])]
    for g, c in zip(gs, cs, strict=True):
        hess = hess + jnp.einsum("ibx,bki,iby->bkxy", g, c, g)
    return hess


def _fused(gs, cs, packed):
    batch, n_out, _ = packed.shape
    n_in = gs[0].shape[-1]
    call = jax.ffi.ffi_call(
        _TARGET,
        jax.ShapeDtypeStruct((batch, n_out, n_in, n_in), packed.dtype),
        vmap_method="sequential",
    )
    return call(packed, *[a for g, c in zip(gs, cs, strict=True) for a in (g, c)])


@jax.custom_jvp
def _layer_sum(gs, cs, packed):
    return jax.lax.platform_dependent(gs, cs, packed, cpu=_fused, default=reference_layer_sum)


@_layer_sum.defjvp
def _layer_sum_jvp(primals, tangents):
    # The sum is bilinear in (G, c): its tangent is cheap XLA einsums, and differentiable again.
    _, tangent = jax.jvp(reference_layer_sum, primals, tangents)
    return _layer_sum(*primals), tangent


def layer_sum(gs: list[jax.Array], cs: list[jax.Array], packed: jax.Array) -> jax.Array:
    """``base + Σ_l G_lᵀ diag(c_l) G_l`` for every example and output, fused on the CPU.

    Args:
        gs: ``G_l``, each ``(h_l, B, n_in)``: the pre-activation Jacobians, units first.
        cs: ``c_l``, each ``(B, n_out, h_l)``.
        packed: ``(B, n_out, n_in (n_in + 1) / 2)``: ``base``'s upper triangle, row by row.

    Returns:
        ``(B, n_out, n_in, n_in)``, symmetric in the last two axes.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    n_in = gs[0].shape[-1] if gs else None
    batch, n_out, n_packed = packed.shape
    if not gs or len(gs) != len(cs) or n_packed != n_in * (n_in + 1) // 2:
        raise ValueError(
            f"expected as many G_l as c_l (got {len(gs)} and {len(cs)}) and a packed base of "
            f"n_in (n_in + 1) / 2 = {None if n_in is None else n_in * (n_in + 1) // 2} entries, "
            f"got {n_packed}"
        )
    for g, c in zip(gs, cs, strict=True):
        if g.shape[1:] != (batch, n_in) or c.shape != (batch, n_out, g.shape[0]):
            raise ValueError(
                f"expected G_l (h, {batch}, {n_in}) and c_l ({batch}, {n_out}, h), "
                f"got {g.shape} and {c.shape}"
            )
    dtypes = {np.dtype(a.dtype) for a in (*gs, *cs, packed)}
    if len(dtypes) != 1 or dtypes.pop() not in DTYPES or not available():
        return reference_layer_sum(gs, cs, packed)
    return _layer_sum(list(gs), list(cs), packed)
