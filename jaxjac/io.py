"""Reading models and data from files, safely, and converting models from Flax and Equinox.

Every reader refuses rather than guesses: a file that does not hold what it should raises
:class:`ValueError` (or :class:`FileNotFoundError`) with one sentence saying what was expected
and what was found. Nothing is ever unpickled (``allow_pickle=False`` everywhere), so a data or
model file cannot run code. A file's first bytes are checked against its suffix (NPY header for
``.npy``, zip for ``.npz``, a MAT header for ``.mat``) before it is parsed, and a corrupt archive
member is reported as such, never as numpy's or zlib's own exception.

Layouts:

* **Model files** (``.npz``, MATLAB ``.mat``) hold arrays named ``W1, b1, …, Wn, bn`` for the
  network ``A = W_n σ(… σ(W_1 x + b_1) …) + b_n``; ``W_l`` has shape ``(out, in)`` and ``b_l``
  shape ``(out,)`` (a MATLAB column ``(out, 1)`` or row ``(1, out)`` is accepted). Layers are
  numbered from 1: ``W0`` or ``W01`` is refused, not skipped. They load into the jaxjac layout: a
  list with one ``{"W": (out, in), "b": (out,)}`` dict per layer.
* **Data files**: ``.npy`` of shape ``(N, n_in)`` (memory-mapped, so files larger than RAM
  stream), or UTF-8 ``.csv`` with one example per row, with or without a header row of distinct,
  non-empty feature names; messages give the file's line numbers, blank lines included.
* **Flax** ``nn.Dense`` stores ``kernel`` as ``(in, out)``: the transpose of ``W``.
  **Equinox** ``eqx.nn.Linear`` stores ``weight`` as ``(out, in)``: the same as ``W``.
"""

from __future__ import annotations

import csv
import itertools
import re
import tokenize
import zipfile
import zlib
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
# Any W<digits>/b<digits> name is a layer name; only W1, b1, … (no 0, no leading zeros) are valid.
_LAYER_NAME = re.compile(r"^([Wb])([0-9]+)$")

# What numpy and zipfile raise for a corrupt archive or member (found by flipping every byte of
# small np.savez and np.savez_compressed files): a bad CRC, a bad deflate stream, a mangled
# header, a "compression method" or "encrypted" flag that was never set.
_CORRUPT = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive


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


def _head(path: Path, size: int = 128) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _is_mat_header(head: bytes) -> bool:
    """The test scipy.io.loadmat applies: a v4 matrix header, or a v5/v7/v7.3 128-byte header."""
    if len(head) >= 4 and 0 in head[:4]:
        return any(head[:20])  # v4: the type word has a zero byte; all zeros is no header
    if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
        return False
    major = head[125] if head[126:128] == b"IM" else head[124]  # version word, endian-tagged
    return major in (1, 2)


def _describe(head: bytes) -> str:
    """What a file's first bytes look like, for 'expected …, found …' messages."""
    if not head:
        return "an empty file"
    if head.startswith(_NPY_MAGIC):
        return "a .npy array (NPY header)"
    if head.startswith(_ZIP_MAGICS):
        return "a zip archive (such as .npz)"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file"
    if head.startswith(b"MATLAB") and _is_mat_header(head):  # v4 has no recognisable start
        return "a MATLAB .mat file"
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle (refusing to unpickle)"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    text = head.decode("utf-8", errors="ignore")  # a cut multi-byte character at the end is fine
    if text and len(text) * 2 >= len(head) and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"text starting {' '.join(text.split())[:40]!r}"
    return f"binary data starting {head[:8]!r}"


def _detail(err: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return (" ".join(str(err).split()) or type(err).__name__)[:200]


def _mentions_objects(err: BaseException) -> bool:
    # numpy's refusal of object arrays; its text suggests allow_pickle, which we never repeat
    text = str(err).lower()
    return "pickle" in text or "object" in text


# --- model files ------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    expected = f"{path}: expected an .npz archive (zip file) of arrays W1, b1, …, Wn, bn"
    head = _head(path)
    if not head.startswith(_ZIP_MAGICS):  # else numpy tries pickle and advises allow_pickle
        raise ValueError(f"{expected}; found {_describe(head)}")
    arrays = {}
    # Our own handle: numpy leaks the file it opened when the zip directory is unreadable.
    with path.open("rb") as handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except _CORRUPT as err:
            raise ValueError(f"{expected}; could not read it: {_detail(err)}") from None
        with archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]  # a member is decompressed and parsed only here
                except _CORRUPT as err:
                    if isinstance(err, ValueError) and _mentions_objects(err):
                        raise ValueError(
                            f"{key} in {path} holds Python objects: expected a numeric array "
                            "(refusing to unpickle)"
                        ) from None
                    raise ValueError(
                        f"{expected}; found a corrupt member {key!r}: {_detail(err)}"
                    ) from None
    return arrays


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    try:
        import scipy.io
    except ImportError:
        raise ValueError(
            f"{path}: reading MATLAB files needs scipy, found none: pip install 'jaxjac[io]'"
        ) from None

    head = _head(path)
    if not _is_mat_header(head):  # else scipy's own wording ("Unknown mat file type, version …")
        raise ValueError(
            f"{path}: expected a MATLAB .mat file (a v4 to v7 header) with arrays W1, b1, …; "
            f"found {_describe(head)}"
        )
    try:
        raw = scipy.io.loadmat(path, squeeze_me=False, mat_dtype=False)
    except NotImplementedError:
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file is not supported: expected a v7 or older MAT "
            "file (save with -v7) or an .npz"
        ) from None
    except Exception as err:  # scipy raises several unrelated types for a corrupt file
        raise ValueError(
            f"{path}: expected a MATLAB .mat file with arrays W1, b1, …; could not read it: "
            f"{_detail(err)}"
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
    layer_keys = [key for key in arrays if _LAYER_NAME.match(key)]
    # W0 or W01 is not silently ignored: a model numbered from 0 would lose its first layer.
    stray = [key for key in layer_keys if key[1] == "0"]
    if stray:
        stray.sort(key=lambda key: (int(key[1:]), key))
        raise ValueError(
            f"{where}: expected layers numbered from 1 (W1, b1, …) without leading zeros; "
            f"found {', '.join(stray)}"
        )
    found = set(layer_keys)
    if not found:
        names = sorted(arrays)[:8]
        raise ValueError(
            f"{where}: expected arrays named W1, b1, …, Wn, bn; found {names or 'no arrays'}"
        )
    n_layers = max(int(key[1:]) for key in found)
    n_missing = 2 * n_layers - len(found)
    if n_missing:
        # The first few only, found without walking up to a huge stray number such as W99999999.
        names = (f"{p}{i}" for i in range(1, n_layers + 1) for p in "Wb")
        missing = list(itertools.islice((n for n in names if n not in found), 8))
        more = f", … ({n_missing} in all)" if n_missing > len(missing) else ""
        raise ValueError(
            f"{where}: expected W1, b1, …, W{n_layers}, b{n_layers} (layers 1 to {n_layers}); "
            f"missing {', '.join(missing)}{more}"
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
        ValueError: for a file whose header does not match its suffix, a corrupt file, object
            arrays, layers not numbered from 1, or missing or inconsistent layers.
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
    expected = f"{path}: expected a .npy file (NPY header) holding an array (N, n_in)"
    head = _head(path)
    if not head.startswith(_NPY_MAGIC):  # else numpy tries pickle, or opens a zip as .npz
        raise ValueError(f"{expected}; found {_describe(head)}")
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except _CORRUPT as err:
        if isinstance(err, ValueError) and _mentions_objects(err):
            raise ValueError(
                f"{path}: expected a numeric array (N, n_in); found Python objects "
                "(refusing to unpickle)"
            ) from None
        raise ValueError(f"{expected}; could not read it: {_detail(err)}") from None
    _numeric("data", values, path)
    if values.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array (N, n_in), found shape {values.shape}")
    return Dataset(values, None)


def _parse_cell(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _first_non_utf8(path: Path) -> tuple[int, int] | None:
    """1-based line and value of the first byte that is not UTF-8, or ``None``."""
    with path.open("rb") as handle:
        # Splitting at b"\n" is safe: no byte of a multi-byte UTF-8 character is 0x0A.
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, line[err.start]
    return None


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows, each with the 1-based line it starts on."""
    rows: list[tuple[int, list[str]]] = []
    line = 1
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    rows.append((line, row))
                line = reader.line_num + 1  # a quoted cell may span lines
        except csv.Error as err:
            if "field limit" in str(err):
                raise ValueError(
                    f"{path}: line {reader.line_num}: expected cells of at most "
                    f"{csv.field_size_limit()} characters, found a longer one"
                ) from None
            raise ValueError(
                f"{path}: line {reader.line_num}: expected comma-separated cells, found "
                f"malformed CSV ({_detail(err)})"
            ) from None
        except UnicodeDecodeError as err:
            # The decoder reads ahead in blocks, so the line is found again in the raw bytes.
            where = _first_non_utf8(path)
            line, byte = where if where is not None else (line, err.object[err.start])
            raise ValueError(
                f"{path}: line {line}: expected UTF-8 text, found byte 0x{byte:02x}, which is "
                "not UTF-8 (a Latin-1 or Windows-1252 file? save it as UTF-8)"
            ) from None
    return rows


def _columns(numbers: list[int]) -> str:
    """``column 3`` or ``columns 1, 2 and 5``."""
    if len(numbers) == 1:
        return f"column {numbers[0]}"
    return f"columns {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"


def _check_header(path: Path, line: int, names: tuple[str, ...]) -> None:
    """Refuse empty or repeated column names: each feature must be told apart in the results."""
    columns: dict[str, list[int]] = {}
    for c, name in enumerate(names, start=1):
        columns.setdefault(name, []).append(c)
    problems = [
        f"{name!r} in {_columns(cols)}" for name, cols in columns.items() if name and len(cols) > 1
    ]
    if "" in columns:
        problems.append(f"an empty name in {_columns(columns[''])}")
    if problems:
        raise ValueError(
            f"{path}: line {line}: expected a distinct, non-empty name for every header column, "
            f"found {'; '.join(problems)}"
        )


def _load_csv(path: Path) -> Dataset:
    rows = _read_csv_rows(path)
    if not rows:
        raise ValueError(f"{path}: expected comma-separated numbers, found an empty file")
    first_line, first = rows[0][0], [c.strip() for c in rows[0][1]]
    numeric = [_parse_cell(c) is not None for c in first]
    names: tuple[str, ...] | None = None
    if not any(numeric):
        names = tuple(first)
        _check_header(path, first_line, names)
        rows = rows[1:]
    elif not all(numeric):
        bad = first[numeric.index(False)]
        raise ValueError(
            f"{path}: first row (line {first_line}) mixes numbers and text ({bad!r}): expected "
            "a header of names only or a data row of numbers only"
        )
    width = len(first)
    if not rows:
        raise ValueError(f"{path}: expected at least one data row, found only a header")
    values = np.empty((len(rows), width), np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"{path}: data row {r + 1} (line {line}) has {len(row)} cells: expected {width} "
                f"like the first row (line {first_line})"
            )
        for c, cell in enumerate(row):
            value = _parse_cell(cell.strip())
            if value is None:
                column = f"{c + 1} ({names[c]!r})" if names else f"{c + 1}"
                raise ValueError(
                    f"{path}: data row {r + 1} (line {line}), column {column}: "
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
        ValueError: for a file whose header does not match its suffix, object arrays, wrong rank,
            a CSV that is not UTF-8, malformed, or has non-numeric or ragged cells (naming the
            1-based data row, file line and column), or empty or repeated header names.
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


_FLAX_ORDER = "Dense_0, Dense_1, … (one prefix, numbered in the order the layers apply)"


def _shown_names(names: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _layer_order(names: list[Any]) -> list[Any]:
    """The layer names in the order of their numbers, refusing names that do not give one.

    Numbered names with one prefix give the order (``Dense_0, Dense_1, …``; ``layers_0,
    layers_2, …`` from ``nn.Sequential``, whose activations take the odd numbers; integer keys).
    Names without any number (``proj``, ``head``) give none: their dict order is no guide, as
    ``jax.tree`` and optax operations return dicts with sorted keys, so more than one of them
    is refused (``layer_order`` names the order). A mix of prefixes, or numbered and unnumbered
    names together, has no order to go by either; linen numbers its ``Dense`` layers from 0
    without gaps, so a missing ``Dense_k`` is a missing layer.
    """
    keys = [_natural_key(n) for n in names]
    numbered = [n for n, key in zip(names, keys, strict=True) if key[1] >= 0]
    if not numbered:
        if len(names) == 1:
            return names
        raise ValueError(
            f"Flax layers: expected names that give the layer order, {_FLAX_ORDER}; found "
            f"{_shown_names(names)}, which carry no number: their dict order is not the order "
            "the layers apply (jax.tree and optax operations sort dict keys), so pass "
            "layer_order=[...] naming the layers in the order they apply"
        )
    prefixes = sorted({key[0] for key in keys if key[1] >= 0})
    mixed = []
    if len(prefixes) > 1:
        mixed.append(f"the prefixes {', '.join(map(repr, prefixes))}")
    if len(numbered) < len(names):
        mixed.append("numbered and unnumbered names")
    if mixed:
        raise ValueError(
            f"Flax layers: expected names that give the layer order, {_FLAX_ORDER}; found "
            f"{_shown_names(names)}, which mix {' and '.join(mixed)} (rename them Dense_0, "
            "Dense_1, … in the order the layers apply, or pass layer_order=[...])"
        )
    ordered = sorted(names, key=_natural_key)
    if prefixes == ["Dense_"]:
        numbers = [_natural_key(n)[1] for n in ordered]
        present = set(numbers)
        # The first few only, found without walking up to a huge stray number (Dense_99999999).
        gaps = (i for i in range(numbers[-1] + 1) if i not in present)
        missing = list(itertools.islice(gaps, 8))
        if missing or len(present) < len(numbers):
            n = len(numbers)
            expected = (
                ", ".join(f"Dense_{i}" for i in range(n))
                if n <= 3
                else f"Dense_0, Dense_1, …, Dense_{n - 1}"
            )
            problem = (
                f"missing {', '.join(f'Dense_{i}' for i in missing)}"
                + (", …" if numbers[-1] + 1 - len(present) > len(missing) else "")
                if missing
                else "a repeated number"
            )
            raise ValueError(
                f"Flax layers: expected {expected} in order (linen numbers its Dense layers "
                f"from 0 without gaps); found {_shown_names(ordered)} ({problem})"
            )
    return ordered


def _layer_dicts(
    variables: Mapping[str, Any], order: Sequence[Any] | None = None
) -> list[tuple[Any, Mapping[str, Any]]]:
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
        found = "an empty dict" if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(
            "expected Flax variables {'params': {'Dense_0': {'kernel', 'bias'}, …}}, found "
            f"{found}"
        )
    if "kernel" in tree:
        raise ValueError(
            f"expected Flax variables with one entry per layer, {_FLAX_ORDER}, each holding "
            f"'kernel' and 'bias'; found one layer's entries {sorted(map(str, tree))}"
        )
    for name, layer in tree.items():  # a foreign layer first: no order makes it convertible
        if not isinstance(layer, Mapping) or "kernel" not in layer:
            found = sorted(map(str, layer)) if isinstance(layer, Mapping) else type(layer).__name__
            raise ValueError(
                f"Flax layer {name!r}: expected a dense layer with 'kernel' (in, out), "
                f"found {found}"
            )
    if order is None:
        return [(name, tree[name]) for name in _layer_order(list(tree))]
    order = list(order)
    if sorted(map(str, order)) != sorted(map(str, tree)) or len(set(order)) != len(order):
        raise ValueError(
            f"layer_order must name every Flax layer once: expected an order of "
            f"{_shown_names(list(tree))}, got {_shown_names(order)}"
        )
    return [(name, tree[name]) for name in order]


def from_flax_dense_params(
    variables: Mapping[str, Any],
    *,
    dtype: Any = None,
    layer_order: Sequence[Any] | None = None,
) -> MLPParams:
    """Convert the parameters of a Flax stack of ``Dense``/``Linear`` layers to jaxjac's layout.

    Works for ``flax.linen`` modules that call ``nn.Dense`` in sequence (``Dense_0``,
    ``Dense_1``, … or ``nn.Sequential``'s ``layers_0``, ``layers_2``, …) and for ``flax.nnx``
    states turned into plain dicts (``nnx.to_pure_dict(nnx.state(model, nnx.Param))``). Layers are
    taken in the numeric order of their names; names without numbers (``Dense(3, name="proj")``)
    need ``layer_order``, as their dict order is lost to the sorted keys of ``jax.tree`` and optax
    operations.
    The activation is not part of the parameters: pass the matching jaxjac activation name.

    Args:
        variables: ``{"params": {name: {"kernel": (in, out), "bias": (out,)}}}`` or the inner
            dict; a layer without ``bias`` (``use_bias=False``) gets zeros.
        dtype: dtype of the returned leaves; ``None`` keeps the kernel's.
        layer_order: the layer names in the order the layers apply, for names that give no
            order of their own (``["hidden", "out"]``); ``None`` orders them by number, and
            refuses more than one layer whose names carry no number.

    Returns:
        A list of ``{"W": kernel.T (out, in), "b": (out,)}``.

    Raises:
        ValueError: for names that give no layer order without ``layer_order`` (names
            without numbers, a mix of prefixes, numbered and unnumbered names together, a
            missing ``Dense_k``: the message names the order expected and the names found), a
            layer that is not dense or shapes that do not chain.
    """
    params: MLPParams = []
    for name, layer in _layer_dicts(variables, layer_order):
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
