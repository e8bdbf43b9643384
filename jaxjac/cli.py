"""The ``jaxjac`` command line.

Every subcommand is a function ``run_<name>(args) -> int``; :func:`main` turns the expected
failures (bad files, shapes, options) into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["CLIError", "build_parser", "main"]


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


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
    params = jj.mlp_init(jax.random.key(args.seed), sizes, dtype=jnp.float64)
    x = jnp.array([0.5, -1.0, 2.0])
    print(f"jaxjac {jj.__version__} demo: tansig MLP {sizes}, seed {args.seed}, float64")
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
    _print_matrix(
        "Jacobian dA/dx = W3 diag(σ'(z2)) W2 diag(σ'(z1)) W1  (n_out, n_in)",
        jj.closed_form.mlp_jacobian(params, x),
    )
    hess = jj.closed_form.mlp_hessian(params, x)
    for k in range(sizes[-1]):
        _print_matrix(f"Hessian d²A_{k}/dx²  (n_in, n_in)", hess[k])
    report = cross_check(params, x)
    print("\nCross-check of every route (closed form, autodiff, finite differences):")
    print(report)

    def textbook(_, v):
        return jnp.stack([v[0] + v[1], v[0] * v[1]])

    point = jnp.array([-1.0, 2.0])
    jac = jj.input_jacobian(textbook, None, point)
    print("\nTextbook example f(x, y) = (x + y, xy) at (-1, 2):")
    _print_matrix("Jacobian [[1, 1], [y, x]]", jac)
    det = float(jnp.linalg.det(jac))
    print(
        f"  det J = x - y = {det:.6g}: the map scales area by {abs(det):.6g} and flips orientation"
    )
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxjac", description="Exact derivatives of neural networks in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Jacobian, Hessian and cross-check of a small network")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the network (default 0)")
    demo.set_defaults(run=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected failures exit 2 with one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CLIError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"jaxjac {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxjac {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
