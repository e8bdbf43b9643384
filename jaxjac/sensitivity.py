r"""Derivative-based global sensitivity measures over whole data sets, streamed in chunks.

For a model ``f(params, x)`` with ``x`` of shape ``(n_in,)`` and outputs ``f_k`` (``k < n_out``),
over the examples ``x⁽¹⁾ … x⁽ᴺ⁾`` of a data set (or samples of an input distribution):

* ``mean_abs[k, i] = E|∂f_k/∂x_i|`` and ``mean[k, i] = E[∂f_k/∂x_i]`` (the sign of the effect);
* ``dgsm[k, i] = ν_ik = E[(∂f_k/∂x_i)²]``, the derivative-based global sensitivity measure;
* ``sobol_upper[k, i] = C_i ν_ik / Var f_k``, an upper bound on the total Sobol index
  ``S^T_ik`` (Sobol' and Kucherenko 2009; Lamboni et al. 2013, via the Poincaré inequality):
  ``C_i = (b - a)²/π²`` for ``x_i`` uniform on ``[a, b]``, ``C_i = σ²`` for ``x_i`` normal with
  variance ``σ²``; ``Var f_k`` is the sample variance of the outputs over the same examples.
  The bound holds for independent inputs with those distributions; it may exceed 1 (then it
  says nothing) and is NaN for a constant output (``Var f_k = 0``);
* ``interactions[k, i, j] = E|∂²f_k/∂x_i∂x_j|`` (with ``hessian=True``);
* local Lipschitz figures: ``σ_max(J(x))``, the largest singular value of the ``(n_out, n_in)``
  Jacobian of each example: its maximum (exact, with the row where it occurs), mean and
  quantiles.

Every mean comes with its standard error ``s/√N`` (``s`` the sample standard deviation).

**Streaming.** Examples are processed ``chunk_size`` rows at a time, each chunk in one compiled
program (the last, shorter chunk is padded with copies of its last row, which a mask leaves
out). The derivatives never leave the devices: each device reduces its rows to (count, mean,
M2) of ``f``, ``J``, ``|J|``, ``J²`` (and ``|H|``) in two passes, one ``psum`` combines the
devices, and only these moments and one ``σ_max`` per row reach the host, where the chunks are
merged in float64 with Chan, Golub and LeVeque's parallel update, the chunked form of
Welford's algorithm, which stays accurate where ``E[x²] - E[x]²`` would cancel. Results agree
across chunk sizes and device counts and with the one-shot computation to rounding (relative
1e-12 in float64 in the tests; bit for bit across an interrupted-and-resumed run with the same
chunk size). In float32 each chunk's moments carry float32 rounding, as the derivatives do.

**Quantiles in bounded memory.** The ``σ_max`` quantiles come from a sample of at most
``reservoir_size`` per-example values: every example gets a pseudo-random priority (a
SplitMix64 hash of its row index, a bijection, so priorities never tie) and the sample keeps
the values with the smallest priorities (bottom-k sampling). The sample is a uniform random
subset, the same subset whatever the chunking, and holds *every* example while
``N <= reservoir_size``: then the quantiles are exact (``LipschitzSummary.exact``). The maximum
is always exact.

**Checkpoints.** With ``checkpoint=DIR`` the accumulators are written to
``DIR/sensitivity.checkpoint.npz`` every ``checkpoint_interval_s``, at the end, and when the
run stops early (temporary file, fsync, ``os.replace``:
a crash leaves the previous checkpoint or the new one, never half of one), next to
``DIR/sensitivity.checkpoint.json`` holding the fingerprint of the run (model hash, data shape
and a hash of its first and last rows, options, and any ``fingerprint`` the caller adds, such as
the data file's size and mtime). ``resume=True`` continues after the last finished chunk and
refuses a checkpoint whose fingerprint differs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxjac import closed_form
from jaxjac._chunks import is_count
from jaxjac.activations import Activation, get_activation
from jaxjac.derivatives import _input_hessian, _input_jacobian, _jit_entry
from jaxjac.nets import mlp_apply, validate_mlp_params
from jaxjac.planner import mlp_activation
from jaxjac.sharding import BatchMoments, _reduce, make_mesh

__all__ = [
    "LipschitzSummary",
    "SensitivityReport",
    "mlp_function",
    "remove_checkpoint",
    "sensitivity",
]

Fn = Callable[[Any, jax.Array], Any]
Route = Literal["auto", "closed_form", "autodiff"]

CHECKPOINT_NPZ = "sensitivity.checkpoint.npz"
CHECKPOINT_JSON = "sensitivity.checkpoint.json"
_CHECKPOINT_VERSION = 1
_PROBE_ROWS = 256  # rows hashed at each end of the data for the resume fingerprint

# Advice in the errors, in Python words; the CLI puts its own options in their place.
DROP_NONFINITE_HINT = "pass drop_nonfinite=True to skip such rows"
START_OVER_HINT = "start over with resume=False"


# --- running moments (host, float64) ------------------------------------------------------------


class _Moments(NamedTuple):
    """Count, mean and sum of squared deviations ``M2`` of a stream of equally shaped arrays."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


def _empty_moments(shape: tuple[int, ...]) -> _Moments:
    return _Moments(0, np.zeros(shape), np.zeros(shape))


def _moments_of(x: np.ndarray) -> _Moments:
    """Moments of a ``(B, ...)`` float64 block over its first axis (two-pass: no cancellation)."""
    mean = x.mean(axis=0)
    return _Moments(x.shape[0], mean, np.sum(np.square(x - mean), axis=0))


def _merge_moments(a: _Moments, b: _Moments) -> _Moments:
    """Chan et al.'s parallel update: exact in exact arithmetic, stable in floating point."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + np.square(delta) * (a.n * b.n / n)
    return _Moments(n, mean, m2)


def _sample_var(m: _Moments) -> np.ndarray:
    return m.m2 / (m.n - 1) if m.n > 1 else np.full_like(m.mean, np.nan)


def _std_error(m: _Moments) -> np.ndarray:
    """Standard error of the mean, ``sqrt(s² / N)``; NaN for fewer than two examples."""
    return np.sqrt(_sample_var(m) / m.n) if m.n > 1 else np.full_like(m.mean, np.nan)


# --- bottom-k reservoir (chunking-independent uniform sample) ------------------------------------


def _splitmix64(rows: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of the row indices: a bijection on uint64, so priorities never tie."""
    z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _merge_reservoir(
    keys: np.ndarray, values: np.ndarray, new_keys: np.ndarray, new_values: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``size`` values of smallest priority, sorted by priority (a canonical order)."""
    keys = np.concatenate([keys, new_keys])
    values = np.concatenate([values, new_values])
    if keys.size > size:
        keep = np.argpartition(keys, size - 1)[:size]
        keys, values = keys[keep], values[keep]
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


# --- the accumulated state -------------------------------------------------------------------


class _State(NamedTuple):
    """Everything accumulated so far; a pure value, merged chunk by chunk."""

    rows_done: int  # data rows consumed, kept or dropped
    n_dropped: int  # rows skipped for non-finite inputs
    values: _Moments  # f(x): (n_out,)
    grad: _Moments  # ∂f_k/∂x_i: (n_out, n_in)
    abs_grad: _Moments  # |∂f_k/∂x_i|
    sq_grad: _Moments  # (∂f_k/∂x_i)²
    abs_hess: _Moments | None  # |∂²f_k/∂x_i∂x_j|: (n_out, n_in, n_in)
    lip: _Moments  # σ_max(J): ()
    lip_max: float
    lip_argmax: int  # 0-based data row of lip_max, -1 before any example
    res_keys: np.ndarray  # (≤ reservoir_size,) uint64
    res_values: np.ndarray  # (≤ reservoir_size,) float64


def _initial_state(n_out: int, n_in: int, hessian: bool) -> _State:
    return _State(
        rows_done=0,
        n_dropped=0,
        values=_empty_moments((n_out,)),
        grad=_empty_moments((n_out, n_in)),
        abs_grad=_empty_moments((n_out, n_in)),
        sq_grad=_empty_moments((n_out, n_in)),
        abs_hess=_empty_moments((n_out, n_in, n_in)) if hessian else None,
        lip=_empty_moments(()),
        lip_max=-math.inf,
        lip_argmax=-1,
        res_keys=np.zeros((0,), np.uint64),
        res_values=np.zeros((0,)),
    )


def _accumulate(
    state: _State, chunk: Mapping[str, _Moments], sigma: np.ndarray, rows: np.ndarray, size: int
) -> _State:
    """Merge one chunk's statistics into ``state``.

    Args:
        state: the state before this chunk.
        chunk: moments over the chunk's examples of ``values`` ``(n_out,)``, ``grad``,
            ``abs_grad``, ``sq_grad`` ``(n_out, n_in)`` and, with interactions, ``abs_hess``
            ``(n_out, n_in, n_in)``, float64.
        sigma: ``(B,)`` float64, the largest singular value of each example's Jacobian.
        rows: ``(B,)`` 0-based data rows of the examples (priorities of the reservoir).
        size: the most ``σ_max`` values kept for quantiles.

    Returns:
        The merged state (``rows_done`` and ``n_dropped`` unchanged).
    """
    best = int(np.argmax(sigma))  # first occurrence: ties keep the earliest row
    lip_max, lip_argmax = state.lip_max, state.lip_argmax
    if sigma[best] > lip_max:
        lip_max, lip_argmax = float(sigma[best]), int(rows[best])
    keys, res = _merge_reservoir(state.res_keys, state.res_values, _splitmix64(rows), sigma, size)
    abs_hess = state.abs_hess
    if abs_hess is not None:
        abs_hess = _merge_moments(abs_hess, chunk["abs_hess"])
    return state._replace(
        values=_merge_moments(state.values, chunk["values"]),
        grad=_merge_moments(state.grad, chunk["grad"]),
        abs_grad=_merge_moments(state.abs_grad, chunk["abs_grad"]),
        sq_grad=_merge_moments(state.sq_grad, chunk["sq_grad"]),
        abs_hess=abs_hess,
        lip=_merge_moments(state.lip, _moments_of(sigma)),
        lip_max=lip_max,
        lip_argmax=lip_argmax,
        res_keys=keys,
        res_values=res,
    )


# --- the report ------------------------------------------------------------------------------


class LipschitzSummary(NamedTuple):
    """Local Lipschitz figures: the largest singular value ``σ_max(J(x))`` per example.

    Attributes:
        max: the largest ``σ_max`` over all examples (exact).
        argmax_index: the 0-based index into the data of the row where it occurs (the first
            such row): ``xs[argmax_index]``; ``-1`` before any example.
        mean: the mean of ``σ_max``.
        mean_se: its standard error.
        levels: quantile levels in ``[0, 1]``.
        quantiles: the ``σ_max`` quantiles at ``levels`` (linear interpolation).
        exact: whether the quantiles use every example (``N <= reservoir_size``) or a uniform
            random sample of ``sample_size`` of them.
        sample_size: the number of values the quantiles were computed from.
    """

    max: float
    argmax_index: int
    mean: float
    mean_se: float
    levels: tuple[float, ...]
    quantiles: tuple[float, ...]
    exact: bool
    sample_size: int


_ROW_FIELDS = (
    "output",
    "feature",
    "rank",
    "mean",
    "mean_abs",
    "mean_abs_se",
    "dgsm",
    "dgsm_se",
    "sobol_upper",
)


def _json_ready(value: Any) -> Any:
    """Lists and plain floats, NaN and inf as ``None`` (JSON has neither)."""
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class SensitivityReport:
    """Sensitivity measures of every output to every feature, with standard errors.

    Arrays are float64 with outputs on the first axis: ``(n_out, n_in)`` per (output, feature),
    ``(n_out, n_in, n_in)`` for interactions, ``(n_out,)`` per output.

    Attributes:
        feature_names: ``n_in`` names.
        output_names: ``n_out`` names.
        n_samples: examples used.
        n_dropped: rows skipped for non-finite inputs.
        mean: ``E[∂f_k/∂x_i]``.
        mean_abs: ``E|∂f_k/∂x_i|``.
        mean_abs_se: standard error of ``mean_abs``.
        dgsm: ``ν_ik = E[(∂f_k/∂x_i)²]``.
        dgsm_se: standard error of ``dgsm``.
        output_mean: ``E[f_k]``.
        output_var: sample variance of ``f_k``.
        bound_constants: ``C_i`` (``(n_in,)``) when bounds or variances were given, else ``None``.
        sobol_upper: ``C_i ν_ik / Var f_k``, upper bound on the total Sobol index (NaN where
            ``Var f_k = 0``), or ``None``.
        interactions: ``E|∂²f_k/∂x_i∂x_j|`` with ``hessian=True``, else ``None``.
        interactions_se: its standard error, or ``None``.
        lipschitz: :class:`LipschitzSummary`.
        route: ``"closed_form"`` (jaxjac MLP) or ``"autodiff"``.
    """

    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    n_samples: int
    n_dropped: int
    mean: np.ndarray
    mean_abs: np.ndarray
    mean_abs_se: np.ndarray
    dgsm: np.ndarray
    dgsm_se: np.ndarray
    output_mean: np.ndarray
    output_var: np.ndarray
    bound_constants: np.ndarray | None
    sobol_upper: np.ndarray | None
    interactions: np.ndarray | None
    interactions_se: np.ndarray | None
    lipschitz: LipschitzSummary
    route: str

    def summary(self, *, outputs: int = 10, features: int = 5) -> str:
        """A few readable lines: the largest DGSMs of each output and the ``σ_max`` figures.

        Args:
            outputs: at most this many outputs are listed.
            features: features listed per output, by decreasing DGSM (``±`` a standard error).
        """
        lines = [
            f"sensitivity of {len(self.output_names)} output(s) to {len(self.feature_names)} "
            f"feature(s) over {self.n_samples} examples ({self.n_dropped} dropped), "
            f"{self.route.replace('_', ' ')} route",
            *self._dgsm_lines(outputs, features),
        ]
        lip = self.lipschitz
        lines.append(
            self._sigma_line(f"xs[{lip.argmax_index}]", f"mean {lip.mean:.4g}±{lip.mean_se:.2g}")
        )
        return "\n".join(lines)

    def _dgsm_lines(self, outputs: int, features: int) -> list[str]:
        """``"  y1: DGSM x3 0.25±0.003, …"``: the largest DGSMs of the first outputs."""
        lines = []
        for k, output in enumerate(self.output_names[:outputs]):
            order = np.argsort(-self.dgsm[k], kind="stable")[:features]
            top = ", ".join(
                f"{self.feature_names[i]} {self.dgsm[k, i]:.4g}±{self.dgsm_se[k, i]:.2g}"
                for i in order
            )
            lines.append(f"  {output}: DGSM {top}")
        return lines

    def _sigma_line(self, where: str, *extra: str) -> str:
        """The ``σ_max`` line: its maximum, where it occurs (``where``), ``extra``, quantiles."""
        lip = self.lipschitz
        quantiles = [
            f"q{level:g} {value:.4g}"
            for level, value in zip(lip.levels, lip.quantiles, strict=True)
        ]
        figures = ", ".join([*extra, *quantiles])
        return f"  largest singular value of J: max {lip.max:.4g} ({where}), {figures}"

    def __str__(self) -> str:
        return self.summary()

    def ranks(self) -> np.ndarray:
        """``(n_out, n_in)`` int: 1 for the feature with the largest DGSM of each output."""
        order = np.argsort(-self.dgsm, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, order.shape[1] + 1)[None, :], axis=1)
        return ranks

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (output, feature), outputs in order, features in input order.

        Keys: ``output, feature, rank, mean, mean_abs, mean_abs_se, dgsm, dgsm_se,
        sobol_upper`` (NaN when no bounds were given).
        """
        ranks = self.ranks()
        upper = (
            self.sobol_upper if self.sobol_upper is not None else np.full_like(self.dgsm, np.nan)
        )
        out = []
        for k, output in enumerate(self.output_names):
            for i, feature in enumerate(self.feature_names):
                out.append(
                    {
                        "output": output,
                        "feature": feature,
                        "rank": int(ranks[k, i]),
                        "mean": float(self.mean[k, i]),
                        "mean_abs": float(self.mean_abs[k, i]),
                        "mean_abs_se": float(self.mean_abs_se[k, i]),
                        "dgsm": float(self.dgsm[k, i]),
                        "dgsm_se": float(self.dgsm_se[k, i]),
                        "sobol_upper": float(upper[k, i]),
                    }
                )
        return out

    def to_structured(self) -> np.ndarray:
        """The rows as a numpy structured array of ``n_out * n_in`` records (fields of rows)."""
        rows = self.rows()
        width = max(len(n) for n in (*self.feature_names, *self.output_names))
        dtype = [("output", f"U{width}"), ("feature", f"U{width}"), ("rank", np.int64)]
        dtype += [(name, np.float64) for name in _ROW_FIELDS[3:]]
        return np.array([tuple(r[name] for name in _ROW_FIELDS) for r in rows], dtype=dtype)

    def to_csv(self) -> str:
        """The rows as CSV text with a header, floats with 17 significant digits (round trip)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_ROW_FIELDS)
        for row in self.rows():
            writer.writerow(
                [v if isinstance(v, (str, int)) else format(v, ".17g") for v in row.values()]
            )
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready values (lists; NaN and inf become ``None``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["lipschitz"] = self.lipschitz._asdict()
        fields["rows"] = self.rows()
        return _json_ready(fields)

    def to_json(self, *, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# --- routes ----------------------------------------------------------------------------------


@functools.cache
def mlp_function(activation: str | Activation = "tansig") -> Fn:
    """The jaxjac MLP ``f(params, x) = mlp_apply(params, x, activation)`` as one cached object.

    :func:`sensitivity` recognises it (and ``mlp_apply`` itself, which means tansig) and uses the
    closed-form Jacobian and Hessian of :mod:`jaxjac.closed_form` instead of autodiff. The same
    object is returned for the same activation, so compiled programs are reused.

    Args:
        activation: hidden-layer activation name or :class:`~jaxjac.Activation`.

    Returns:
        ``f(params, x)`` with ``x`` of shape ``(n_in,)`` returning ``(n_out,)``.
    """
    name = activation if isinstance(activation, Activation) else get_activation(activation).name
    return functools.partial(mlp_apply, activation=name)


def _resolve_route(f: Fn, params: Any, route: str) -> tuple[str, str | Activation | None]:
    activation = mlp_activation(f)
    if route not in ("auto", "closed_form", "autodiff"):
        raise ValueError(f"route must be 'auto', 'closed_form' or 'autodiff', got {route!r}")
    if route == "closed_form" and activation is None:
        raise ValueError(
            "route='closed_form' needs f to be jaxjac's MLP (mlp_apply or mlp_function(...))"
        )
    if route == "autodiff" or activation is None:
        return "autodiff", None
    validate_mlp_params(params)
    return "closed_form", activation


def _largest_singular_value(jac: jax.Array) -> jax.Array:
    """``σ_max`` of every matrix of ``jac: (B, m, n)``, shape ``(B,)``.

    The square root of the largest eigenvalue of the smaller Gram matrix (``J Jᵀ`` or ``JᵀJ``):
    squaring loses the small singular values, not the largest, whose eigenvalue carries an error
    of a few ``ε ‖G‖ = ε σ_max²``, i.e. a few ε relative in ``σ_max``. A per-example SVD on the
    host took longer than the Jacobians themselves.
    """
    m, n = jac.shape[1:]
    if min(m, n) == 1:
        return jnp.sqrt(jnp.sum(jnp.square(jac), axis=(1, 2)))
    spec = "bij,bkj->bik" if m <= n else "bji,bjk->bik"
    gram = jnp.einsum(spec, jac, jac, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[:, -1], 0))


def _chunk_derivatives(f, params, xs, route, activation, hessian, n_out):
    """Values ``(B, n_out)``, Jacobians ``(B, n_out, n_in)`` and Hessians (or ``None``)."""
    batch, n_in = xs.shape
    if route == "closed_form":
        values, jac = closed_form._value_and_jacobian(params, xs, activation)
        hess = closed_form._hessian(params, xs, activation) if hessian else None
    else:
        values = jax.vmap(lambda x: f(params, x))(xs)
        jac = jax.vmap(lambda x: _input_jacobian(f, params, x))(xs)
        hess = jax.vmap(lambda x: _input_hessian(f, params, x))(xs) if hessian else None
    # A scalar f counts as n_out = 1.
    hess = hess.reshape(batch, n_out, n_in, n_in) if hess is not None else None
    return values.reshape(batch, n_out), jac.reshape(batch, n_out, n_in), hess


class _ChunkStatistics(NamedTuple):
    """What one chunk sends back from the devices: nothing of the size of its Jacobians."""

    moments: BatchMoments  # over the kept rows: values, grad, abs_grad, sq_grad[, abs_hess]
    sigma: jax.Array  # (B,) σ_max(J) per row
    finite: jax.Array  # (B,) bool: the row's value and derivatives are finite


@_jit_entry("route", "activation", "hessian", "n_out", "mesh")
def _chunk_statistics(
    f: Fn,
    params: Any,
    xs: jax.Array,
    n_kept: jax.Array,
    *,
    route: str,
    activation: Activation | None,
    hessian: bool,
    n_out: int,
    mesh: Mesh,
) -> _ChunkStatistics:
    """Moments of the derivatives of the first ``n_kept`` rows of ``xs: (B, n_in)``.

    The rows are split over ``mesh``; each device computes its rows' derivatives and their
    moments, and one ``psum`` combines the devices (:func:`jaxjac.sharding._reduce`): only the
    moments and the ``B`` numbers ``σ_max`` leave the devices. Compiled once per chunk shape.
    """
    axis = mesh.axis_names[0]
    mask = jnp.arange(xs.shape[0], dtype=jnp.int32) < n_kept

    def local(params, xs, mask):
        values, jac, hess = _chunk_derivatives(f, params, xs, route, activation, hessian, n_out)
        summands = {"values": values, "grad": jac, "abs_grad": jnp.abs(jac)}
        summands["sq_grad"] = jnp.square(jac)
        finite = jnp.all(jnp.isfinite(values), axis=1) & jnp.all(jnp.isfinite(jac), axis=(1, 2))
        if hess is not None:
            summands["abs_hess"] = jnp.abs(hess)
            finite &= jnp.all(jnp.isfinite(hess), axis=(1, 2, 3))
        moments = _reduce(summands, mask, "moments", axis)
        return _ChunkStatistics(moments, _largest_singular_value(jac), finite)

    rows = P(axis)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), rows, rows),
        out_specs=_ChunkStatistics(P(), rows, rows),
        check_vma=False,  # as in jaxjac.sharding: the replicated params are not summed
    )(params, xs, mask)


def _host_moments(moments: BatchMoments) -> dict[str, _Moments]:
    """A chunk's device moments as float64 host :class:`_Moments`, by name."""
    count = int(moments.count)

    def host(a: jax.Array) -> np.ndarray:
        return np.asarray(a, np.float64)

    return {k: _Moments(count, host(moments.mean[k]), host(moments.m2[k])) for k in moments.mean}


# --- validation ------------------------------------------------------------------------------


def _as_data(xs: ArrayLike) -> np.ndarray:
    """``xs`` as a 2-D real array without copying a memory map."""
    data = xs if isinstance(xs, np.ndarray) else np.asarray(xs)
    if data.dtype.kind not in "biuf":
        raise ValueError(f"xs must hold real numbers, found dtype {data.dtype}")
    if data.ndim != 2:
        raise ValueError(f"xs must have shape (N, n_in), found shape {data.shape}")
    if data.shape[0] == 0:
        raise ValueError("xs must hold at least one example, found 0 rows")
    return data


def _work_dtype(params: Any, data: np.ndarray, dtype: Any) -> np.dtype:
    """The dtype derivatives are computed in: ``dtype``, else the params', else the data's."""
    if dtype is None:
        floats = [
            np.dtype(leaf.dtype)
            for leaf in jax.tree_util.tree_leaves(params)
            if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating)
        ]
        if floats:
            dtype = np.result_type(*floats)
        else:
            dtype = data.dtype if data.dtype.kind == "f" else np.float64
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _cast_floats(params: Any, dtype: np.dtype) -> Any:
    """``params`` with every floating array leaf cast to ``dtype`` (other leaves unchanged)."""

    def cast(leaf: Any) -> Any:
        if hasattr(leaf, "dtype") and np.issubdtype(leaf.dtype, np.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jax.tree_util.tree_map(cast, params)


def _check_mlp_width(f: Fn, params: Any, shape: tuple[int, ...]) -> None:
    """For jaxjac's MLP, refuse data whose width is not the model's, naming the data's shape."""
    if mlp_activation(f) is None:
        return
    sizes = validate_mlp_params(params)
    if shape[1] != sizes[0]:
        raise ValueError(
            f"xs must have shape (N, {sizes[0]}) to match W_1 of shape ({sizes[1]}, {sizes[0]}); "
            f"got shape {shape}"
        )


def _output_size(f: Fn, params: Any, data_shape: tuple[int, ...], dtype: np.dtype) -> int:
    n_in = data_shape[1]
    try:
        out = jax.eval_shape(f, params, jax.ShapeDtypeStruct((n_in,), dtype))
    except Exception as err:  # the model's own error, whatever its type: say where it happened
        raise ValueError(
            f"f(params, x) failed on a row of shape ({n_in},) of xs of shape {data_shape}: "
            f"{type(err).__name__}: {err}"
        ) from err
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) > 1:
        raise ValueError(
            f"f(params, x) must return a scalar or a vector (n_out,) for x of shape ({n_in},), "
            f"got {shape if shape is not None else type(out).__name__}"
        )
    return int(shape[0]) if shape else 1


def _names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{i + 1}" for i in range(n))
    names = tuple(str(name) for name in names)
    if len(names) != n:
        raise ValueError(f"{what} must have {n} entries, got {len(names)}")
    return names


def _bound_constants(bounds: ArrayLike | None, variances: ArrayLike | None, n_in: int):
    """``C_i`` of the Sobol bound: ``(b - a)²/π²`` (uniform on [a, b]) or ``σ²`` (normal)."""
    if bounds is not None and variances is not None:
        raise ValueError("give bounds (uniform inputs) or variances (normal inputs), not both")
    if bounds is not None:
        b = np.asarray(bounds, np.float64)
        if b.shape == (2,):
            b = np.broadcast_to(b, (n_in, 2))
        if b.shape != (n_in, 2) or not np.all(np.isfinite(b)) or np.any(b[:, 1] <= b[:, 0]):
            raise ValueError(
                f"bounds must be finite [a, b] with a < b, shape (2,) or ({n_in}, 2); "
                f"got {np.asarray(bounds).tolist()}"
            )
        return np.square(b[:, 1] - b[:, 0]) / math.pi**2
    if variances is not None:
        v = np.broadcast_to(np.asarray(variances, np.float64), (n_in,)).copy()
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"variances must be finite and positive, got {v.tolist()}")
        return v
    return None


def _finite_rows(block: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: every entry of the row is finite (integer data always is)."""
    if block.dtype.kind != "f":
        return np.ones(block.shape[0], bool)
    return np.all(np.isfinite(block), axis=1)


def _nonfinite_error(
    block: np.ndarray, row: int, local: int, names: Sequence[str] | None = None
) -> ValueError:
    """The error for data row ``row`` (0-based), row ``local`` of ``block``, naming its columns."""
    cols = np.flatnonzero(~np.isfinite(block[local]))
    shown = ", ".join(
        f"{c + 1}" + (f" ({names[c]!r})" if names is not None else "") + f" = {block[local, c]}"
        for c in cols[:5]
    )
    more = f" and {cols.size - 5} more" if cols.size > 5 else ""
    return ValueError(
        f"data row {row + 1} (1-based) has a non-finite value in column {shown}{more} "
        f"(columns 1-based): expected finite numbers; {DROP_NONFINITE_HINT}"
    )


def _check_finite(
    data: np.ndarray, start: int, names: Sequence[str], block_rows: int = 65536
) -> None:
    """Scan rows ``start:`` for non-finite values before any derivative is computed."""
    for lo in range(start, data.shape[0], block_rows):
        block = np.asarray(data[lo : lo + block_rows])
        ok = _finite_rows(block)
        if not ok.all():
            local = int(np.argmin(ok))
            raise _nonfinite_error(block, lo + local, local, names)


# --- checkpoints -----------------------------------------------------------------------------


def _describe_fn(f: Fn) -> str:
    if isinstance(f, functools.partial):
        kwargs = ", ".join(f"{k}={v!r}" for k, v in sorted(f.keywords.items()))
        return f"partial({_describe_fn(f.func)}, {kwargs})"
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def _sha256_params(params: Any) -> str:
    digest = hashlib.sha256(str(jax.tree_util.tree_structure(params)).encode())
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _sha256_probe(data: np.ndarray) -> str:
    digest = hashlib.sha256(f"{data.shape}{data.dtype}".encode())
    digest.update(np.ascontiguousarray(data[:_PROBE_ROWS]).tobytes())
    digest.update(np.ascontiguousarray(data[-_PROBE_ROWS:]).tobytes())
    return digest.hexdigest()


def _fingerprint(f, params, data, *, options: Mapping[str, Any], extra: Mapping[str, Any]):
    """What a checkpoint must match to be resumed (the chunk size may differ)."""
    return _json_ready(
        {
            "version": _CHECKPOINT_VERSION,
            "f": _describe_fn(f),
            "params_sha256": _sha256_params(params),
            "data_shape": list(data.shape),
            "data_dtype": str(data.dtype),
            "data_probe_sha256": _sha256_probe(data),
            **options,
            **{f"extra.{k}": v for k, v in extra.items()},
        }
    )


# What the fingerprint's keys are, in the words of a refused resume.
_FINGERPRINT_WORDS = {
    "f": "model function",
    "params_sha256": "model parameters",
    "data_shape": "data shape",
    "data_dtype": "data dtype",
    "data_probe_sha256": "data",
    "drop_nonfinite": "drop_nonfinite",
    "reservoir_size": "reservoir_size",
    "version": "checkpoint version",
    # the CLI's own keys
    "extra.data_file": "data file path",
    "extra.data_size": "data file size",
    "extra.data_mtime_ns": "data file modification time",
}


def _config_hash(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _state_arrays(state: _State, config_hash: str) -> dict[str, np.ndarray]:
    arrays = {
        "config_hash": np.array(config_hash),
        "rows_done": np.array(state.rows_done, np.int64),
        "n_dropped": np.array(state.n_dropped, np.int64),
        "lip_max": np.array(state.lip_max),
        "lip_argmax": np.array(state.lip_argmax, np.int64),
        "res_keys": state.res_keys,
        "res_values": state.res_values,
    }
    for name in ("values", "grad", "abs_grad", "sq_grad", "abs_hess", "lip"):
        m = getattr(state, name)
        if m is not None:
            arrays[f"{name}.n"] = np.array(m.n, np.int64)
            arrays[f"{name}.mean"] = np.asarray(m.mean)
            arrays[f"{name}.m2"] = np.asarray(m.m2)
    return arrays


def _state_from_arrays(arrays: Mapping[str, np.ndarray], template: _State) -> _State:
    def moments(name: str) -> _Moments | None:
        if getattr(template, name) is None:
            return None
        return _Moments(int(arrays[f"{name}.n"]), arrays[f"{name}.mean"], arrays[f"{name}.m2"])

    return _State(
        rows_done=int(arrays["rows_done"]),
        n_dropped=int(arrays["n_dropped"]),
        values=moments("values"),
        grad=moments("grad"),
        abs_grad=moments("abs_grad"),
        sq_grad=moments("sq_grad"),
        abs_hess=moments("abs_hess"),
        lip=moments("lip"),
        lip_max=float(arrays["lip_max"]),
        lip_argmax=int(arrays["lip_argmax"]),
        res_keys=arrays["res_keys"],
        res_values=arrays["res_values"],
    )


def _save_checkpoint(folder: Path, state: _State, config_hash: str) -> None:
    arrays = _state_arrays(state, config_hash)
    _atomic_write(folder / CHECKPOINT_NPZ, lambda h: np.savez(h, **arrays))


def _start_checkpoint(folder: Path, fingerprint: Mapping[str, Any], config_hash: str) -> None:
    """A fresh run: forget any earlier checkpoint, then record what this one is for."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / CHECKPOINT_NPZ)
    text = json.dumps({"config_hash": config_hash, "fingerprint": fingerprint}, indent=2)
    _atomic_write(folder / CHECKPOINT_JSON, lambda h: h.write(text), mode="w")


def _load_checkpoint(
    folder: Path, fingerprint: Mapping[str, Any], config_hash: str, template: _State
) -> _State | None:
    """The saved state if the checkpoint matches this run; None if there is none yet.

    Raises:
        ValueError: for a checkpoint made with different inputs, or an unreadable one.
    """
    meta_path, npz_path = folder / CHECKPOINT_JSON, folder / CHECKPOINT_NPZ
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path}: expected a jaxjac checkpoint description ({err})") from None
    if meta.get("config_hash") != config_hash:
        differ = sorted(
            {
                _FINGERPRINT_WORDS.get(k, k.removeprefix("extra."))
                for k in {*saved, *fingerprint}
                if saved.get(k) != fingerprint.get(k)
            }
        )
        raise ValueError(
            f"the checkpoint in {folder} was made for different inputs ({', '.join(differ)} "
            f"differ): expected the same model, data and options to resume; {START_OVER_HINT}, "
            "or remove the checkpoint folder"
        )
    if not npz_path.exists():
        return None  # interrupted before the first chunk finished
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        if str(arrays["config_hash"]) != config_hash:
            raise ValueError("its accumulators belong to another run")
        return _state_from_arrays(arrays, template)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(
            f"{npz_path}: expected a readable checkpoint matching {meta_path}: {err}; "
            f"{START_OVER_HINT}, or remove the checkpoint folder"
        ) from None


def remove_checkpoint(folder: str | Path) -> None:
    """Delete the checkpoint files of :func:`sensitivity` in ``folder`` (if any)."""
    for name in (CHECKPOINT_NPZ, CHECKPOINT_JSON):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(folder) / name)


# --- the pipeline ----------------------------------------------------------------------------


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, drawn only on a terminal; a no-op without tqdm."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            enabled = False
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    return tqdm(total=total, initial=initial, unit="row", disable=None, file=sys.stderr)


class _NoBar:
    def update(self, n: int) -> None:
        del n


def _pad(block: np.ndarray, size: int) -> np.ndarray:
    """Pad ``(B, n)`` to ``(size, n)`` with copies of the last row (finite, so harmless)."""
    if block.shape[0] == size:
        return block
    return np.concatenate([block, np.repeat(block[-1:], size - block.shape[0], axis=0)])


def _summary(state: _State, levels: tuple[float, ...], reservoir_size: int) -> LipschitzSummary:
    quantiles = np.quantile(state.res_values, levels) if state.res_values.size else []
    return LipschitzSummary(
        max=state.lip_max,
        argmax_index=state.lip_argmax,
        mean=float(state.lip.mean),
        mean_se=float(_std_error(state.lip)),
        levels=levels,
        quantiles=tuple(float(q) for q in quantiles),
        exact=state.lip.n <= reservoir_size,
        sample_size=int(state.res_values.size),
    )


def _report(
    state: _State,
    *,
    feature_names: tuple[str, ...],
    output_names: tuple[str, ...],
    constants: np.ndarray | None,
    levels: tuple[float, ...],
    reservoir_size: int,
    route: str,
) -> SensitivityReport:
    output_var = _sample_var(state.values)
    upper = None
    if constants is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = constants[None, :] * state.sq_grad.mean / output_var[:, None]
        upper = np.where(output_var[:, None] > 0, upper, np.nan)
    hess = state.abs_hess
    return SensitivityReport(
        feature_names=feature_names,
        output_names=output_names,
        n_samples=state.values.n,
        n_dropped=state.n_dropped,
        mean=state.grad.mean,
        mean_abs=state.abs_grad.mean,
        mean_abs_se=_std_error(state.abs_grad),
        dgsm=state.sq_grad.mean,
        dgsm_se=_std_error(state.sq_grad),
        output_mean=state.values.mean,
        output_var=output_var,
        bound_constants=constants,
        sobol_upper=upper,
        interactions=hess.mean if hess is not None else None,
        interactions_se=_std_error(hess) if hess is not None else None,
        lipschitz=_summary(state, levels, reservoir_size),
        route=route,
    )


def sensitivity(
    f: Fn,
    params: Any,
    xs: ArrayLike,
    *,
    chunk_size: int | None = None,
    feature_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    hessian: bool = False,
    bounds: ArrayLike | None = None,
    variances: ArrayLike | None = None,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    drop_nonfinite: bool = False,
    route: Route = "auto",
    dtype: Any = None,
    reservoir_size: int = 100_000,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    keep_checkpoint: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    checkpoint_interval_s: float = 10.0,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
    devices: Any = None,
) -> SensitivityReport:
    """Derivative-based sensitivity measures of ``f`` over the examples ``xs``.

    Args:
        f: ``f(params, x) -> (n_out,)`` (or a scalar) for one example ``x`` of shape
            ``(n_in,)``; hashable, the same object on every call so it compiles once. The jaxjac
            MLP (``mlp_apply`` or :func:`mlp_function`) uses the closed-form derivatives.
        params: pytree passed to ``f``.
        xs: ``(N, n_in)``; a memory-mapped array is read chunk by chunk. Each chunk is cast to
            the working dtype (``dtype``, else that of the floating leaves of ``params``, else
            that of ``xs``).
        chunk_size: examples per chunk (peak memory scales with it); ``None``: one chunk.
        feature_names: ``n_in`` names (default ``x1 …``).
        output_names: ``n_out`` names (default ``y1 …``).
        hessian: also compute the interaction strengths ``E|∂²f_k/∂x_i∂x_j|``.
        bounds: ``[a, b]`` or ``(n_in, 2)``: inputs uniform on these intervals; gives
            ``sobol_upper`` with ``C_i = (b - a)²/π²``.
        variances: scalar or ``(n_in,)``: inputs normal with these variances (``C_i = σ_i²``).
        quantiles: levels of the ``σ_max`` quantiles.
        drop_nonfinite: skip rows with NaN or inf (counted in ``n_dropped``) instead of failing.
        route: ``"auto"`` (closed form for the jaxjac MLP, else autodiff), ``"closed_form"`` or
            ``"autodiff"``.
        dtype: working dtype of the derivatives: the data and the floating leaves of ``params``
            are cast to it (``None``: no cast); the statistics are float64 regardless.
        reservoir_size: the most ``σ_max`` values kept for the quantiles (exact below it).
        checkpoint: a folder (created if missing) for the checkpoint: written after a chunk
            once ``checkpoint_interval_s`` have passed since the last one, after the last chunk,
            and when the run stops early (an exception, Ctrl-C), so every finished chunk is kept.
        resume: continue from the checkpoint in ``checkpoint`` (if any) instead of starting over.
        keep_checkpoint: leave the checkpoint in place after success (default: delete it).
        fingerprint: JSON-ready facts a resumed run must match (e.g. the data file's size).
        checkpoint_interval_s: seconds between checkpoints (``0``: after every chunk). A killed
            process (``SIGKILL``, power loss) loses at most this much work.
        progress: draw a progress bar on stderr when it is a terminal (needs tqdm).
        on_chunk: called as ``on_chunk(rows_done, N)`` after every chunk; an exception raised
            there stops the run, and the checkpoint then holds every chunk up to that one.
        devices: split every chunk's rows over these devices (``None``: the default device;
            an int takes the first ``n``; a list of devices or a ``Mesh``); same numbers.

    Returns:
        A :class:`SensitivityReport`.

    Raises:
        ValueError: for bad shapes or options, ``f`` failing on a row of ``xs`` (the original
            error as its cause), a non-finite input row (naming the first, 1-based)
            without ``drop_nonfinite``, non-finite derivatives, no finite rows at all, or a
            checkpoint made for different inputs.
    """
    data = _as_data(xs)
    n_rows, n_in = data.shape
    if chunk_size is not None and (not is_count(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if not is_count(reservoir_size) or reservoir_size < 1:
        raise ValueError(f"reservoir_size must be a positive integer, got {reservoir_size!r}")
    chunk_size = int(chunk_size) if chunk_size is not None else None  # NumPy ints: JSON, too
    reservoir_size = int(reservoir_size)
    levels = tuple(float(q) for q in quantiles)
    if not all(0.0 <= q <= 1.0 for q in levels):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(levels)}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint folder")
    route_used, activation = _resolve_route(f, params, route)
    _check_mlp_width(f, params, data.shape)
    work = _work_dtype(params, data, dtype)
    work_params = _cast_floats(params, work) if dtype is not None else params
    n_out = _output_size(f, work_params, data.shape, work)
    features = _names(feature_names, n_in, "x", "feature_names")
    outputs = _names(output_names, n_out, "y", "output_names")
    constants = _bound_constants(bounds, variances, n_in)
    device_params = jax.tree_util.tree_map(jnp.asarray, work_params)
    mesh = make_mesh(devices if devices is not None else 1)
    if not drop_nonfinite and not resume:
        _check_finite(data, 0, features)  # before anything is written: a refused run writes none

    state = _initial_state(n_out, n_in, hessian)
    folder = Path(checkpoint) if checkpoint is not None else None
    config_hash = ""
    if folder is not None:
        options = {
            "hessian": hessian,
            "drop_nonfinite": drop_nonfinite,
            "reservoir_size": reservoir_size,
            "route": route_used,
            "dtype": str(work),
        }
        meta = _fingerprint(f, params, data, options=options, extra=fingerprint or {})
        config_hash = _config_hash(meta)
        folder.mkdir(parents=True, exist_ok=True)
        loaded = _load_checkpoint(folder, meta, config_hash, state) if resume else None
        if loaded is not None:
            state = loaded
        elif not (resume and (folder / CHECKPOINT_JSON).exists()):
            _start_checkpoint(folder, meta, config_hash)
    if not drop_nonfinite and resume:
        _check_finite(data, state.rows_done, features)

    chunk = n_rows if chunk_size is None else min(chunk_size, n_rows)
    padded_rows = -(-chunk // mesh.size) * mesh.size  # every device gets as many rows
    saved = state
    last_save = time.monotonic()
    try:
        with _progress_bar(n_rows, state.rows_done, progress) as bar:
            while state.rows_done < n_rows:
                start = state.rows_done
                stop = min(start + chunk, n_rows)
                block = np.asarray(data[start:stop])
                rows = np.arange(start, stop, dtype=np.int64)
                finite = _finite_rows(block)
                if not finite.all():
                    if not drop_nonfinite:  # the file changed since the scan
                        local = int(np.argmin(finite))
                        raise _nonfinite_error(block, start + local, local, features)
                    block, rows = block[finite], rows[finite]
                if block.shape[0]:
                    stats = _chunk_statistics(
                        f,
                        device_params,
                        jnp.asarray(_pad(block, padded_rows), dtype=work),
                        np.int32(block.shape[0]),  # the mask: padding rows are left out
                        route=route_used,
                        activation=activation,
                        hessian=hessian,
                        n_out=n_out,
                        mesh=mesh,
                    )
                    ok = np.asarray(stats.finite)[: block.shape[0]]
                    if not ok.all():
                        raise _nonfinite_derivatives_error(int(rows[int(np.argmin(ok))]))
                    sigma = np.asarray(stats.sigma, np.float64)[: block.shape[0]]
                    moments = _host_moments(stats.moments)
                    state = _accumulate(state, moments, sigma, rows, reservoir_size)
                state = state._replace(
                    rows_done=stop, n_dropped=state.n_dropped + int(np.sum(~finite))
                )
                if folder is not None and (
                    stop == n_rows or time.monotonic() - last_save >= checkpoint_interval_s
                ):
                    _save_checkpoint(folder, state, config_hash)
                    saved, last_save = state, time.monotonic()
                bar.update(stop - start)
                if on_chunk is not None:
                    on_chunk(stop, n_rows)
    except BaseException:
        # Interrupted (an error, Ctrl-C, on_chunk stopping the run): keep every finished chunk.
        # ``state`` only ever holds whole chunks, so it is consistent whatever was cut short.
        if folder is not None and state.rows_done > saved.rows_done:
            with contextlib.suppress(OSError):
                _save_checkpoint(folder, state, config_hash)
        raise

    if state.values.n == 0:
        raise ValueError(
            f"no example left: all {n_rows} data rows have non-finite values; expected at least "
            "one finite row"
        )
    report = _report(
        state,
        feature_names=features,
        output_names=outputs,
        constants=constants,
        levels=levels,
        reservoir_size=reservoir_size,
        route=route_used,
    )
    if folder is not None and not keep_checkpoint:
        remove_checkpoint(folder)
    return report


def _nonfinite_derivatives_error(row: int) -> ValueError:
    return ValueError(
        f"f or its derivatives are not finite at data row {row + 1} (1-based): expected finite "
        "values for finite inputs (overflow in the model?)"
    )
