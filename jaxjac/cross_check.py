"""Compare every route to an MLP's input Jacobian and Hessian, and say whether they agree.

Routes: the closed form (:mod:`jaxjac.closed_form`), forward and reverse autodiff, and central
finite differences. The exact routes run in the dtype of the inputs; finite differences always
run in float64, whatever ``jax_enable_x64`` says (inside a :func:`jax.enable_x64` context, on
the parameters and point widened exactly to float64): the point is an independent oracle, and
a float32 central difference (relative error ~5e-4) is too weak to be one.

Tolerances default from the dtype ``ε``:

* exact pairs (closed form and autodiff differ by rounding only): ``rtol = 1000 ε``;
* pairs with finite differences: ``rtol = max(100 ε_64^{2/3}, 1000 ε)`` with ``ε_64`` the
  float64 epsilon (``100 ε_64^{2/3} ≈ 3.7e-9``): a central difference with ``h = ε^{1/3}`` has
  truncation and rounding errors both of order ``ε^{2/3}``, and the exact route's own rounding
  (float32 against the float64 oracle) adds to it.

An error is ``max|a - b|`` compared with ``atol + rtol · scale``, where ``scale`` is the largest
magnitude of the Jacobian (for Jacobian pairs) or of the Hessian and Jacobian (for Hessian
pairs: a linear network has a zero Hessian whose finite-difference estimate is pure rounding).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxjac import closed_form
from jaxjac.activations import Activation, get_activation
from jaxjac.nets import MLPParams, check_mlp_input, mlp_apply

__all__ = ["CrossCheckReport", "CrossCheckRow", "cross_check"]


@dataclasses.dataclass(frozen=True)
class CrossCheckRow:
    """One pair of routes to one quantity."""

    quantity: str
    route_a: str
    route_b: str
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool


@dataclasses.dataclass(frozen=True)
class CrossCheckReport:
    """Every pairwise comparison, with the values compared.

    Attributes:
        rows: one :class:`CrossCheckRow` per (quantity, pair of routes).
        values: ``{quantity: {route: array}}``; Jacobians ``([B,] n_out, n_in)``, Hessians
            ``([B,] n_out, n_in, n_in)``.
        dtype: the dtype of the exact routes; ``fd_dtype`` that of finite differences.
    """

    rows: tuple[CrossCheckRow, ...]
    values: dict[str, dict[str, np.ndarray]]
    dtype: str
    fd_dtype: str

    @property
    def passed(self) -> bool:
        """Whether every pair agrees within its tolerance."""
        return all(row.passed for row in self.rows)

    def to_rows(self) -> list[dict]:
        """The rows as plain dicts (for JSON or a table library)."""
        return [dataclasses.asdict(row) for row in self.rows]

    def __str__(self) -> str:
        head = ("quantity", "route a", "route b", "max abs err", "max rel err", "tolerance", "ok")
        body = [
            (
                r.quantity,
                r.route_a,
                r.route_b,
                f"{r.max_abs:.2e}",
                f"{r.max_rel:.2e}",
                f"{r.tolerance:.1e}",
                "yes" if r.passed else "NO",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        verdict = "all routes agree" if self.passed else "ROUTES DISAGREE"
        lines.append(
            f"{verdict} (exact routes in {self.dtype}, finite differences in {self.fd_dtype})"
        )
        return "\n".join(lines)


def _central_difference(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Central differences of ``fn: (n_in,) -> out`` along every input axis: ``out + (n_in,)``."""
    h = jnp.finfo(x.dtype).eps ** (1 / 3) * jnp.maximum(1.0, jnp.abs(x))
    steps = jnp.diag(h)
    diffs = jax.vmap(lambda e: fn(x + e) - fn(x - e))(steps)  # (n_in,) + out
    diffs = diffs / (2 * h).reshape((-1,) + (1,) * (diffs.ndim - 1))
    return jnp.moveaxis(diffs, 0, -1)


def _exact_routes(params, x, act):
    """Jacobian and Hessian of one example ``x: (n_in,)`` by every exact route."""

    def f(x_):
        return mlp_apply(params, x_, act)

    jac = {
        "closed_form": closed_form.mlp_jacobian(params, x, act),
        "jacfwd": jax.jacfwd(f)(x),
        "jacrev": jax.jacrev(f)(x),
    }
    hess = {
        "closed_form": closed_form.mlp_hessian(params, x, act),
        "jax.hessian": jax.hessian(f)(x),
        "jacrev(jacrev)": jax.jacrev(jax.jacrev(f))(x),
    }
    return jac, hess


def _fd_routes(params, x, act):
    """Central differences of the network (Jacobian) and of its reverse-mode Jacobian (Hessian).

    The Hessian's differences are taken of ``jacrev``, which uses the activation's declared
    ``df`` but not its ``d2f``: a wrong ``d2f`` shows up here and nowhere else.
    """

    def f(x_):
        return mlp_apply(params, x_, act)

    return _central_difference(f, x), _central_difference(jax.jacrev(f), x)


@functools.partial(jax.jit, static_argnames=("act",))
def _batched_routes(params, xs, act):
    """Every exact route for every row of ``xs: (B, n_in)``, compiled once."""
    return jax.vmap(lambda x: _exact_routes(params, x, act))(xs)


@functools.partial(jax.jit, static_argnames=("act",))
def _batched_fd(params, xs, act):
    """Finite differences for every row of ``xs: (B, n_in)``; called with float64 inputs."""
    return jax.vmap(lambda x: _fd_routes(params, x, act))(xs)


def _float64_fd(params, xs, act) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference Jacobians and Hessians in float64, with or without global x64.

    The parameters and points are widened exactly (every float32 is a float64), so the oracle
    differentiates the very function the exact routes differentiate, only in higher precision.
    """
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        xs64 = jnp.asarray(np.asarray(xs, np.float64))
        jac, hess = _batched_fd(params64, xs64, act)
        return np.asarray(jac, np.float64), np.asarray(hess, np.float64)


def cross_check(
    params: MLPParams,
    x: ArrayLike,
    activation: str | Activation = "tansig",
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> CrossCheckReport:
    """Compare closed form, jacfwd, jacrev and finite differences for the Jacobian and Hessian.

    Args:
        params: MLP parameters, list of ``{"W": (out, in), "b": (out,)}``.
        x: ``(n_in,)`` or ``(B, n_in)``.
        activation: hidden-layer activation.
        rtol: relative tolerance for the exact pairs (finite-difference pairs keep their own
            dtype-derived one unless this is given); default ``1000 ε``.
        atol: absolute tolerance added to every pair; default 0.

    Returns:
        A :class:`CrossCheckReport`; ``print`` it for a table, ``.passed`` for the verdict.
    """
    _, shape = check_mlp_input(params, x)
    act = get_activation(activation)
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, *jax.tree_util.tree_leaves(params))
    fd_dtype = "float64"
    xb = jnp.atleast_2d(x)
    jac, hess = _batched_routes(params, xb, act)
    jac["finite_diff"], hess["finite_diff"] = _float64_fd(params, xb, act)

    def host(vals):
        vals = np.asarray(vals, np.float64)
        return vals if len(shape) == 2 else vals[0]

    # Pytree flattening sorted the dict keys; restore the reading order of the table.
    values = {
        "jacobian": {r: host(jac[r]) for r in ("closed_form", "jacfwd", "jacrev", "finite_diff")},
        "hessian": {
            r: host(hess[r])
            for r in ("closed_form", "jax.hessian", "jacrev(jacrev)", "finite_diff")
        },
    }
    exact_rtol = rtol if rtol is not None else 1000 * float(jnp.finfo(dtype).eps)
    # A pair with finite differences carries both the FD error and the exact route's rounding.
    fd_rtol = rtol if rtol is not None else 100 * float(jnp.finfo(fd_dtype).eps) ** (2 / 3)
    fd_rtol = max(fd_rtol, exact_rtol)
    atol = 0.0 if atol is None else atol
    jac_scale = float(np.max(np.abs(values["jacobian"]["closed_form"]), initial=0.0))
    rows = []
    for quantity, routes in values.items():
        scale = jac_scale
        if quantity == "hessian":
            scale = max(scale, float(np.max(np.abs(routes["closed_form"]), initial=0.0)))
        for a, b in itertools.combinations(routes, 2):
            err = float(np.max(np.abs(routes[a] - routes[b]), initial=0.0))
            tol = atol + (fd_rtol if "finite_diff" in (a, b) else exact_rtol) * scale
            ref = float(np.max(np.abs(routes[b]), initial=0.0))
            rows.append(
                CrossCheckRow(
                    quantity=quantity,
                    route_a=a,
                    route_b=b,
                    max_abs=err,
                    max_rel=err / ref if ref > 0 else err,
                    tolerance=tol,
                    passed=bool(err <= tol),  # NaN compares False: a NaN never passes
                )
            )
    return CrossCheckReport(
        rows=tuple(rows),
        values=values,
        dtype=jnp.dtype(dtype).name,
        fd_dtype=jnp.dtype(fd_dtype).name,
    )
