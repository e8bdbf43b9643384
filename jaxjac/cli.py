"""The ``jaxjac`` command line.

Every subcommand is a function ``run_<name>(args) -> int``; :func:`main` turns the expected
failures (bad files, shapes, options) into one line on stderr and exit code 2, never a traceback.
When the reader of stdout goes away early (``jaxjac sensitivity … | head``), the command exits
quietly with code 141, what a shell reports for a program ended by SIGPIPE: the files are
written, only the printed text was cut short.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = ["CLIError", "build_parser", "main"]


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


# The CLI computes every derivative in this dtype (x64 is enabled first); report.json records it.
_DTYPE = np.dtype(np.float64)
_CLI_EXTRA = "pip install 'jaxjac[cli]'"


def _package_version() -> str:
    """The installed version, read from the package metadata (without importing jax)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxjac")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def _require(module: str, purpose: str) -> None:
    """Import an optional dependency of the CLI before any computing starts, or refuse."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise CLIError(
            f"{purpose} needs {module}, which could not be imported ({detail}): {_CLI_EXTRA}"
        ) from None


def _enable_x64() -> None:
    # The CLI is an application entry point: float64 for the demo's and reports' numbers.
    import jax

    jax.config.update("jax_enable_x64", True)


def _print_matrix(name: str, a: np.ndarray, indent: str = "  ") -> None:
    print(f"{name}:")
    text = np.array2string(np.asarray(a), precision=6, suppress_small=True, max_line_width=100)
    print("\n".join(indent + line for line in text.splitlines()))


def run_demo(args: argparse.Namespace) -> int:
    """Closed-form Jacobian and Hessian of a small tansig network, cross-checked."""
    _enable_x64()
    import jax
    import jax.numpy as jnp

    import jaxjac as jj
    from jaxjac.cross_check import cross_check

    sizes = [3, 5, 4, 2]
    params = jj.mlp_init(jax.random.key(args.seed), sizes, dtype=_DTYPE)
    x = jnp.array([0.5, -1.0, 2.0])
    print(f"jaxjac {jj.__version__} demo: tansig MLP {sizes}, seed {args.seed}, {_DTYPE}")
    print("tansig(z) = 2/(1+exp(-2z)) - 1 (MATLAB), f' = 1 - f², f'' = -2 f (1 - f²)")
    z = jnp.linspace(-50.0, 50.0, 10001)
    tansig = jj.get_activation("tansig")
    gap = float(jnp.max(jnp.abs(tansig.f(z) - jnp.tanh(z))))
    print(f"  max |tansig - tanh| on [-50, 50]: {gap:.1e}")
    wrong = 1 / (1 + jnp.exp(-2 * z)) - 1
    print(
        f"  the circulating 1/(1+exp(-2z)) - 1 has range ({float(wrong.min()):.0f}, "
        f"{float(wrong.max()):.0f}): not tansig"
    )
    print(f"\nx = {np.asarray(x)}")
    print(f"A(x) = {np.asarray(jj.mlp_apply(params, x))}")
    print(
        f"  outputs A_1 … A_{sizes[-1]}, inputs x_1 … x_{sizes[0]} and layers W1 … "
        f"W{len(sizes) - 1} are numbered from 1"
    )
    _print_matrix(
        "Jacobian dA/dx = W3 diag(σ'(z2)) W2 diag(σ'(z1)) W1  (n_out, n_in)",
        jj.closed_form.mlp_jacobian(params, x),
    )
    hess = jj.closed_form.mlp_hessian(params, x)
    for k in range(sizes[-1]):
        _print_matrix(f"Hessian d²A_{k + 1}/dx²  (n_in, n_in)", hess[k])
    report = cross_check(params, x)
    print("\nCross-check of every route (closed form, autodiff, finite differences):")
    print(report)

    def textbook(_, v):
        return jnp.stack([v[0] + v[1], v[0] * v[1]])

    point = jnp.array([-1.0, 2.0])
    jac = jj.input_jacobian(textbook, None, point)
    print("\nTextbook example f(x, y) = (x + y, xy) at (-1, 2):")
    _print_matrix("Jacobian [[1, 1], [y, x]]", jac)
    det = float(jj.jacobian_det(lambda v: textbook(None, v), point))
    print(
        f"  det J = x - y = {det:.6g}: the map scales area by {abs(det):.6g} and flips orientation"
    )
    return 0 if report.passed else 1


# --- sensitivity ------------------------------------------------------------------------------

_OUTPUTS = ("sensitivity.csv", "report.json", "sensitivity.png", "interactions.png")


class _StopAfter(Exception):
    """Raised from the chunk callback when --max-chunks is reached (the checkpoint is saved)."""


def _parse_floats(text: str, option: str, expected: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise CLIError(f"{option}: expected {expected}, found {text!r}") from None
    if not all(np.isfinite(values)):
        raise CLIError(f"{option}: expected finite numbers, found {text!r}")
    return values


def _parse_bounds(text: str, n_in: int) -> np.ndarray:
    """``LO:HI`` for every feature, or ``LO:HI,LO:HI,…`` with one interval per feature."""
    expected = f"LO:HI or {n_in} comma-separated LO:HI intervals with LO < HI"
    parts = text.split(",")
    if len(parts) not in (1, n_in) or any(part.count(":") != 1 for part in parts):
        raise CLIError(f"--bounds: expected {expected}, found {text!r}")
    pairs = [_parse_floats(part.replace(":", ","), "--bounds", expected) for part in parts]
    bounds = np.broadcast_to(np.array(pairs, np.float64), (n_in, 2))
    if np.any(bounds[:, 1] <= bounds[:, 0]):
        raise CLIError(f"--bounds: expected {expected}, found {text!r}")
    return bounds


def _parse_sigma(text: str, n_in: int) -> np.ndarray:
    expected = f"one standard deviation or {n_in} comma-separated ones, all positive"
    values = _parse_floats(text, "--sigma", expected)
    if len(values) not in (1, n_in) or min(values) <= 0:
        raise CLIError(f"--sigma: expected {expected}, found {text!r}")
    return np.square(np.broadcast_to(np.array(values, np.float64), (n_in,)))


def _output_folder(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {path}: expected a folder (existing or new), found a file")
    # mkdir would fail with a bare "[Errno 20] Not a directory" when an ancestor is a file.
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CLIError(
                    f"--out {path}: expected a folder (existing or new), found a file at {ancestor}"
                )
            break
    return path


def _remove_results(folder: Path) -> None:
    """Remove an earlier run's results, so a failed or stopped run leaves none behind."""
    for name in _OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _devices(requested: int | None) -> list:
    """The first ``requested`` local devices (all by default), refusing more than there are."""
    local = _local_devices()
    if requested is not None and requested > len(local):
        raise CLIError(
            f"--devices {requested}: expected at most {len(local)} (the local devices), found "
            f"{requested} requested"
        )
    return local[: requested or len(local)]


def _versions() -> dict[str, str]:
    import jax
    import jaxlib

    import jaxjac

    return {
        "jaxjac": jaxjac.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def _write_results(folder: Path, report: Any, summary: dict[str, Any], hessian: bool) -> list[Path]:
    """Write every output to a temporary file, then rename them all: no partial result."""
    from jaxjac._files import atomic_write_all
    from jaxjac.plots import plot_interactions, plot_sensitivity

    def text(content: str) -> Callable[[Any], None]:
        return lambda handle: handle.write(content.encode())

    writers: dict[str, Callable[[Any], None]] = {
        "sensitivity.csv": text(report.to_csv()),
        "report.json": text(json.dumps(summary, indent=2, allow_nan=False) + "\n"),
        "sensitivity.png": lambda handle: plot_sensitivity(report, handle),
    }
    if hessian:
        writers["interactions.png"] = lambda handle: plot_interactions(report, handle)
    written = atomic_write_all({folder / name: write for name, write in writers.items()})
    for stale in set(_OUTPUTS) - set(writers):  # an earlier run's file is not this run's result
        with contextlib.suppress(FileNotFoundError):
            (folder / stale).unlink()
    return written


def _print_summary(
    report: Any, sizes: list[int], activation: str, dtype: np.dtype, seconds: float
) -> None:
    print(
        f"jaxjac sensitivity: MLP {sizes} ({activation}), {dtype}, {report.n_samples} rows "
        f"used, {report.n_dropped} dropped, {report.route.replace('_', ' ')} route, "
        f"{seconds:.2f} s"
    )
    for line in report.summary_lines(outputs=10, features=5):
        print(line)
    where = f"data row {report.lipschitz.argmax_index + 1}, 1-based"
    print(report.lipschitz_line(where, mean=False))


# The CLI's own fingerprint entries, in the words of a refused --resume.
_FINGERPRINT_WORDS = {
    "data_file": "data file path",
    "data_size": "data file size",
    "data_mtime_ns": "data file modification time",
}
_START_OVER = "start over without --resume, or remove the checkpoint folder"


def _in_cli_words(err: ValueError, data: str) -> Exception:
    """The library's structured errors as one line with the CLI's options and the data file."""
    from jaxjac import errors

    if isinstance(err, errors.NonFiniteInputError):
        return CLIError(f"{data}: {err.facts}; pass --drop-nonfinite to skip such rows")
    if isinstance(err, (errors.NonFiniteDerivativeError, errors.NoFiniteRowsError)):
        return CLIError(f"{data}: {err.facts}")
    if isinstance(err, errors.CheckpointMismatchError):
        differ = sorted({_FINGERPRINT_WORDS.get(d, d) for d in err.differences})
        return CLIError(
            f"the checkpoint in {err.path} was made for different inputs ({', '.join(differ)} "
            f"differ): expected the same model, data and options to resume; {_START_OVER}"
        )
    if isinstance(err, errors.CheckpointError):
        return CLIError(f"{err.facts}; {_START_OVER}")
    return err


def run_sensitivity(args: argparse.Namespace) -> int:
    """Sensitivity measures of an MLP file over a data file: CSV, JSON and plots in a folder."""
    started = time.perf_counter()
    _enable_x64()
    from jaxjac.activations import get_activation, list_activations
    from jaxjac.io import load_data, load_params
    from jaxjac.nets import validate_mlp_params
    from jaxjac.sensitivity import CHECKPOINT_JSON, mlp_function, remove_checkpoint, sensitivity

    if args.activation.lower() not in list_activations():
        raise CLIError(
            f"--activation: expected one of {', '.join(list_activations())}, "
            f"found {args.activation!r}"
        )
    activation = get_activation(args.activation).name
    devices = _devices(args.devices)
    _require("matplotlib", "writing the plots")  # checked before hours of computing
    if Path(args.params).suffix.lower() == ".mat":
        _require("scipy.io", "reading a MATLAB .mat model")
    folder = _output_folder(Path(args.out))
    params = load_params(args.params)
    sizes = validate_mlp_params(params)
    data = load_data(args.data)
    n_rows, width = data.values.shape
    if width != sizes[0]:
        raise CLIError(
            f"{args.data}: data has {width} columns but the model in {args.params} expects "
            f"{sizes[0]} inputs (W1 has shape ({sizes[1]}, {sizes[0]}))"
        )
    if args.bounds is not None and args.sigma is not None:
        raise CLIError("--bounds and --sigma: expected at most one of them, found both")
    bounds = _parse_bounds(args.bounds, width) if args.bounds is not None else None
    variances = _parse_sigma(args.sigma, width) if args.sigma is not None else None
    loaded = time.perf_counter()

    folder.mkdir(parents=True, exist_ok=True)
    # Computing starts here: the folder's results (if any) are an earlier run's, and a resumed
    # run rewrites them all at the end, so none may stay beside this run's checkpoint.
    _remove_results(folder)
    resuming = args.resume and (folder / CHECKPOINT_JSON).exists()
    if args.resume and not resuming:  # even with --quiet: a mistyped --out shows here
        print(
            f"jaxjac sensitivity: no checkpoint in {folder}: starting from the first row",
            file=sys.stderr,
        )
    stat = Path(args.data).stat()
    fingerprint = {
        "data_file": str(Path(args.data).resolve()),
        "data_size": stat.st_size,
        "data_mtime_ns": stat.st_mtime_ns,
        "activation": activation,
    }
    chunks_done = 0

    def on_chunk(rows_done: int, total: int) -> None:
        nonlocal chunks_done
        chunks_done += 1
        if args.max_chunks is not None and chunks_done >= args.max_chunks and rows_done < total:
            raise _StopAfter(f"{rows_done} of {total} rows")

    try:
        report = sensitivity(
            mlp_function(activation),
            params,
            data.values,
            chunk_size=args.chunk_size,
            feature_names=data.feature_names,
            hessian=args.hessian,
            bounds=bounds,
            variances=variances,
            drop_nonfinite=args.drop_nonfinite,
            checkpoint=folder,
            resume=args.resume,
            keep_checkpoint=True,
            fingerprint=fingerprint,
            progress=not args.quiet,
            on_chunk=on_chunk,
            devices=devices,
            dtype=_DTYPE,
        )
    except ValueError as err:
        raise _in_cli_words(err, args.data) from None
    except KeyboardInterrupt:
        print(
            f"jaxjac sensitivity: interrupted; checkpoint in {folder}: rerun with --resume to "
            "continue",
            file=sys.stderr,
        )
        return 130
    except _StopAfter as stop:
        print(
            f"jaxjac sensitivity: stopped after {chunks_done} chunks ({stop}); checkpoint in "
            f"{folder}: rerun with --resume to continue",
            file=sys.stderr,
        )
        return 3
    computed = time.perf_counter()
    summary = {
        "command": "jaxjac sensitivity",
        "model": {
            "file": str(args.params),
            "sizes": sizes,
            "activation": activation,
            "n_params": int(sum(np.size(layer["W"]) + np.size(layer["b"]) for layer in params)),
        },
        "data": {
            "file": str(args.data),
            "rows": n_rows,
            "rows_used": report.n_samples,
            "rows_dropped": report.n_dropped,
            "n_in": width,
        },
        "options": {
            "chunk_size": args.chunk_size,
            "hessian": args.hessian,
            "bounds": bounds.tolist() if bounds is not None else None,
            "sigma": np.sqrt(variances).tolist() if variances is not None else None,
            "drop_nonfinite": args.drop_nonfinite,
            "dtype": str(_DTYPE),
            "devices": len(devices),
            "resumed": resuming,
        },
        "timings_s": {
            "load": loaded - started,
            "compute": computed - loaded,
            "total_before_writing": computed - started,
        },
        "versions": _versions(),
        "results": report.to_dict(),
    }
    written = _write_results(folder, report, summary, args.hessian)
    remove_checkpoint(folder)
    if not args.quiet:
        _print_summary(report, sizes, activation, _DTYPE, computed - started)
        print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _add_sensitivity_parser(sub: Any) -> None:
    cmd = sub.add_parser(
        "sensitivity",
        help="derivative-based sensitivity of an MLP file over a data file",
        description=(
            "Per output and feature: mean |df/dx|, the DGSM E[(df/dx)^2] with standard errors, "
            "the Sobol total-index bound (with --bounds or --sigma), interaction strengths "
            "(--hessian) and Lipschitz figures. Writes sensitivity.csv, report.json, "
            "sensitivity.png (and interactions.png) to --out."
        ),
    )
    cmd.add_argument("--params", required=True, help="model: .npz or .mat with W1, b1, …, Wn, bn")
    cmd.add_argument("--data", required=True, help="examples: .npy (N, n_in) or .csv")
    cmd.add_argument("--activation", default="tansig", help="hidden activation (default tansig)")
    cmd.add_argument(
        "--out",
        default="sensitivity-out",
        help="output folder (default %(default)s); result files of an earlier run there are "
        "removed when computing starts, also with --resume (they are rewritten at the end), "
        "so a failed or stopped run leaves only its checkpoint",
    )
    cmd.add_argument(
        "--chunk-size", type=_positive_int, default=4096, help="rows per chunk (default 4096)"
    )
    cmd.add_argument(
        "--devices",
        type=_positive_int,
        default=None,
        help="split each chunk over the first N local devices (default: all of them)",
    )
    cmd.add_argument("--hessian", action="store_true", help="also E|d2f/dxi dxj|, interactions.png")
    cmd.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    cmd.add_argument(
        "--drop-nonfinite", action="store_true", help="skip rows with NaN/inf instead of failing"
    )
    cmd.add_argument(
        "--bounds",
        help="inputs uniform on LO:HI (all features) or LO:HI,LO:HI,… (one per feature), "
        "e.g. --bounds -1:1",
    )
    cmd.add_argument(
        "--sigma", help="inputs normal with this standard deviation (one, or one per feature)"
    )
    cmd.add_argument(
        "--max-chunks",
        type=_positive_int,
        help="stop after this many chunks, keeping the checkpoint (exit 3); resume later",
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    cmd.set_defaults(run=run_sensitivity)


def _local_devices() -> list:
    import jax

    return jax.local_devices()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit 2), like the rest."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# Options whose value may start with "-" (a negative lower bound): argparse would take
# "--bounds -1:1" for a missing value followed by an option "-1:1", so the value is attached.
_SIGNED_VALUE_OPTIONS = ("--bounds", "--sigma")


def _attach_signed_values(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--bounds -1:1`` as ``--bounds=-1:1`` (and ``--sigma`` alike) before parsing.

    Only a value starting with a single ``-`` is attached: ``--bounds --hessian`` still reports
    the missing value, ``-h`` still asks for help, and everything after ``--`` is left alone.
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out += args[i:]
            break
        value = args[i + 1] if i + 1 < len(args) else ""
        signed = value.startswith("-") and not value.startswith("--") and value != "-h"
        if token in _SIGNED_VALUE_OPTIONS and signed:
            out.append(f"{token}={value}")
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="jaxjac", description="Exact derivatives of neural networks in JAX.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Jacobian, Hessian and cross-check of a small network")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the network (default 0)")
    demo.set_defaults(run=run_demo)
    _add_sensitivity_parser(sub)
    return parser


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe again."""
    # As the Python docs advise ("Note on SIGPIPE" in the signal module).
    with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor (captured)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected failures exit 2 with one line on stderr.

    Returns:
        The exit code: 0 on success, 2 for bad input, 130 when interrupted, 141 (as for SIGPIPE)
        when stdout is a pipe closed early, and what the subcommand returns otherwise (``jaxjac
        demo``: 1 when the routes disagree; ``jaxjac sensitivity``: 3 when ``--max-chunks``
        stopped it).
    """
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_attach_signed_values(raw))
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:  # an OSError: caught first, as a reader leaving early is no error
        _stdout_to_devnull()
        return 141
    except (CLIError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"jaxjac {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxjac {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
