r"""Derivative-based global sensitivity measures over whole data sets, streamed in chunks.

:func:`sensitivity` computes, for a model ``f(params, x)`` over the examples of a data set, the
measures of :mod:`jaxjac.measures` (``E|∂f_k/∂x_i|``, the DGSM ``E[(∂f_k/∂x_i)²]``, the Sobol
total-index bound, interactions ``E|∂²f_k/∂x_i∂x_j|`` and the local Lipschitz figures
``σ_max(J)``), each mean with its standard error.

**Streaming.** Examples are processed ``chunk_size`` rows at a time, each chunk in one compiled
program; only the chunk's moments and one ``σ_max`` per row reach the host, where the chunks are
merged in float64 with Chan, Golub and LeVeque's parallel update. Results agree across chunk
sizes and device counts and with the one-shot computation to rounding (relative 1e-12 in
float64 in the tests; bit for bit across an interrupted-and-resumed run with the same chunk
size). In float32 each chunk's moments carry float32 rounding, as the derivatives do.

**Checkpoints.** With ``checkpoint=DIR`` the accumulators are written to
``DIR/sensitivity.checkpoint.npz`` every ``checkpoint_interval_s``, at the end, and when the
run stops early (temporary file, fsync, rename: a crash leaves the previous checkpoint or the
new one, never half of one), next to ``DIR/sensitivity.checkpoint.json`` holding the
fingerprint of the run (model hash, data shape and a hash of its first and last rows, options,
and any ``fingerprint`` the caller adds, such as the data file's size and mtime).
``resume=True`` continues after the last finished chunk and refuses a checkpoint whose
fingerprint differs (:class:`jaxjac.errors.CheckpointMismatchError`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
from jax.typing import ArrayLike

from jaxjac import _pipeline, measures
from jaxjac._checks import check_choice, positive_int
from jaxjac._mlp import mlp_activation
from jaxjac._pipeline import CHECKPOINT_JSON, CHECKPOINT_NPZ, remove_checkpoint
from jaxjac.activations import Activation, get_activation
from jaxjac.measures import LipschitzSummary, SensitivityReport
from jaxjac.nets import mlp_apply

__all__ = [
    "CHECKPOINT_JSON",
    "CHECKPOINT_NPZ",
    "LipschitzSummary",
    "SensitivityReport",
    "mlp_function",
    "remove_checkpoint",
    "sensitivity",
]

Fn = Callable[[Any, jax.Array], Any]
Route = Literal["auto", "closed_form", "autodiff"]
ROUTES = ("auto", "closed_form", "autodiff")


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
        fingerprint: JSON-ready facts a resumed run must match (e.g. the data file's size); a
            refused resume names those that differ by their keys.
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
        ValueError: for bad shapes or options, or ``f`` failing on a row of ``xs`` (the original
            error as its cause). The failures of the data and the checkpoint are the
            ValueErrors of :mod:`jaxjac.errors`: a non-finite input row without
            ``drop_nonfinite`` (:class:`~jaxjac.errors.NonFiniteInputError`), non-finite
            derivatives (:class:`~jaxjac.errors.NonFiniteDerivativeError`), no finite rows at
            all (:class:`~jaxjac.errors.NoFiniteRowsError`), a checkpoint made for different
            inputs (:class:`~jaxjac.errors.CheckpointMismatchError`) or an unreadable one
            (:class:`~jaxjac.errors.CheckpointError`).
    """
    data = _pipeline.as_data(xs)
    n_in = data.shape[1]
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True)
    reservoir_size = positive_int("reservoir_size", reservoir_size)
    check_choice("route", route, ROUTES)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint folder")
    if route == "closed_form" and mlp_activation(f) is None:
        raise ValueError(
            "route='closed_form' needs f to be jaxjac's MLP (mlp_apply or mlp_function(...))"
        )
    program = _pipeline.prepare(
        f,
        params,
        data,
        route=route,
        dtype=dtype,
        hessian=hessian,
        chunk_size=chunk_size,
        devices=devices,
    )
    options = measures.report_options(
        program.n_out,
        n_in,
        feature_names=feature_names,
        output_names=output_names,
        bounds=bounds,
        variances=variances,
        quantiles=quantiles,
    )
    state = measures.init(program.n_out, n_in, hessian=hessian, reservoir_size=reservoir_size)
    store = None
    if checkpoint is not None:
        run_options = {
            "hessian": hessian,
            "drop_nonfinite": drop_nonfinite,
            "reservoir_size": reservoir_size,
            "route": program.route,
            "dtype": str(program.dtype),
        }
        meta = _pipeline.fingerprint(f, params, data, options=run_options, extra=fingerprint or {})
        store = _pipeline.CheckpointStore(checkpoint, meta, checkpoint_interval_s)
    done = _pipeline.run(
        program,
        data,
        state,
        feature_names=options.feature_names,
        drop_nonfinite=drop_nonfinite,
        store=store,
        resume=resume,
        progress=progress,
        on_chunk=on_chunk,
    )
    report = measures.finalize(done.state, options, n_dropped=done.n_dropped, route=program.route)
    if checkpoint is not None and not keep_checkpoint:
        remove_checkpoint(checkpoint)
    return report
