"""Reading models and data from files, safely, and converting models from Flax and Equinox.

Every reader refuses rather than guesses: a file that does not hold what it should raises
:class:`ValueError` (or :class:`FileNotFoundError`) with one sentence saying what was expected
and what was found. Nothing is ever unpickled (``allow_pickle=False`` everywhere), so a data or
model file cannot run code.

Layouts:

* **Model files** (``.npz``, MATLAB ``.mat``) hold arrays named ``W1, b1, …, Wn, bn`` for the
  network ``A = W_n σ(… σ(W_1 x + b_1) …) + b_n``; ``W_l`` has shape ``(out, in)`` and ``b_l``
  shape ``(out,)`` (a MATLAB column ``(out, 1)`` or row ``(1, out)`` is accepted). They load into
  the jaxjac layout: a list with one ``{"W": (out, in), "b": (out,)}`` dict per layer.
* **Data files**: ``.npy`` of shape ``(N, n_in)`` (memory-mapped, so files larger than RAM
  stream), or ``.csv`` with one example per row, with or without a header row of feature names.
* **Flax** ``nn.Dense`` stores ``kernel`` as ``(in, out)``: the transpose of ``W``.
  **Equinox** ``eqx.nn.Linear`` stores ``weight`` as ``(out, in)``: the same as ``W``.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxjac.activations import get_activation, list_activations
from jaxjac.nets import MLPParams

__all__ = [
    "Dataset",
    "from_equinox_mlp",
    "from_flax_dense_params",
    "load_data",
    "load_params",
    "match_activation",
    "params_from_arrays",
    "save_params",
]

# Canonical names first, so that aliases (poslin, sigmoid, swish, …) are not what is reported.
_PREFERRED = (
    "tansig",
    "tanh",
    "logsig",
    "relu",
    "softplus",
    "gelu",
    "gelu_tanh",
    "silu",
    "purelin",
)
_LAYER_NAME = re.compile(r"^([Wb])([1-9][0-9]*)$")


class Dataset(NamedTuple):
    """Examples read from a data file.

    Attributes:
        values: ``(N, n_in)``; a read-only memory map for ``.npy`` (rows are read on demand),
            a float64 array for ``.csv``.
        feature_names: one name per column from a CSV header, else ``None``.
    """

    values: np.ndarray
    feature_names: tuple[str, ...] | None


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: expected an existing file, found nothing at {path}")
    if not path.is_file():
        raise ValueError(f"{what}: expected a file, found a directory at {path}")
    return path


def _numeric(name: str, array: np.ndarray, where: Path) -> np.ndarray:
    """Refuse anything but a real (bool, integer or floating) array."""
    kind = array.dtype.kind
    if kind == "O":
        raise ValueError(
            f"{name} in {where} holds Python objects: expected a numeric array "
            "(refusing to unpickle)"
        )
    if kind not in "biuf":
        raise ValueError(
            f"{name} in {where}: expected a real numeric array, found dtype {array.dtype}"
        )
    return array


# --- model files ------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it is a single .npy array, not an .npz archive")
            arrays = {}
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError:
                    raise ValueError(
                        f"{key} holds Python objects: expected a numeric array "
                        "(refusing to unpickle)"
                    ) from None
            return arrays
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{path}: expected an .npz archive of arrays W1, b1, …, Wn, bn; could not read it: "
            f"{detail[:200]}"
        ) from None


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    try:
        import scipy.io
    except ImportError:
        raise ValueError(
            f"{path}: reading MATLAB files needs scipy, found none: pip install 'jaxjac[io]'"
        ) from None

    try:
        raw = scipy.io.loadmat(path, squeeze_me=False, mat_dtype=False)
    except NotImplementedError:
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file is not supported: expected a v7 or older MAT "
            "file (save with -v7) or an .npz"
        ) from None
    except Exception as err:  # scipy raises several unrelated types for a corrupt file
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{path}: expected a MATLAB .mat file with arrays W1, b1, …; could not read it: "
            f"{detail[:200]}"
        ) from None
    return {key: value for key, value in raw.items() if not key.startswith("__")}


def _as_bias(name: str, b: np.ndarray, where: Path) -> np.ndarray:
    if b.ndim == 2 and 1 in b.shape:
        b = b.reshape(-1)  # MATLAB stores vectors as (out, 1) columns
    if b.ndim != 1:
        raise ValueError(f"{name} in {where}: expected a vector (out,), found shape {b.shape}")
    return b


def params_from_arrays(
    arrays: Mapping[str, np.ndarray], where: str | Path = "model", *, dtype: Any = np.float64
) -> MLPParams:
    """Assemble ``W1, b1, …, Wn, bn`` into the jaxjac layout, checking every shape.

    Args:
        arrays: name to array; names other than ``W<k>``/``b<k>`` are ignored.
        where: the file named in error messages.
        dtype: floating dtype of the returned leaves (float64 by default: exact for float32
            files, so derivatives are computed in double precision).

    Returns:
        A list of ``{"W": (out, in), "b": (out,)}``, layer 1 first.

    Raises:
        ValueError: naming the missing array or the inconsistent shapes found.
    """
    where = Path(where)
    found = {m.group(1) + m.group(2): m for key in arrays if (m := _LAYER_NAME.match(key))}
    if not found:
        names = sorted(arrays)[:8]
        raise ValueError(
            f"{where}: expected arrays named W1, b1, …, Wn, bn; found {names or 'no arrays'}"
        )
    n_layers = max(int(m.group(2)) for m in found.values())
    missing = [f"{p}{i}" for i in range(1, n_layers + 1) for p in "Wb" if f"{p}{i}" not in found]
    if missing:
        raise ValueError(
            f"{where}: expected W1, b1, …, W{n_layers}, b{n_layers} (layers 1 to {n_layers}); "
            f"missing {', '.join(missing)}"
        )
    params: MLPParams = []
    for i in range(1, n_layers + 1):
        w = np.asarray(_numeric(f"W{i}", np.asarray(arrays[f"W{i}"]), where))
        b = _as_bias(
            f"b{i}", np.asarray(_numeric(f"b{i}", np.asarray(arrays[f"b{i}"]), where)), where
        )
        if w.ndim != 2:
            raise ValueError(f"W{i} in {where}: expected a matrix (out, in), found shape {w.shape}")
        if b.shape[0] != w.shape[0]:
            raise ValueError(
                f"b{i} in {where}: expected {w.shape[0]} entries to match W{i} of shape "
                f"{w.shape}, found shape {b.shape}"
            )
        if i > 1 and w.shape[1] != params[-1]["W"].shape[0]:
            prev = params[-1]["W"].shape
            raise ValueError(
                f"W{i} in {where}: expected {prev[0]} columns to match W{i - 1} of shape {prev}, "
                f"found shape {w.shape}"
            )
        for name, leaf in ((f"W{i}", w), (f"b{i}", b)):
            if not np.all(np.isfinite(leaf)):
                raise ValueError(f"{name} in {where}: expected finite numbers, found NaN or inf")
        params.append({"W": w.astype(dtype), "b": b.astype(dtype)})
    return params


def load_params(path: str | Path, *, dtype: Any = np.float64) -> MLPParams:
    """Read an MLP from an ``.npz`` or MATLAB ``.mat`` file holding ``W1, b1, …, Wn, bn``.

    Args:
        path: ``.npz`` (read with ``allow_pickle=False``) or ``.mat`` (MATLAB v4 to v7, via
            :func:`scipy.io.loadmat`; v7.3 HDF5 files are refused).
        dtype: floating dtype of the returned leaves.

    Returns:
        A list of ``{"W": (out, in), "b": (out,)}`` numpy arrays, layer 1 first.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: for an unreadable file, object arrays, or missing or inconsistent layers.
    """
    path = _existing_file(path, "model file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path)
    elif suffix == ".mat":
        arrays = _read_mat(path)
    else:
        raise ValueError(f"{path}: expected a model file ending in .npz or .mat, found {suffix!r}")
    return params_from_arrays(arrays, path, dtype=dtype)


def save_params(path: str | Path, params: MLPParams) -> Path:
    """Write an MLP as ``W1, b1, …, Wn, bn`` to ``.npz`` or MATLAB ``.mat`` (by suffix).

    Args:
        path: destination ending in ``.npz`` or ``.mat``.
        params: list of ``{"W": (out, in), "b": (out,)}``.

    Returns:
        The path written.
    """
    path = Path(path)
    arrays = {}
    for i, layer in enumerate(params, start=1):
        arrays[f"W{i}"] = np.asarray(layer["W"])
        arrays[f"b{i}"] = np.asarray(layer["b"])
    if path.suffix.lower() == ".npz":
        np.savez(path, **arrays)
    elif path.suffix.lower() == ".mat":
        import scipy.io

        scipy.io.savemat(
            path, {k: v.reshape(-1, 1) if k[0] == "b" else v for k, v in arrays.items()}
        )
    else:
        raise ValueError(f"{path}: expected a destination ending in .npz or .mat")
    return path


# --- data files -------------------------------------------------------------------------------


def _load_npy(path: Path) -> Dataset:
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "object" in str(err).lower():
            raise ValueError(
                f"{path}: expected a numeric array (N, n_in); found Python objects "
                "(refusing to unpickle)"
            ) from None
        raise ValueError(
            f"{path}: expected a .npy array (N, n_in); could not read it: {err}"
        ) from None
    except (OSError, EOFError) as err:
        raise ValueError(
            f"{path}: expected a .npy array (N, n_in); could not read it: {err}"
        ) from None
    _numeric("data", values, path)
    if values.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array (N, n_in), found shape {values.shape}")
    return Dataset(values, None)


def _parse_cell(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _load_csv(path: Path) -> Dataset:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path}: expected comma-separated numbers, found an empty file")
    first = [c.strip() for c in rows[0]]
    numeric = [_parse_cell(c) is not None for c in first]
    names: tuple[str, ...] | None = None
    line_offset = 1  # 1-based line number of data row 1 (blank lines are not counted)
    if not any(numeric):
        names = tuple(first)
        rows = rows[1:]
        line_offset = 2
    elif not all(numeric):
        bad = first[numeric.index(False)]
        raise ValueError(
            f"{path}: row 1 mixes numbers and text ({bad!r}): expected a header of names only "
            "or a data row of numbers only"
        )
    width = len(first)
    if not rows:
        raise ValueError(f"{path}: expected at least one data row, found only a header")
    values = np.empty((len(rows), width), np.float64)
    for r, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"{path}: data row {r + 1} (line {r + line_offset}) has {len(row)} cells: "
                f"expected {width} like row 1"
            )
        for c, cell in enumerate(row):
            value = _parse_cell(cell.strip())
            if value is None:
                column = f"{c + 1} ({names[c]!r})" if names else f"{c + 1}"
                raise ValueError(
                    f"{path}: data row {r + 1} (line {r + line_offset}), column {column}: "
                    f"expected a number, found {cell.strip()[:40]!r}"
                )
            values[r, c] = value
    return Dataset(values, names)


def load_data(path: str | Path) -> Dataset:
    """Read examples from ``.npy`` (memory-mapped) or ``.csv`` (header optional).

    A CSV's first row is a header when none of its cells is a number, data when all are; a mix is
    refused. Non-finite values (``nan``, ``inf``) are read as such: the sensitivity pipeline
    decides whether to refuse or skip those rows.

    Args:
        path: ``.npy`` holding a numeric ``(N, n_in)`` array, or ``.csv``.

    Returns:
        A :class:`Dataset`; ``values`` is ``(N, n_in)``.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: for object arrays, wrong rank, non-numeric or ragged CSV cells (naming the
            1-based data row and column).
    """
    path = _existing_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = _load_npy(path)
    elif suffix == ".csv":
        data = _load_csv(path)
    else:
        raise ValueError(f"{path}: expected a data file ending in .npy or .csv, found {suffix!r}")
    if data.values.shape[0] == 0:
        raise ValueError(f"{path}: expected at least one data row, found none")
    return data


# --- converters -------------------------------------------------------------------------------


def _natural_key(name: Any) -> tuple:
    """Order ``Dense_2`` before ``Dense_10`` and integer keys numerically."""
    if isinstance(name, int):
        return ("", name)
    match = re.match(r"^(.*?)(\d+)$", str(name))
    return (match.group(1), int(match.group(2))) if match else (str(name), -1)


def _layer_dicts(variables: Mapping[str, Any]) -> list[tuple[Any, Mapping[str, Any]]]:
    tree: Any = variables
    if isinstance(tree, Mapping) and "params" in tree and len(tree) <= 2:
        tree = tree["params"]  # linen: {"params": {...}} (maybe with "batch_stats")
    # nnx.Sequential and similar wrap the numbered layers in one more level: {"layers": {0: …}}.
    while (
        isinstance(tree, Mapping)
        and len(tree) == 1
        and isinstance(only := next(iter(tree.values())), Mapping)
        and "kernel" not in only
    ):
        tree = only
    if not isinstance(tree, Mapping) or not tree:
        raise ValueError(
            "expected Flax variables {'params': {'Dense_0': {'kernel', 'bias'}, …}}, found "
            f"{type(tree).__name__}"
        )
    names = list(tree)
    if all(_natural_key(n)[1] >= 0 for n in names):
        names.sort(key=_natural_key)
    return [(name, tree[name]) for name in names]


def from_flax_dense_params(variables: Mapping[str, Any], *, dtype: Any = None) -> MLPParams:
    """Convert the parameters of a Flax stack of ``Dense``/``Linear`` layers to jaxjac's layout.

    Works for ``flax.linen`` modules that call ``nn.Dense`` in sequence (``Dense_0``,
    ``Dense_1``, … or ``nn.Sequential``'s ``layers_0``, ``layers_2``, …) and for ``flax.nnx``
    states turned into plain dicts (``nnx.to_pure_dict(nnx.state(model, nnx.Param))``). Layers are
    taken in the numeric order of their names (insertion order when names carry no number).
    The activation is not part of the parameters: pass the matching jaxjac activation name.

    Args:
        variables: ``{"params": {name: {"kernel": (in, out), "bias": (out,)}}}`` or the inner
            dict; a layer without ``bias`` (``use_bias=False``) gets zeros.
        dtype: dtype of the returned leaves; ``None`` keeps the kernel's.

    Returns:
        A list of ``{"W": kernel.T (out, in), "b": (out,)}``.

    Raises:
        ValueError: for a layer that is not dense or shapes that do not chain.
    """
    params: MLPParams = []
    for name, layer in _layer_dicts(variables):
        if not isinstance(layer, Mapping) or "kernel" not in layer:
            found = sorted(map(str, layer)) if isinstance(layer, Mapping) else type(layer).__name__
            raise ValueError(
                f"Flax layer {name!r}: expected a dense layer with 'kernel' (in, out), "
                f"found {found}"
            )
        kernel = np.asarray(layer["kernel"])
        if kernel.ndim != 2:
            raise ValueError(
                f"Flax layer {name!r}: expected kernel (in, out), found {kernel.shape}"
            )
        w = kernel.T
        b = (
            np.asarray(layer["bias"])
            if layer.get("bias") is not None
            else np.zeros(w.shape[0], w.dtype)
        )
        params.append({"W": w, "b": b})
    return _checked_conversion(params, dtype, "Flax")


def from_equinox_mlp(mlp: Any, *, dtype: Any = None) -> MLPParams:
    """Convert an ``equinox.nn.MLP`` to jaxjac's layout (the activation is matched separately).

    ``eqx.nn.Linear`` stores ``weight`` as ``(out, in)`` like jaxjac. The MLP must apply its
    activation on hidden layers only: ``final_activation`` must be the identity (checked on
    probe points), and ``in_size``/``out_size`` must not be ``"scalar"``. Use
    :func:`match_activation` on ``mlp.activation`` to find the jaxjac name.

    Args:
        mlp: an ``eqx.nn.MLP`` (anything with ``layers`` of ``weight``/``bias`` and
            ``final_activation``).
        dtype: dtype of the returned leaves; ``None`` keeps the weights'.

    Returns:
        A list of ``{"W": (out, in), "b": (out,)}`` (zeros where ``use_bias=False``).

    Raises:
        ValueError: for a non-identity final activation, scalar sizes, or a malformed layer.
    """
    layers = getattr(mlp, "layers", None)
    if not layers:
        raise ValueError(
            f"expected an equinox.nn.MLP with a tuple of Linear layers, found {type(mlp).__name__}"
        )
    if "scalar" in (getattr(mlp, "in_size", None), getattr(mlp, "out_size", None)):
        raise ValueError("expected an MLP with vector input and output, found in/out size 'scalar'")
    final = getattr(mlp, "final_activation", None)
    if final is not None:
        probe = np.linspace(-3.0, 3.0, 13)
        if not np.allclose(np.asarray(final(probe)), probe, rtol=0, atol=1e-12):
            raise ValueError(
                "expected an MLP whose final_activation is the identity (jaxjac's last layer "
                "is linear), found a non-identity final activation"
            )
    params: MLPParams = []
    for i, layer in enumerate(layers):
        weight = getattr(layer, "weight", None)
        if weight is None or np.ndim(weight) != 2:
            raise ValueError(
                f"Equinox layer {i}: expected a Linear with weight (out, in), found "
                f"{type(layer).__name__}"
            )
        w = np.asarray(weight)
        bias = getattr(layer, "bias", None)
        b = np.asarray(bias) if bias is not None else np.zeros(w.shape[0], w.dtype)
        params.append({"W": w, "b": b})
    return _checked_conversion(params, dtype, "Equinox")


def _checked_conversion(params: MLPParams, dtype: Any, source: str) -> MLPParams:
    arrays = {}
    for i, layer in enumerate(params, start=1):
        arrays[f"W{i}"], arrays[f"b{i}"] = layer["W"], layer["b"]
    dtype = dtype if dtype is not None else np.result_type(*(layer["W"] for layer in params))
    return params_from_arrays(arrays, f"{source} model", dtype=dtype)


def match_activation(fn: Callable[[Any], Any], *, names: Sequence[str] | None = None) -> str | None:
    """Find the registered jaxjac activation that computes the same values as ``fn``.

    Compares on 41 probe points in ``[-6, 6]`` (float64) to a relative tolerance of 1e-6, so
    ``jnp.tanh``, ``jax.nn.tanh`` and ``tansig`` all match (``tansig`` is preferred, being the
    MATLAB name); ``jax.nn.gelu`` (tanh approximation by default) matches ``gelu_tanh``.

    Args:
        fn: elementwise ``(...) -> (...)``.
        names: candidates in order of preference; default: every registered name.

    Returns:
        The first matching name, or ``None``.
    """
    probe = np.linspace(-6.0, 6.0, 41)
    try:
        target = np.asarray(fn(probe), np.float64)
    except Exception:  # an arbitrary callable: any failure means "no match"
        return None
    candidates = list(names) if names is not None else [*_PREFERRED, *list_activations()]
    for name in candidates:
        ref = np.asarray(get_activation(name).f(probe), np.float64)
        scale = max(1.0, float(np.max(np.abs(ref))))
        if target.shape == ref.shape and np.max(np.abs(target - ref)) <= 1e-6 * scale:
            return name
    return None
