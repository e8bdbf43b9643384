r"""The sensitivity pipeline: streaming a data set in chunks, checkpoints and resume.

Shared by :func:`jaxjac.sensitivity` and the ``jaxjac sensitivity`` command; the measures
themselves are :mod:`jaxjac.measures`' accumulator, which this module drives.

**Streaming.** Examples are processed ``chunk_size`` rows at a time, each chunk in one compiled
program (the last, shorter chunk is padded with copies of its last row, which a mask leaves
out). The derivatives never leave the devices: each device reduces its rows to (count, mean,
M2) of ``f``, ``J``, ``|J|``, ``J²`` (and ``|H|``) in two passes, one ``psum`` combines the
devices (:func:`jaxjac.sharding.reduce_rows`), and only these moments and one ``σ_max`` per row
reach the host, where :func:`jaxjac.measures.update` merges the chunks in float64.

**Checkpoints.** A :class:`CheckpointStore` writes the accumulators to
``DIR/sensitivity.checkpoint.npz`` (atomically: the previous checkpoint or the new one, never
half of one) next to ``DIR/sensitivity.checkpoint.json``, which holds the fingerprint of the run:
model hash, data shape and a hash of its first and last rows, options, and whatever entries the
caller adds (a data file's size and mtime, say). A resumed run continues after the last finished
chunk and refuses a checkpoint whose fingerprint differs
(:class:`~jaxjac.errors.CheckpointMismatchError`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxjac import _programs, measures, routes
from jaxjac._files import atomic_write
from jaxjac._jit import jit_entry
from jaxjac._mlp import mlp_activation
from jaxjac._moments import Moments
from jaxjac.errors import (
    CheckpointError,
    CheckpointMismatchError,
    NoFiniteRowsError,
    NonFiniteDerivativeError,
    NonFiniteInputError,
)
from jaxjac.nets import validate_mlp_params
from jaxjac.sharding import BatchMoments, make_mesh, reduce_rows

__all__ = [
    "CHECKPOINT_JSON",
    "CHECKPOINT_NPZ",
    "CheckpointStore",
    "ChunkProgram",
    "ChunkStatistics",
    "Progress",
    "as_data",
    "chunk_statistics",
    "fingerprint",
    "prepare",
    "remove_checkpoint",
    "run",
]

Fn = Callable[[Any, jax.Array], Any]

CHECKPOINT_NPZ = "sensitivity.checkpoint.npz"
CHECKPOINT_JSON = "sensitivity.checkpoint.json"
_CHECKPOINT_VERSION = 1
_PROBE_ROWS = 256  # rows hashed at each end of the data for the resume fingerprint


# --- the data and the model --------------------------------------------------------------------


def as_data(xs: ArrayLike) -> np.ndarray:
    """``xs`` as a 2-D real ``(N, n_in)`` array without copying a memory map."""
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


class ChunkProgram(NamedTuple):
    """Everything a chunk's compiled program needs, settled once before streaming.

    Attributes:
        f: the model ``f(params, x)``.
        params: its parameters on the device, cast to ``dtype`` when one was asked for.
        key: the resolver's static description of the derivative program (:func:`routes.resolve`).
        route: ``"closed_form"`` or ``"autodiff"``.
        hessian: whether the chunks carry ``|H|``.
        n_out: outputs of ``f`` (a scalar counts as one).
        n_in: features.
        dtype: the working dtype of the derivatives.
        mesh: the devices a chunk's rows are split over.
        chunk: data rows read per chunk.
        rows: rows per compiled chunk: ``chunk`` padded to a multiple of the mesh size.
    """

    f: Fn
    params: Any
    key: Any
    route: str
    hessian: bool
    n_out: int
    n_in: int
    dtype: np.dtype
    mesh: Mesh
    chunk: int
    rows: int


def prepare(
    f: Fn,
    params: Any,
    data: np.ndarray,
    *,
    route: str,
    dtype: Any,
    hessian: bool,
    chunk_size: int | None,
    devices: Any,
) -> ChunkProgram:
    """Resolve the route and shapes of the chunk program for ``data: (N, n_in)``.

    Raises:
        ValueError: for an MLP of another width than the data, ``f`` failing on a row or
            returning more than a vector, or a route the resolver refuses.
    """
    n_rows, n_in = data.shape
    _check_mlp_width(f, params, data.shape)
    work = _work_dtype(params, data, dtype)
    work_params = _cast_floats(params, work) if dtype is not None else params
    n_out = _output_size(f, work_params, data.shape, work)
    mesh = make_mesh(devices if devices is not None else 1)
    chunk = n_rows if chunk_size is None else min(chunk_size, n_rows)
    rows = -(-chunk // mesh.size) * mesh.size  # every device gets as many rows
    # The Jacobian's route decides the Hessian's too (one route per chunk program).
    local = jax.ShapeDtypeStruct((rows // mesh.size, n_in), work)
    plan = routes.resolve("input_jacobian", f, work_params, local, route=route)
    return ChunkProgram(
        f=f,
        params=jax.tree_util.tree_map(jnp.asarray, work_params),
        key=plan.key,
        route=plan.route,
        hessian=hessian,
        n_out=n_out,
        n_in=n_in,
        dtype=work,
        mesh=mesh,
        chunk=chunk,
        rows=rows,
    )


# --- the compiled chunk program ----------------------------------------------------------------


class ChunkStatistics(NamedTuple):
    """What one chunk sends back from the devices: nothing of the size of its Jacobians.

    Attributes:
        moments: over the kept rows, by name: ``values`` ``(n_out,)``, ``grad``, ``abs_grad``,
            ``sq_grad`` ``(n_out, n_in)`` and, with Hessians, ``abs_hess`` ``(n_out, n_in, n_in)``.
        sigma: ``(B,)``, ``σ_max(J)`` per row.
        finite: ``(B,)`` bool, whether the row's value and derivatives are finite.
    """

    moments: BatchMoments
    sigma: jax.Array
    finite: jax.Array


@jit_entry("key", "hessian", "n_out", "mesh")
def chunk_statistics(
    f: Fn,
    params: Any,
    xs: jax.Array,
    n_kept: jax.Array,
    *,
    key: Any,
    hessian: bool,
    n_out: int,
    mesh: Mesh,
) -> ChunkStatistics:
    """Moments of the derivatives of the first ``n_kept`` rows of ``xs: (B, n_in)``.

    The rows are split over ``mesh``; each device computes its rows' derivatives and their
    moments, and one ``psum`` combines the devices: only the moments and the ``B`` numbers
    ``σ_max`` leave the devices. Compiled once per (``f``, route key, chunk shape, mesh).
    """
    axis = mesh.axis_names[0]
    mask = jnp.arange(xs.shape[0], dtype=jnp.int32) < n_kept

    def local(params, xs, mask):
        batch, n_in = xs.shape
        values, jac, hess = _programs.values_and_derivatives(f, params, xs, key, hessian=hessian)
        values = values.reshape(batch, n_out)  # a scalar f counts as n_out = 1
        jac = jac.reshape(batch, n_out, n_in)
        summands = {"values": values, "grad": jac, "abs_grad": jnp.abs(jac)}
        summands["sq_grad"] = jnp.square(jac)
        finite = jnp.all(jnp.isfinite(values), axis=1) & jnp.all(jnp.isfinite(jac), axis=(1, 2))
        if hessian:
            hess = hess.reshape(batch, n_out, n_in, n_in)
            summands["abs_hess"] = jnp.abs(hess)
            finite &= jnp.all(jnp.isfinite(hess), axis=(1, 2, 3))
        moments = reduce_rows(summands, mask, "moments", axis)
        return ChunkStatistics(moments, measures.largest_singular_value(jac), finite)

    rows = P(axis)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), rows, rows),
        out_specs=ChunkStatistics(P(), rows, rows),
        check_vma=False,  # as in jaxjac.sharding: the replicated params are not summed
    )(params, xs, mask)


def _host_chunk(stats: ChunkStatistics, rows: np.ndarray) -> measures.Chunk:
    """A chunk's device statistics as a float64 host :class:`~jaxjac.measures.Chunk`."""
    count = int(stats.moments.count)
    mean, m2 = stats.moments.mean, stats.moments.m2

    def host(name: str) -> Moments | None:
        if name not in mean:
            return None
        return Moments(count, np.asarray(mean[name], np.float64), np.asarray(m2[name], np.float64))

    return measures.Chunk(
        values=host("values"),
        grad=host("grad"),
        abs_grad=host("abs_grad"),
        sq_grad=host("sq_grad"),
        abs_hess=host("abs_hess"),
        sigma=np.asarray(stats.sigma, np.float64)[: rows.shape[0]],
        rows=rows,
    )


# --- non-finite rows ---------------------------------------------------------------------------


def _finite_rows(block: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: every entry of the row is finite (integer data always is)."""
    if block.dtype.kind != "f":
        return np.ones(block.shape[0], bool)
    return np.all(np.isfinite(block), axis=1)


def _nonfinite_error(
    block: np.ndarray, row: int, local: int, names: Sequence[str] | None
) -> NonFiniteInputError:
    """The error for data row ``row`` (0-based), row ``local`` of ``block``."""
    cols = np.flatnonzero(~np.isfinite(block[local]))
    return NonFiniteInputError(row, cols.tolist(), block[local, cols].tolist(), names)


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


# --- checkpoints -------------------------------------------------------------------------------


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


_EXTRA = "extra."

# The fingerprint's own entries, in the words of a refused resume.
_FINGERPRINT_WORDS = {
    "f": "model function",
    "params_sha256": "model parameters",
    "data_shape": "data shape",
    "data_dtype": "data dtype",
    "data_probe_sha256": "data",
    "version": "checkpoint version",
}


def _json_ready(value: Any) -> Any:
    """JSON-ready plain values (NumPy scalars and arrays become Python numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))


def fingerprint(
    f: Fn,
    params: Any,
    data: np.ndarray,
    *,
    options: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (the chunk size may differ).

    Args:
        f: the model.
        params: its parameters (hashed).
        data: ``(N, n_in)`` (its shape, dtype and first and last rows are hashed).
        options: the run's options that change the results.
        extra: the caller's own entries (a data file's size, say), JSON-ready; a refused resume
            names them by their keys.
    """
    return _json_ready(
        {
            "version": _CHECKPOINT_VERSION,
            "f": _describe_fn(f),
            "params_sha256": _sha256_params(params),
            "data_shape": list(data.shape),
            "data_dtype": str(data.dtype),
            "data_probe_sha256": _sha256_probe(data),
            **options,
            **{f"{_EXTRA}{k}": v for k, v in extra.items()},
        }
    )


def _config_hash(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


class Progress(NamedTuple):
    """How far a run got: whole chunks only.

    Attributes:
        rows_done: data rows consumed, kept or dropped.
        n_dropped: rows skipped for non-finite inputs.
        state: the measures accumulated over the kept rows.
    """

    rows_done: int
    n_dropped: int
    state: measures.State


def remove_checkpoint(folder: str | Path) -> None:
    """Delete the checkpoint files in ``folder`` (if any)."""
    for name in (CHECKPOINT_NPZ, CHECKPOINT_JSON):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(folder) / name)


class CheckpointStore:
    """The checkpoint files of one run in ``folder``, for its fingerprint.

    Args:
        folder: the checkpoint folder (created if missing).
        fingerprint: what a resumed run must match (:func:`fingerprint`).
        interval_s: seconds between checkpoints (``0``: after every chunk).
    """

    def __init__(self, folder: str | Path, fingerprint: Mapping[str, Any], interval_s: float):
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)
        self.config_hash = _config_hash(self.fingerprint)
        self.interval_s = interval_s
        self.meta_path = self.folder / CHECKPOINT_JSON
        self.npz_path = self.folder / CHECKPOINT_NPZ

    def start(self) -> None:
        """A fresh run: forget any earlier checkpoint, then record what this one is for."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.npz_path)
        text = json.dumps(
            {"config_hash": self.config_hash, "fingerprint": self.fingerprint}, indent=2
        )
        atomic_write(self.meta_path, lambda h: h.write(text.encode()))

    def save(self, done: Progress) -> None:
        """Write the accumulators after ``done.rows_done`` rows (atomically)."""
        arrays = {
            "config_hash": np.array(self.config_hash),
            "rows_done": np.array(done.rows_done, np.int64),
            "n_dropped": np.array(done.n_dropped, np.int64),
            **measures.state_arrays(done.state),
        }
        atomic_write(self.npz_path, lambda h: np.savez(h, **arrays))

    def _differences(self, saved: Mapping[str, Any]) -> list[str]:
        mine = self.fingerprint
        keys = {k for k in {*saved, *mine} if saved.get(k) != mine.get(k)}
        return sorted({_FINGERPRINT_WORDS.get(k, k.removeprefix(_EXTRA)) for k in keys})

    def open(self, *, resume: bool, like: measures.State) -> Progress | None:
        """Start the checkpoint, or with ``resume`` load it: the saved progress, if any.

        Args:
            resume: continue from a checkpoint made for this run, if there is one.
            like: the empty state of this run (:func:`jaxjac.measures.init`).

        Returns:
            The saved progress; ``None`` for a fresh start or a checkpoint without a finished
            chunk.

        Raises:
            CheckpointMismatchError: for a checkpoint made with different inputs.
            CheckpointError: for an unreadable one.
        """
        if not (resume and self.meta_path.exists()):
            self.start()
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            meta = json.loads(self.meta_path.read_text())
            saved = meta["fingerprint"]
            if not isinstance(saved, dict):
                raise TypeError(f"fingerprint is a {type(saved).__name__}, not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                self.meta_path,
                f"{self.meta_path}: expected a jaxjac checkpoint description ({err})",
            ) from None
        if meta.get("config_hash") != self.config_hash:
            raise CheckpointMismatchError(self.folder, self._differences(saved))
        if not self.npz_path.exists():
            return None  # interrupted before the first chunk finished
        try:
            with np.load(self.npz_path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            if str(arrays["config_hash"]) != self.config_hash:
                raise ValueError("its accumulators belong to another run")
            return Progress(
                rows_done=int(arrays["rows_done"]),
                n_dropped=int(arrays["n_dropped"]),
                state=measures.state_from_arrays(arrays, like),
            )
        except (ValueError, KeyError, OSError) as err:
            raise CheckpointError(
                self.npz_path,
                f"{self.npz_path}: expected a readable checkpoint matching {self.meta_path}: {err}",
            ) from None


# --- the streaming loop ------------------------------------------------------------------------


class _NoBar:
    def update(self, n: int) -> None:
        del n


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


def _pad(block: np.ndarray, size: int) -> np.ndarray:
    """Pad ``(B, n)`` to ``(size, n)`` with copies of the last row (finite, so harmless)."""
    if block.shape[0] == size:
        return block
    return np.concatenate([block, np.repeat(block[-1:], size - block.shape[0], axis=0)])


def run(
    program: ChunkProgram,
    data: np.ndarray,
    state: measures.State,
    *,
    feature_names: Sequence[str],
    drop_nonfinite: bool = False,
    store: CheckpointStore | None = None,
    resume: bool = False,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Progress:
    """Stream ``data: (N, n_in)`` through ``program`` into ``state``, chunk by chunk.

    Args:
        program: from :func:`prepare` (its ``chunk`` sets the rows read at a time).
        data: the examples; a memory map is read one chunk at a time.
        state: the empty measures state (:func:`jaxjac.measures.init`).
        feature_names: ``n_in`` names, for the errors about non-finite inputs.
        drop_nonfinite: skip rows with NaN or inf (counted) instead of failing.
        store: where to keep checkpoints, or ``None``. A checkpoint is written after a chunk
            once ``store.interval_s`` have passed, after the last chunk, and when the run stops
            early (an exception, Ctrl-C).
        resume: continue from the checkpoint in ``store`` (if any).
        progress: draw a progress bar on stderr when it is a terminal (needs tqdm).
        on_chunk: called as ``on_chunk(rows_done, N)`` after every chunk; an exception raised
            there stops the run, and the checkpoint then holds every chunk up to that one.

    Returns:
        The progress after the last row.

    Raises:
        NonFiniteInputError: for a non-finite input row without ``drop_nonfinite`` (before any
            checkpoint is written when not resuming).
        NonFiniteDerivativeError: for non-finite derivatives at a finite row.
        NoFiniteRowsError: when every row was dropped.
        CheckpointMismatchError, CheckpointError: for a checkpoint that cannot be resumed.
    """
    n_rows = data.shape[0]
    if not drop_nonfinite and not resume:
        _check_finite(
            data, 0, feature_names
        )  # before anything is written: a refused run writes none
    done = Progress(0, 0, state)
    if store is not None:
        loaded = store.open(resume=resume, like=state)
        if loaded is not None:
            done = loaded
    if not drop_nonfinite and resume:
        _check_finite(data, done.rows_done, feature_names)

    saved = done
    last_save = time.monotonic()
    try:
        with _progress_bar(n_rows, done.rows_done, progress) as bar:
            while done.rows_done < n_rows:
                start = done.rows_done
                stop = min(start + program.chunk, n_rows)
                block = np.asarray(data[start:stop])
                rows = np.arange(start, stop, dtype=np.int64)
                finite = _finite_rows(block)
                if not finite.all():
                    if not drop_nonfinite:  # the file changed since the scan
                        local = int(np.argmin(finite))
                        raise _nonfinite_error(block, start + local, local, feature_names)
                    block, rows = block[finite], rows[finite]
                measured = done.state
                if block.shape[0]:
                    stats = chunk_statistics(
                        program.f,
                        program.params,
                        jnp.asarray(_pad(block, program.rows), dtype=program.dtype),
                        np.int32(block.shape[0]),  # the mask: padding rows are left out
                        key=program.key,
                        hessian=program.hessian,
                        n_out=program.n_out,
                        mesh=program.mesh,
                    )
                    ok = np.asarray(stats.finite)[: block.shape[0]]
                    if not ok.all():
                        raise NonFiniteDerivativeError(int(rows[int(np.argmin(ok))]))
                    measured = measures.update(measured, _host_chunk(stats, rows))
                done = Progress(stop, done.n_dropped + int(np.sum(~finite)), measured)
                if store is not None and (
                    stop == n_rows or time.monotonic() - last_save >= store.interval_s
                ):
                    store.save(done)
                    saved, last_save = done, time.monotonic()
                bar.update(stop - start)
                if on_chunk is not None:
                    on_chunk(stop, n_rows)
    except BaseException:
        # Interrupted (an error, Ctrl-C, on_chunk stopping the run): keep every finished chunk.
        # ``done`` only ever holds whole chunks, so it is consistent whatever was cut short.
        if store is not None and done.rows_done > saved.rows_done:
            with contextlib.suppress(OSError):
                store.save(done)
        raise
    if done.state.values.n == 0:
        raise NoFiniteRowsError(n_rows)
    return done
