r"""Batched derivatives sharded over devices and hosts, with JAX's own sharding.

**One wrapper for every batched helper.** :func:`sharded` takes any function with a batch
argument (``xs`` or ``x``, batch axis first): the autodiff helpers
(:func:`jaxjac.batch_input_jacobian`, :func:`jaxjac.batch_input_hessian`,
:func:`jaxjac.batch_weight_jacobian`), the calculus ones (:func:`jaxjac.batch_laplacian`,
:func:`jaxjac.batch_log_abs_det_jacobian`, …), the closed forms
(:func:`jaxjac.closed_form.mlp_laplacian`, …) and the Jacobian statistics below. It returns a
function with the helper's signature that

* splits the batch axis over a 1-D :class:`jax.sharding.Mesh` (``NamedSharding`` with
  ``PartitionSpec("batch")``) and runs the helper on each device's rows inside
  :func:`jax.shard_map`; array arguments such as ``params`` (and the arrays bound in a
  ``functools.partial(net, params)``) are replicated, everything else is a static option;
* pads a batch that the device count does not divide with copies of its last row (a valid
  input: zeros could be a singular point, giving ``-inf``/NaN in ``log|det J|``) and trims the
  result;
* chunks within each device: the helper's own ``chunk_size`` applies to the local rows, and
  ``sharded(..., chunk_size=c)`` chunks any helper, closed forms included;
* compiles once per (helper, static options, shapes, mesh): one module-level :func:`jax.jit`
  keyed on all of them, the arrays traced.

Layouts: results are the helper's, batch axis first, ``(B,) + per-example shape``. When the
device count ``D`` divides ``B`` they come back sharded ``P("batch")`` over every device. When it
does not, jax 0.10.2 cannot hold the trimmed ``(B, …)`` result evenly sharded (a
``NamedSharding`` must tile every axis evenly), so it comes back replicated ``P()``: use batches
that ``D`` divides for large per-example results, or a reduction (which pads internally).

**Reductions.** ``sharded(helper, reduce="sum")`` sums the per-example results over the batch
and ``reduce="moments"`` returns (count, mean, M2), the state of Chan, Golub and LeVeque's
parallel variance update. Each device reduces its own rows, one :func:`jax.lax.psum` combines
the devices, and the small result comes back replicated on every device: nothing of size ``B``
is gathered. Moments combine stably: each device takes its mean and ``M2`` in two passes over
its rows, and ``M2 = Σ_d [M2_d + n_d (mean_d - mean)²]`` (every term non-negative, no
``E[x²] - E[x]²`` cancellation). Padded rows, and rows whose ``mask`` entry is ``False``, have
weight 0 (selected out with ``where``, so a non-finite value there cannot leak in). The same
reduction is :func:`reduce_rows`, for programs of one's own inside :func:`jax.shard_map`.
:func:`jaxjac.batch_jacobian_gram` (``JᵀJ``), :func:`jaxjac.batch_jacobian_abs_sq` (``|J|`` and
``J²``) and :func:`jaxjac.batch_jacobian_norm` (``‖J‖_F``) give the usual summands; e.g.
``E[JᵀJ]`` is ``sharded(batch_jacobian_gram, reduce="sum")(f, params, xs)``, ``total / count``.

**Several hosts.** :func:`initialize_from_env` calls :func:`jax.distributed.initialize` from
``JAXJAC_COORDINATOR`` (``host:port`` of process 0), ``JAXJAC_NUM_PROCESSES`` and
``JAXJAC_PROCESS_ID``; afterwards ``jax.devices()`` lists every host's devices and
:func:`make_mesh` spans them all. Each host reads only its rows (:func:`host_slice`) and
:func:`global_batch` assembles the hosts' chunks into one global array (with
:func:`jax.make_array_from_process_local_data`) plus its mask. Every host must run the same
sequence of sharded calls (collectives wait for all hosts), hence the same number of chunks:
iterate up to the largest slice, ``ceil(n_rows / process_count)`` rows, and a host whose slice
is exhausted contributes a fully masked chunk. On CPU the cross-process collectives are gloo's
(jax 0.10.2's default ``jax_cpu_collectives_implementation``); the tests run two processes on
127.0.0.1 this way.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxjac import _moments
from jaxjac._checks import positive_int
from jaxjac._chunks import map_chunks
from jaxjac._jit import PartialHead, jit_entry, join_partial, split_partial

__all__ = [
    "BatchMoments",
    "BatchSum",
    "global_batch",
    "host_slice",
    "initialize_from_env",
    "make_mesh",
    "reduce_rows",
    "sharded",
]

Devices = Mesh | int | Sequence[jax.Device] | None
Reduce = Literal["sum", "moments"]
_REDUCE = (None, "sum", "moments")
_ENV_VARS = ("JAXJAC_COORDINATOR", "JAXJAC_NUM_PROCESSES", "JAXJAC_PROCESS_ID")


class BatchSum(NamedTuple):
    """A sum over the (unmasked) examples of a batch, replicated on every device.

    Attributes:
        count: ``()`` integer, the number of examples summed.
        total: pytree like one example's result: the result's leaves without the batch axis.
    """

    count: jax.Array
    total: Any


class BatchMoments(NamedTuple):
    """Count, mean and ``M2 = Σ (x - mean)²`` over the (unmasked) examples, replicated.

    The fields of Chan et al.'s parallel update; the sample variance is ``m2 / (count - 1)``.
    With ``count == 0``, ``mean`` and ``m2`` are zero.

    Attributes:
        count: ``()`` integer.
        mean: pytree like one example's result.
        m2: pytree like one example's result.
    """

    count: jax.Array
    mean: Any
    m2: Any


# --- meshes ------------------------------------------------------------------------------------


def make_mesh(devices: Devices = None, *, axis_name: str = "batch") -> Mesh:
    """A one-axis mesh to shard the batch over.

    Args:
        devices: ``None`` for every device of :func:`jax.devices` (the local ones, or every
            host's after :func:`jax.distributed.initialize`); an int ``n`` for the first ``n``;
            a sequence of devices; or a :class:`~jax.sharding.Mesh`, returned as it is.
        axis_name: name of the mesh axis the batch is split along.

    Returns:
        A :class:`~jax.sharding.Mesh` with the axis ``axis_name``.

    Raises:
        ValueError: on a count outside ``1 … len(jax.devices())``, no devices, or a mesh without
            ``axis_name``.
    """
    if isinstance(devices, Mesh):
        if axis_name not in devices.axis_names:
            raise ValueError(f"mesh has axes {devices.axis_names}, not {axis_name!r}")
        return devices
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}, but {len(available)} devices are available")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must not be empty")
    return Mesh(np.array(chosen), (axis_name,))


# --- the sharded call --------------------------------------------------------------------------


class _Spec(NamedTuple):
    """Everything static about one sharded call but the helper: with it, the jit cache key."""

    mesh: Mesh
    axis_name: str
    batch_name: str
    static: tuple[tuple[str, Any], ...]
    heads: tuple[tuple[str, PartialHead], ...]
    n_rows: int
    chunk_size: int | None
    reduce: str | None


def _is_arrays(value: Any) -> bool:
    """Arrays, or a container of arrays and Python floats (``{"scale": 2.0}`` params).

    A bare Python number stays a static option (``chunk_size=256``).
    """
    leaves, treedef = jax.tree_util.tree_flatten(value)
    arrays = (jax.Array, np.ndarray, np.generic)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:  # a bare leaf
        return isinstance(value, arrays)
    return bool(leaves) and all(isinstance(a, (*arrays, float, complex)) for a in leaves)


def _split_arguments(arguments: Mapping[str, Any]):
    """Split bound arguments into static options, partial heads and replicated arrays."""
    static, heads, dynamic = [], [], {}
    for name, value in arguments.items():
        split = split_partial(value)
        if split is not None:
            heads.append((name, split[0]))
            dynamic[name] = split[1]
        elif _is_arrays(value):
            dynamic[name] = value
        else:
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"argument {name!r} is neither arrays nor hashable (a static option), got "
                    f"{type(value).__name__}"
                ) from None
            static.append((name, value))
    return tuple(static), tuple(heads), dynamic


def _call(fn: Callable, spec: _Spec, dynamic: dict[str, Any], xs: jax.Array) -> Any:
    kwargs = dict(spec.static)
    kwargs.update(dynamic)
    for name, head in spec.heads:
        kwargs[name] = join_partial(head, dynamic[name])
    kwargs[spec.batch_name] = xs
    # Positionally where the signature allows: jit-cached helpers take ``f`` first, positionally.
    bound = inspect.signature(fn).bind(**kwargs)
    return fn(*bound.args, **bound.kwargs)


def _where_rows(mask: jax.Array, v: jax.Array) -> jax.Array:
    """Rows of ``v`` where ``mask``, zeros elsewhere (``where``, so NaN/inf rows drop out)."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (v.ndim - 1)), v, jnp.zeros((), v.dtype))


def reduce_rows(
    values: Any, mask: jax.Array, kind: Reduce, axis_name: str
) -> BatchSum | BatchMoments:
    """Reduce this device's rows over the batch, then over the devices with one ``psum``.

    Call it inside :func:`jax.shard_map` (or another map over ``axis_name``); the result is the
    same on every device.

    Args:
        values: pytree of this device's per-row values, leaves ``(b,) + shape``.
        mask: ``(b,)`` bool; rows where it is ``False`` weigh nothing (selected out with
            ``where``, so a non-finite value there cannot leak in).
        kind: ``"sum"`` for a :class:`BatchSum`, ``"moments"`` for :class:`BatchMoments`.
        axis_name: the mapped axis of the devices.

    Returns:
        The reduction over every device's unmasked rows, leaves ``shape``.
    """
    if kind not in _REDUCE[1:]:
        raise ValueError(f"kind must be one of {_REDUCE[1:]}, got {kind!r}")
    local_n = jnp.sum(mask)
    count = jax.lax.psum(local_n, axis_name)

    def total(v):
        return jax.lax.psum(jnp.sum(_where_rows(mask, v), axis=0), axis_name)

    if kind == "sum":
        return BatchSum(count, jax.tree_util.tree_map(total, values))

    def moments(v):
        # Two passes on this device's rows; mean 0 on a device without rows (it weighs 0).
        mean_d = jnp.sum(_where_rows(mask, v), axis=0) / jnp.maximum(local_n, 1).astype(v.dtype)
        m2_d = jnp.sum(jnp.square(_where_rows(mask, v - mean_d)), axis=0)
        m = _moments.combine_over_axis(_moments.Moments(local_n, mean_d, m2_d), axis_name)
        return m.mean, m.m2

    pairs = jax.tree_util.tree_map(moments, values)
    outer = jax.tree_util.tree_structure(values)
    mean, m2 = jax.tree_util.tree_transpose(outer, jax.tree_util.tree_structure((0, 0)), pairs)
    return BatchMoments(count, mean, m2)


@jit_entry("spec")
def _run(f: Callable, dynamic: dict[str, Any], xs: jax.Array, mask: Any, *, spec: _Spec) -> Any:
    """The compiled sharded call of the helper ``f``: once per (``f``, ``spec``, shapes)."""

    def local(dynamic, xs, mask):
        values = map_chunks(functools.partial(_call, f, spec, dynamic), xs, spec.chunk_size)
        if spec.reduce is None:
            return values
        return reduce_rows(values, mask, spec.reduce, spec.axis_name)

    batch = P(spec.axis_name)
    # check_vma=False: with JAX's tracking of which values vary over the batch axis, (1) the
    # replicated params are "invariant" and autodiff transposes their use into a psum, so a
    # per-example weight Jacobian would come back summed over devices, and (2) any loop in a
    # helper whose carry starts as a constant (the Laplacian's fori_loop) fails to trace. Every
    # value here is per device except the reductions' explicit psums, so nothing is lost.
    out = jax.shard_map(
        local,
        mesh=spec.mesh,
        in_specs=(P(), batch, batch),
        out_specs=batch if spec.reduce is None else P(),
        check_vma=False,
    )(dynamic, xs, mask)
    if spec.reduce is not None:
        return out
    even = spec.n_rows % spec.mesh.shape[spec.axis_name] == 0
    layout = NamedSharding(spec.mesh, batch if even else P())
    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a[: spec.n_rows], layout), out
    )


def _pad_rows(a: Any, pad: int, *, copy_last: bool) -> Any:
    """Append ``pad`` rows: copies of the last row, or zeros (``False`` for a mask)."""
    if pad == 0:
        return a
    lib = jnp if isinstance(a, jax.Array) else np
    a = lib.asarray(a)
    fill = lib.repeat(a[-1:], pad, axis=0) if copy_last else lib.zeros((pad, *a.shape[1:]), a.dtype)
    return lib.concatenate([a, fill])


def _batch_name(fn: Callable, sig: inspect.Signature, batch_arg: str | None) -> str:
    if batch_arg is not None:
        if batch_arg not in sig.parameters:
            raise ValueError(f"{batch_arg!r} is not an argument of {fn!r} {sig}")
        return batch_arg
    for name in ("xs", "x"):
        if name in sig.parameters:
            return name
    raise ValueError(f"{fn!r} {sig} has no argument 'xs' or 'x'; name the batch with batch_arg=")


def sharded(
    fn: Callable,
    devices: Devices = None,
    *,
    reduce: Reduce | None = None,
    chunk_size: int | None = None,
    axis_name: str = "batch",
    batch_arg: str | None = None,
) -> Callable:
    """Run a batched helper with its batch split over devices (see the module docstring).

    Args:
        fn: a function whose batch argument (``xs``, else ``x``, else ``batch_arg``) has the
            batch axis first and whose results all have it first, e.g.
            :func:`jaxjac.batch_input_jacobian` or :func:`jaxjac.closed_form.mlp_laplacian`.
        devices: as in :func:`make_mesh` (``None``: every device).
        reduce: ``None`` returns the per-example results; ``"sum"`` a :class:`BatchSum` and
            ``"moments"`` a :class:`BatchMoments` over the batch, replicated on every device.
        chunk_size: rows per step within each device (a loop over chunks bounds memory); this
            is on top of ``fn``'s own ``chunk_size``, which also applies per device.
        axis_name: the mesh axis of the batch.
        batch_arg: the batch argument's name, when it is neither ``xs`` nor ``x``.

    Returns:
        A function with ``fn``'s arguments (and, with ``reduce``, a keyword ``mask``: ``(B,)``
        bool, ``False`` rows are left out). Without ``reduce`` it returns ``fn``'s results,
        ``(B,) + per-example shape`` per leaf, sharded ``P(axis_name)`` when the device count
        divides ``B`` and replicated otherwise. Arrays among the other arguments (``params``,
        arrays bound in a ``functools.partial``) are replicated, the rest must be hashable:
        they are static options of the compiled program.

    Raises:
        ValueError: on an unknown ``reduce``, a bad ``chunk_size``, or no batch argument.
    """
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    positive_int("chunk_size", chunk_size, allow_none=True)
    mesh = make_mesh(devices, axis_name=axis_name)
    sig = inspect.signature(fn)
    batch_name = _batch_name(fn, sig, batch_arg)
    n_shards = mesh.shape[axis_name]
    rows, replicated = NamedSharding(mesh, P(axis_name)), NamedSharding(mesh, P())

    @functools.wraps(fn)
    def call(*args, **kwargs):
        mask = kwargs.pop("mask", None) if reduce is not None else None
        arguments = dict(sig.bind(*args, **kwargs).arguments)
        xs = arguments.pop(batch_name)
        if np.ndim(xs) < 1 or np.shape(xs)[0] == 0:
            raise ValueError(f"{batch_name} needs a non-empty batch axis, got {np.shape(xs)}")
        static, heads, dynamic = _split_arguments(arguments)
        n_rows = np.shape(xs)[0]
        pad = -n_rows % n_shards
        xs = jax.device_put(_pad_rows(xs, pad, copy_last=True), rows)
        if reduce is not None:
            if mask is None:
                mask = np.ones(n_rows, bool)
            elif np.shape(mask) != (n_rows,):
                raise ValueError(f"mask must have shape ({n_rows},), got {np.shape(mask)}")
            mask = jax.device_put(_pad_rows(mask, pad, copy_last=False), rows)
        spec = _Spec(mesh, axis_name, batch_name, static, heads, n_rows, chunk_size, reduce)
        return _run(fn, jax.device_put(dynamic, replicated), xs, mask, spec=spec)

    return call


# --- several hosts -----------------------------------------------------------------------------


def initialize_from_env(
    environ: Mapping[str, str] | None = None, *, initialization_timeout: int = 300
) -> bool:
    """Join a multi-host run described by ``JAXJAC_COORDINATOR``, ``…_NUM_PROCESSES``, ``…_ID``.

    Calls :func:`jax.distributed.initialize` (before any other JAX call of the process) with
    the coordinator's ``host:port`` (process 0 listens there), the number of processes and
    this process's id. With none of the variables set it does nothing: a single-host run.

    Args:
        environ: where to read the variables; ``os.environ`` by default.
        initialization_timeout: seconds to wait for every process to join.

    Returns:
        ``True`` if it initialized, ``False`` if the variables were absent.

    Raises:
        ValueError: if only some variables are set, or the count or id is invalid.
    """
    env = os.environ if environ is None else environ
    present = [name for name in _ENV_VARS if env.get(name)]
    if not present:
        return False
    if len(present) != len(_ENV_VARS):
        missing = [name for name in _ENV_VARS if name not in present]
        raise ValueError(f"set all of {_ENV_VARS} or none; missing {missing}")
    try:
        count, index = int(env[_ENV_VARS[1]]), int(env[_ENV_VARS[2]])
    except ValueError:
        raise ValueError(f"{_ENV_VARS[1:]} must be integers") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= process id < process count, got id {index}, count {count}")
    jax.distributed.initialize(
        coordinator_address=env[_ENV_VARS[0]],
        num_processes=count,
        process_id=index,
        initialization_timeout=initialization_timeout,
    )
    return True


def host_slice(
    n_rows: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """This host's contiguous share of ``n_rows`` data rows.

    Shares differ by at most one row and, in process order, tile ``range(n_rows)``: host ``i``
    of ``p`` gets ``[⌊n·i/p⌋, ⌊n·(i+1)/p⌋)``, at most ``ceil(n/p)`` rows.

    Args:
        n_rows: rows in the whole data file.
        process_index: this host; :func:`jax.process_index` by default.
        process_count: all hosts; :func:`jax.process_count` by default.

    Returns:
        A ``slice`` with ``step`` ``None``.
    """
    i = jax.process_index() if process_index is None else process_index
    p = jax.process_count() if process_count is None else process_count
    if n_rows < 0 or p < 1 or not 0 <= i < p:
        raise ValueError(f"need n_rows >= 0 and 0 <= index < count, got {n_rows}, {i}, {p}")
    return slice(n_rows * i // p, n_rows * (i + 1) // p)


def global_batch(
    local_rows: ArrayLike, size: int, devices: Devices = None, *, axis_name: str = "batch"
) -> tuple[jax.Array, jax.Array]:
    """One global batch from every host's chunk, padded to ``size`` rows per host, and its mask.

    Call it on every host with the same ``size`` (collectives need every host's chunk). The
    chunk is padded with copies of its last row (zeros if it is empty), masked out.

    Args:
        local_rows: ``(b,) + x.shape`` with ``b <= size``: this host's rows (``b = 0`` once its
            slice is exhausted).
        size: rows per host, a multiple of the host's devices in the mesh.
        devices: the mesh, as in :func:`make_mesh`.
        axis_name: the mesh axis of the batch.

    Returns:
        ``(xs, mask)``: ``(size · process_count,) + x.shape`` and ``(size · process_count,)``
        bool, sharded ``P(axis_name)``, hosts' rows in process order.
    """
    mesh = make_mesh(devices, axis_name=axis_name)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    if size < 1 or size % local_devices:
        raise ValueError(f"size must be a positive multiple of {local_devices}, got {size}")
    local = np.asarray(local_rows)
    b = local.shape[0]
    if b > size:
        raise ValueError(f"{b} local rows exceed size={size}")
    if b == 0:
        local = np.zeros((1, *local.shape[1:]), local.dtype)  # a placeholder row, masked out
    padded = _pad_rows(local, size - local.shape[0], copy_last=True)
    layout = NamedSharding(mesh, P(axis_name))
    mask = np.arange(size) < b
    return (
        jax.make_array_from_process_local_data(layout, padded),
        jax.make_array_from_process_local_data(layout, mask),
    )
