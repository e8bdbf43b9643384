r"""Derivative-based global sensitivity measures: a pure accumulator over chunks of examples.

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
* ``interactions[k, i, j] = E|∂²f_k/∂x_i∂x_j|`` (with Hessians);
* local Lipschitz figures: ``σ_max(J(x))``, the largest singular value of the ``(n_out, n_in)``
  Jacobian of each example: its maximum (exact, with the row where it occurs), mean and
  quantiles.

Every mean comes with its standard error ``s/√N`` (``s`` the sample standard deviation).

**The accumulator.** :func:`init` gives the empty :class:`State`, :func:`update` merges one
:class:`Chunk` into it and :func:`finalize` turns it into a :class:`SensitivityReport`. Each is a
pure function of host values; the state is a NamedTuple of NumPy float64 arrays and Python
numbers, so it can be saved (:func:`state_arrays`, :func:`state_from_arrays`) and merged in any
loop. A chunk carries its examples' moments (count, mean, ``M2``) rather than the derivatives:
:func:`chunk` takes them from per-example arrays on the host, and :func:`jaxjac.sensitivity`
reduces each chunk on the devices so that only the moments travel. Chunks are merged in float64
with Chan, Golub and LeVeque's parallel update (:mod:`jaxjac._moments`), which stays accurate
where ``E[x²] - E[x]²`` would cancel; the result does not depend on the chunking beyond rounding.

A loop of one's own::

    state = measures.init(n_out, n_in, hessian=True)
    for xs in batches:
        # values (B, n_out), jac (B, n_out, n_in), hess (B, n_out, n_in, n_in)
        values, jac, hess = my_derivatives(xs)
        state = measures.update(state, measures.chunk(values, jac, hess))
    report = measures.finalize(state, measures.report_options(n_out, n_in, bounds=[-1, 1]))

**Quantiles in bounded memory.** The ``σ_max`` quantiles come from a sample of at most
``reservoir_size`` per-example values: every example gets a pseudo-random priority (a
SplitMix64 hash of its row index, a bijection, so priorities never tie) and the sample keeps
the values with the smallest priorities (bottom-k sampling). The sample is a uniform random
subset, the same subset whatever the chunking, and holds *every* example while
``N <= reservoir_size``: then the quantiles are exact (``LipschitzSummary.exact``). The maximum
is always exact.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxjac import _moments
from jaxjac._checks import positive_int
from jaxjac._moments import Moments

__all__ = [
    "Chunk",
    "LipschitzSummary",
    "ReportOptions",
    "SensitivityReport",
    "State",
    "bound_constants",
    "chunk",
    "finalize",
    "init",
    "largest_singular_value",
    "report_options",
    "state_arrays",
    "state_from_arrays",
    "update",
]

_MOMENT_FIELDS = ("values", "grad", "abs_grad", "sq_grad", "abs_hess", "lip")


# --- the accumulated state ---------------------------------------------------------------------


class State(NamedTuple):
    """Everything accumulated so far: host values only, merged chunk by chunk.

    Attributes:
        values: moments of ``f(x)``, ``(n_out,)``.
        grad: moments of ``∂f_k/∂x_i``, ``(n_out, n_in)``.
        abs_grad: moments of ``|∂f_k/∂x_i|``, ``(n_out, n_in)``.
        sq_grad: moments of ``(∂f_k/∂x_i)²``, ``(n_out, n_in)``.
        abs_hess: moments of ``|∂²f_k/∂x_i∂x_j|``, ``(n_out, n_in, n_in)``, or ``None`` without
            Hessians.
        lip: moments of ``σ_max(J)``, ``()``.
        lip_max: the largest ``σ_max`` so far (``-inf`` before any example).
        lip_argmax: its 0-based data row (``-1`` before any example).
        res_keys: ``(≤ reservoir_size,)`` uint64 priorities of the sampled ``σ_max`` values.
        res_values: ``(≤ reservoir_size,)`` float64, the sampled values, by priority.
        reservoir_size: the most ``σ_max`` values kept for the quantiles.
    """

    values: Moments
    grad: Moments
    abs_grad: Moments
    sq_grad: Moments
    abs_hess: Moments | None
    lip: Moments
    lip_max: float
    lip_argmax: int
    res_keys: np.ndarray
    res_values: np.ndarray
    reservoir_size: int


class Chunk(NamedTuple):
    """One chunk of examples, reduced to what the state needs.

    Attributes:
        values: moments over the chunk of ``f(x)``, ``(n_out,)``, float64.
        grad: of ``J``, ``(n_out, n_in)``.
        abs_grad: of ``|J|``.
        sq_grad: of ``J²``.
        abs_hess: of ``|H|``, ``(n_out, n_in, n_in)``, or ``None``.
        sigma: ``(B,)`` float64, ``σ_max(J)`` of each example.
        rows: ``(B,)`` int64, the examples' 0-based data rows (the reservoir's priorities and
            the row named by ``lip_argmax``), or ``None``: the rows after those seen so far.
    """

    values: Moments
    grad: Moments
    abs_grad: Moments
    sq_grad: Moments
    abs_hess: Moments | None
    sigma: np.ndarray
    rows: np.ndarray | None = None


def init(n_out: int, n_in: int, *, hessian: bool = False, reservoir_size: int = 100_000) -> State:
    """The state before any example.

    Args:
        n_out: outputs of ``f``.
        n_in: features of ``x``.
        hessian: whether chunks carry ``abs_hess`` (the interactions).
        reservoir_size: the most ``σ_max`` values kept for the quantiles (exact below it).

    Returns:
        An empty :class:`State`.
    """
    n_out = positive_int("n_out", n_out)
    n_in = positive_int("n_in", n_in)
    return State(
        values=_moments.empty((n_out,)),
        grad=_moments.empty((n_out, n_in)),
        abs_grad=_moments.empty((n_out, n_in)),
        sq_grad=_moments.empty((n_out, n_in)),
        abs_hess=_moments.empty((n_out, n_in, n_in)) if hessian else None,
        lip=_moments.empty(()),
        lip_max=-math.inf,
        lip_argmax=-1,
        res_keys=np.zeros((0,), np.uint64),
        res_values=np.zeros((0,)),
        reservoir_size=positive_int("reservoir_size", reservoir_size),
    )


def largest_singular_value(jac: jax.Array) -> jax.Array:
    """``σ_max`` of every matrix of ``jac: (B, m, n)``, shape ``(B,)`` (traceable).

    The square root of the largest eigenvalue of the smaller Gram matrix (``J Jᵀ`` or ``JᵀJ``):
    squaring loses the small singular values, not the largest, whose eigenvalue carries an error
    of a few ``ε ‖G‖ = ε σ_max²``, i.e. a few ε relative in ``σ_max``; a per-example SVD costs
    more than the Jacobians themselves.
    """
    m, n = jac.shape[1:]
    if min(m, n) == 1:
        return jnp.sqrt(jnp.sum(jnp.square(jac), axis=(1, 2)))
    spec = "bij,bkj->bik" if m <= n else "bji,bjk->bik"
    gram = jnp.einsum(spec, jac, jac, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[:, -1], 0))


def chunk(
    values: ArrayLike,
    jac: ArrayLike,
    hess: ArrayLike | None = None,
    *,
    rows: ArrayLike | None = None,
) -> Chunk:
    """A :class:`Chunk` from per-example values and derivatives (moments taken on the host).

    Args:
        values: ``(B, n_out)``, ``f`` at each example.
        jac: ``(B, n_out, n_in)``, the input Jacobians.
        hess: ``(B, n_out, n_in, n_in)``, the input Hessians, or ``None``.
        rows: ``(B,)`` 0-based data rows of the examples, or ``None`` (the rows after those
            already in the state).

    Returns:
        The chunk, in float64.
    """
    values = np.asarray(values, np.float64)
    jac = np.asarray(jac, np.float64)
    if jac.ndim != 3 or values.shape != jac.shape[:2] or jac.shape[0] == 0:
        raise ValueError(
            "expected values (B, n_out) and jac (B, n_out, n_in) with B >= 1, got shapes "
            f"{values.shape} and {jac.shape}"
        )
    abs_hess = None
    if hess is not None:
        hess = np.asarray(hess, np.float64)
        if hess.shape != (*jac.shape, jac.shape[-1]):
            raise ValueError(
                f"expected hess of shape {(*jac.shape, jac.shape[-1])}, got {hess.shape}"
            )
        abs_hess = _moments.of_block(np.abs(hess))
    return Chunk(
        values=_moments.of_block(values),
        grad=_moments.of_block(jac),
        abs_grad=_moments.of_block(np.abs(jac)),
        sq_grad=_moments.of_block(np.square(jac)),
        abs_hess=abs_hess,
        sigma=np.asarray(largest_singular_value(jnp.asarray(jac)), np.float64),
        rows=None if rows is None else np.asarray(rows, np.int64),
    )


# --- bottom-k reservoir (chunking-independent uniform sample) ----------------------------------


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


def update(state: State, chunk: Chunk) -> State:
    """Merge one chunk into the state.

    Args:
        state: the state before this chunk.
        chunk: the chunk's moments and ``σ_max`` values (shapes as in the state).

    Returns:
        The merged state.
    """
    if (state.abs_hess is None) != (chunk.abs_hess is None):
        want = "with" if state.abs_hess is not None else "without"
        raise ValueError(f"expected a chunk {want} abs_hess, matching the state")
    sigma = np.asarray(chunk.sigma, np.float64)
    rows = chunk.rows
    if rows is None:
        rows = np.arange(state.lip.n, state.lip.n + sigma.shape[0], dtype=np.int64)
    best = int(np.argmax(sigma))  # first occurrence: ties keep the earliest row
    lip_max, lip_argmax = state.lip_max, state.lip_argmax
    if sigma[best] > lip_max:
        lip_max, lip_argmax = float(sigma[best]), int(rows[best])
    keys, sample = _merge_reservoir(
        state.res_keys, state.res_values, _splitmix64(rows), sigma, state.reservoir_size
    )
    abs_hess = state.abs_hess
    if abs_hess is not None:
        abs_hess = _moments.merge(abs_hess, chunk.abs_hess)
    return state._replace(
        values=_moments.merge(state.values, chunk.values),
        grad=_moments.merge(state.grad, chunk.grad),
        abs_grad=_moments.merge(state.abs_grad, chunk.abs_grad),
        sq_grad=_moments.merge(state.sq_grad, chunk.sq_grad),
        abs_hess=abs_hess,
        lip=_moments.merge(state.lip, _moments.of_block(sigma)),
        lip_max=lip_max,
        lip_argmax=lip_argmax,
        res_keys=keys,
        res_values=sample,
    )


def state_arrays(state: State) -> dict[str, np.ndarray]:
    """The state as named NumPy arrays (for ``np.savez``); :func:`state_from_arrays` inverts it."""
    arrays = {
        "lip_max": np.array(state.lip_max),
        "lip_argmax": np.array(state.lip_argmax, np.int64),
        "res_keys": state.res_keys,
        "res_values": state.res_values,
    }
    for name in _MOMENT_FIELDS:
        m = getattr(state, name)
        if m is not None:
            arrays[f"{name}.n"] = np.array(m.n, np.int64)
            arrays[f"{name}.mean"] = np.asarray(m.mean)
            arrays[f"{name}.m2"] = np.asarray(m.m2)
    return arrays


def state_from_arrays(arrays: Mapping[str, np.ndarray], like: State) -> State:
    """The state saved by :func:`state_arrays`, for a run set up as ``like`` (an :func:`init`).

    Raises:
        KeyError: for a missing array.
        ValueError: for arrays of other shapes than ``like``'s.
    """

    def moments(name: str) -> Moments | None:
        template = getattr(like, name)
        if template is None:
            return None
        mean, m2 = arrays[f"{name}.mean"], arrays[f"{name}.m2"]
        if mean.shape != template.mean.shape or m2.shape != template.mean.shape:
            raise ValueError(
                f"{name}: expected shape {template.mean.shape}, found {mean.shape} and {m2.shape}"
            )
        return Moments(int(arrays[f"{name}.n"]), mean, m2)

    return like._replace(
        **{name: moments(name) for name in _MOMENT_FIELDS},
        lip_max=float(arrays["lip_max"]),
        lip_argmax=int(arrays["lip_argmax"]),
        res_keys=arrays["res_keys"],
        res_values=arrays["res_values"],
    )


# --- the report --------------------------------------------------------------------------------


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
        interactions: ``E|∂²f_k/∂x_i∂x_j|`` with Hessians, else ``None``.
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
            *self.summary_lines(outputs=outputs, features=features),
            self.lipschitz_line(),
        ]
        return "\n".join(lines)

    def summary_lines(self, *, outputs: int = 10, features: int = 5) -> list[str]:
        """``"  y1: DGSM x3 0.25±0.003, …"``: the largest DGSMs of the first outputs.

        Args:
            outputs: at most this many outputs, in order.
            features: features listed per output, by decreasing DGSM (``±`` a standard error).
        """
        lines = []
        for k, output in enumerate(self.output_names[:outputs]):
            order = np.argsort(-self.dgsm[k], kind="stable")[:features]
            top = ", ".join(
                f"{self.feature_names[i]} {self.dgsm[k, i]:.4g}±{self.dgsm_se[k, i]:.2g}"
                for i in order
            )
            lines.append(f"  {output}: DGSM {top}")
        return lines

    def lipschitz_line(self, where: str | None = None, *, mean: bool = True) -> str:
        """The ``σ_max`` line: its maximum, where it occurs, its mean (``mean``), its quantiles.

        Args:
            where: how to name the row of the maximum; default ``xs[argmax_index]``.
            mean: include the mean with its standard error.
        """
        lip = self.lipschitz
        where = f"xs[{lip.argmax_index}]" if where is None else where
        figures = [f"mean {lip.mean:.4g}±{lip.mean_se:.2g}"] if mean else []
        figures += [
            f"q{level:g} {value:.4g}"
            for level, value in zip(lip.levels, lip.quantiles, strict=True)
        ]
        return f"  largest singular value of J: max {lip.max:.4g} ({where}), {', '.join(figures)}"

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


class ReportOptions(NamedTuple):
    """How :func:`finalize` labels and bounds the measures (see :func:`report_options`).

    Attributes:
        feature_names: ``n_in`` names.
        output_names: ``n_out`` names.
        bound_constants: ``C_i``, ``(n_in,)``, or ``None``.
        levels: the ``σ_max`` quantile levels.
    """

    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    bound_constants: np.ndarray | None
    levels: tuple[float, ...]


def _names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{i + 1}" for i in range(n))
    names = tuple(str(name) for name in names)
    if len(names) != n:
        raise ValueError(f"{what} must have {n} entries, got {len(names)}")
    return names


def bound_constants(
    bounds: ArrayLike | None, variances: ArrayLike | None, n_in: int
) -> np.ndarray | None:
    """``C_i`` of the Sobol bound: ``(b - a)²/π²`` (uniform on [a, b]) or ``σ²`` (normal).

    Args:
        bounds: ``[a, b]`` or ``(n_in, 2)``, or ``None``.
        variances: scalar or ``(n_in,)``, or ``None``.
        n_in: features.

    Returns:
        ``(n_in,)`` float64, or ``None`` when neither is given.

    Raises:
        ValueError: for both, bad shapes, non-finite values, ``a >= b`` or ``σ² <= 0``.
    """
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


def report_options(
    n_out: int,
    n_in: int,
    *,
    feature_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    bounds: ArrayLike | None = None,
    variances: ArrayLike | None = None,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
) -> ReportOptions:
    """Checked :class:`ReportOptions` (check them before a long run, use them after it).

    Args:
        n_out: outputs of ``f``.
        n_in: features of ``x``.
        feature_names: ``n_in`` names (default ``x1 …``).
        output_names: ``n_out`` names (default ``y1 …``).
        bounds: ``[a, b]`` or ``(n_in, 2)``: inputs uniform on these intervals; gives
            ``sobol_upper`` with ``C_i = (b - a)²/π²``.
        variances: scalar or ``(n_in,)``: inputs normal with these variances (``C_i = σ_i²``).
        quantiles: levels of the ``σ_max`` quantiles, in ``[0, 1]``.

    Raises:
        ValueError: for names of the wrong count, bad bounds or variances, or levels outside
            ``[0, 1]``.
    """
    levels = tuple(float(q) for q in quantiles)
    if not all(0.0 <= q <= 1.0 for q in levels):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(levels)}")
    return ReportOptions(
        feature_names=_names(feature_names, n_in, "x", "feature_names"),
        output_names=_names(output_names, n_out, "y", "output_names"),
        bound_constants=bound_constants(bounds, variances, n_in),
        levels=levels,
    )


def finalize(
    state: State,
    options: ReportOptions | None = None,
    *,
    n_dropped: int = 0,
    route: str = "autodiff",
) -> SensitivityReport:
    """The report of everything accumulated in ``state``.

    Args:
        state: the accumulated state (at least one example).
        options: names, bounds and quantile levels (default: :func:`report_options` defaults).
        n_dropped: rows the caller skipped (reported as such).
        route: how the derivatives were computed, ``"closed_form"`` or ``"autodiff"``.

    Returns:
        A :class:`SensitivityReport`.

    Raises:
        ValueError: for a state without examples, or options of other sizes than the state.
    """
    if state.values.n == 0:
        raise ValueError("no example in the state: expected at least one update")
    n_out, n_in = state.grad.mean.shape
    if options is None:
        options = report_options(n_out, n_in)
    if (len(options.output_names), len(options.feature_names)) != (n_out, n_in):
        raise ValueError(
            f"expected options for {n_out} outputs and {n_in} features, got "
            f"{len(options.output_names)} and {len(options.feature_names)}"
        )
    output_var = (
        state.values.m2 / (state.values.n - 1)
        if state.values.n > 1
        else np.full_like(state.values.mean, np.nan)
    )
    upper = None
    constants = options.bound_constants
    if constants is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = constants[None, :] * state.sq_grad.mean / output_var[:, None]
        upper = np.where(output_var[:, None] > 0, upper, np.nan)
    hess = state.abs_hess
    sample = state.res_values
    quantiles = np.quantile(sample, options.levels) if sample.size else []
    lipschitz = LipschitzSummary(
        max=state.lip_max,
        argmax_index=state.lip_argmax,
        mean=float(state.lip.mean),
        mean_se=float(_moments.std_error(state.lip)),
        levels=options.levels,
        quantiles=tuple(float(q) for q in quantiles),
        exact=state.lip.n <= state.reservoir_size,
        sample_size=int(sample.size),
    )
    return SensitivityReport(
        feature_names=options.feature_names,
        output_names=options.output_names,
        n_samples=state.values.n,
        n_dropped=n_dropped,
        mean=state.grad.mean,
        mean_abs=state.abs_grad.mean,
        mean_abs_se=_moments.std_error(state.abs_grad),
        dgsm=state.sq_grad.mean,
        dgsm_se=_moments.std_error(state.sq_grad),
        output_mean=state.values.mean,
        output_var=output_var,
        bound_constants=constants,
        sobol_upper=upper,
        interactions=hess.mean if hess is not None else None,
        interactions_se=_moments.std_error(hess) if hess is not None else None,
        lipschitz=lipschitz,
        route=route,
    )
