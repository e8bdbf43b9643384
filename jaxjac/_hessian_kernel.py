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

The kernel is built by ``pip install`` (``setup.py``) when a C++ compiler is there, once for
the architecture's baseline ISA and, on x86-64, once more for each of ``x86-64-v3`` (AVX2, FMA)
and ``x86-64-v4`` (AVX-512): nothing in the build depends on the CPU it is built on. The first use
asks the baseline build which levels this CPU runs and loads the widest build it runs (no build
is loaded on a CPU it was not compiled for). Where the program runs on another platform, or in
another dtype than float32/float64, :func:`layer_sum` computes the same sum with ``jnp.einsum``;
where no build is installed (jaxjac built from source without a C++ compiler) or none that is
can run here, it does too, after one :class:`FusedKernelWarning` that says why. Derivatives of
the result (a Hessian inside a loss) go through that reference too: :func:`layer_sum` is a
``custom_jvp`` whose tangent is the reference's.

Environment, read once, at the first use:

* ``JAXJAC_FUSED_HESSIAN=0`` leaves the kernel unloaded: the Hessian takes XLA's route.
* ``JAXJAC_KERNEL_SCRATCH_BYTES=N`` caps the scratch each worker thread of the kernel allocates
  (:func:`cost` states it) at ``N`` bytes. A call that needs more computes without scratch, by
  rank-one updates straight into its result: the same sum, several times slower. The kernel
  takes that path too where the allocation itself fails, so a memory limit never aborts the
  process. Unset: no cap.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DTYPES",
    "FusedKernelWarning",
    "available",
    "cost",
    "layer_sum",
    "packed_index",
    "reference_layer_sum",
]

_TARGET = "jaxjac_hessian_layer_sum"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the kernel computes in


class FusedKernelWarning(RuntimeWarning):
    """The fused kernel is not installed or cannot run here: the Hessian takes XLA's route."""


@dataclasses.dataclass(frozen=True)
class _Variant:
    """One build of the kernel (``setup.py``).

    Attributes:
        suffix: of its module's name, ``jaxjac._hessian_contract<suffix>``.
        level: the x86-64 ISA level it is compiled for, which the CPU must support; ``None``
            for the baseline build, which every CPU of its architecture runs.
    """

    suffix: str
    level: str | None

    @property
    def module(self) -> str:
        return f"jaxjac._hessian_contract{self.suffix}"

    @property
    def target(self) -> str:
        # One FFI target a build: tests call several side by side in one process.
        return f"{_TARGET}{self.suffix}"


# Widest first: the first that is installed and that the CPU runs is used.
_VARIANTS = (
    _Variant("_x86_64_v4", "x86-64-v4"),
    _Variant("_x86_64_v3", "x86-64-v3"),
    _Variant("", None),
)


def _installed(variant: _Variant) -> bool:
    spec = importlib.util.find_spec(variant.module)
    return spec is not None and spec.origin is not None


@functools.cache
def _library(variant: _Variant) -> ctypes.CDLL:
    """The build's shared library, loaded once; raises ``OSError`` where it cannot be."""
    spec = importlib.util.find_spec(variant.module)
    if spec is None or spec.origin is None:
        raise OSError(f"{variant.module} is not installed")
    return ctypes.cdll.LoadLibrary(spec.origin)


def _cpu_supports(level: str) -> bool:
    """Whether this CPU (and its OS) runs code compiled for the x86-64 ISA level ``level``.

    Asks the baseline build, which any x86-64 CPU runs (GCC's ``__builtin_cpu_supports``): a
    wider build must not be loaded to find out, as its load-time code may already use the wide
    instructions. ``False`` on other architectures and where the baseline is not installed.
    """
    baseline = _VARIANTS[-1]
    if platform.machine().lower() not in ("x86_64", "amd64") or not _installed(baseline):
        return False
    try:
        probe = _library(baseline).JaxjacCpuSupports
    except (OSError, AttributeError):
        return False
    probe.argtypes, probe.restype = [ctypes.c_char_p], ctypes.c_int
    return bool(probe(level.encode()))


def _select() -> tuple[_Variant | None, list[str]]:
    """The widest installed build that this CPU runs, and why each one before it was passed over.

    Returns:
        ``(build, reasons)``: ``build`` is ``None`` where none is usable; ``reasons`` names each
        installed build passed over (one the CPU lacks the instructions for, or one that did not
        load). Builds that are not installed are passed over silently.
    """
    reasons = []
    for variant in _VARIANTS:
        if not _installed(variant):
            continue
        if variant.level is not None and not _cpu_supports(variant.level):
            reasons.append(f"{variant.module} needs an {variant.level} CPU, which this is not")
            continue
        try:
            _library(variant)
        except OSError as error:
            reasons.append(f"{variant.module} did not load: {error}")
            continue
        return variant, reasons
    return None, reasons


@functools.cache
def _register(variant: _Variant) -> str:
    """Register the build's handler with XLA, once a build; returns its target's name."""
    handler = jax.ffi.pycapsule(_library(variant).JaxjacHessianContract)
    jax.ffi.register_ffi_target(variant.target, handler, platform="cpu")
    return variant.target


@functools.cache
def _chosen() -> _Variant | None:
    """The build that :func:`layer_sum` calls, chosen, loaded and registered once; or ``None``.

    ``None`` where ``JAXJAC_FUSED_HESSIAN=0`` (for comparisons), where no build is installed,
    and where none can run on this CPU: the last two warn once, with the reasons.
    """
    if os.environ.get("JAXJAC_FUSED_HESSIAN", "1") == "0":
        return None
    variant, reasons = _select()
    if variant is None:
        why = (
            "cannot run on this machine: " + "; ".join(reasons)
            if reasons
            else "is not installed (this jaxjac was built without a C++ compiler; jaxjac's "
            "wheel, or a build from source with g++ on the PATH, has it)"
        )
        warnings.warn(
            f"the fused Hessian kernel {why}. The Hessian takes XLA's route "
            "(set JAXJAC_FUSED_HESSIAN=0 to silence this).",
            FusedKernelWarning,
            stacklevel=2,
        )
        return None
    _register(variant)
    return variant


def _registered() -> bool:
    """Whether a build of the kernel is loaded and registered with XLA (see :func:`_chosen`)."""
    return _chosen() is not None


def available() -> bool:
    """Whether the compiled kernel is installed and enabled (CPU, float32 and float64 only)."""
    return _registered()


@functools.cache
def _scratch_limit() -> int:
    """``JAXJAC_KERNEL_SCRATCH_BYTES`` (read once), or -1 where unset: no cap.

    Raises:
        ValueError: if it is set to anything but a count of bytes.
    """
    text = os.environ.get("JAXJAC_KERNEL_SCRATCH_BYTES", "").strip()
    if not text:
        return -1
    if not text.isdigit():
        raise ValueError(f"JAXJAC_KERNEL_SCRATCH_BYTES must be a number of bytes, got {text!r}")
    return int(text)


# The kernel's own buffers (csrc/hessian_contract.cc, ScratchBytes), per worker thread: a panel
# of at most _PANEL units of G, the scaled columns of two outputs, one accumulator per output.
_PANEL = 512
_LANES = 64  # bytes a vector where no build is loaded; columns are padded to two vectors


def _vector_bytes() -> int:
    """Bytes a vector in the chosen build (16, 32 or 64 by its ISA): its columns' padding."""
    variant = _chosen()
    return _LANES if variant is None else int(_library(variant).JaxjacVectorBytes())


def cost(n_in: int, n_out: int, widths: list[int], batch: int, itemsize: int) -> tuple[int, float]:
    """``(scratch bytes, FLOPs)`` of one kernel call that XLA's analyses do not see.

    The scratch is the kernel's buffers for every CPU core (the workers of XLA's thread pool),
    0 where they exceed ``JAXJAC_KERNEL_SCRATCH_BYTES`` (the kernel then allocates none); the
    FLOPs are the multiply-adds of the layer sum over the upper triangle,
    ``2 batch n_out Σ_l h_l n_in (n_in + 1) / 2``.
    """
    group = 2 * _vector_bytes() // itemsize
    cols = -(-n_in // group) * group
    panel = min(_PANEL, max(widths))
    worker = itemsize * (panel * (n_in + 2 * cols) + n_out * n_in * cols)
    limit = _scratch_limit()
    scratch = 0 if 0 <= limit < worker else worker * (os.cpu_count() or 1)
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


def _fused(gs, cs, packed, target=None):
    """The FFI call of the build registered as ``target`` (default: the chosen build's)."""
    batch, n_out, _ = packed.shape
    n_in = gs[0].shape[-1]
    call = jax.ffi.ffi_call(
        target or _chosen().target,
        jax.ShapeDtypeStruct((batch, n_out, n_in, n_in), packed.dtype),
        vmap_method="sequential",
    )
    operands = [a for g, c in zip(gs, cs, strict=True) for a in (g, c)]
    return call(packed, *operands, scratch_limit=np.int64(_scratch_limit()))


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
