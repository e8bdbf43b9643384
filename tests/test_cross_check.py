"""The cross-check report: agrees when the routes agree, fails when one route is wrong."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from tests.helpers import fd_rtol, rel_err

cc_module = importlib.import_module("jaxjac.cross_check")


@pytest.fixture(scope="module")
def net():
    params = jj.mlp_init(jax.random.key(0), [3, 6, 4, 2], dtype=jnp.float64)
    return params, jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]])


def test_all_routes_agree_and_the_table_says_so(net):
    params, xs = net
    report = jj.cross_check(params, xs, "tansig")
    assert report.passed
    assert report.dtype == "float64" and report.fd_dtype == "float64"
    assert len(report.rows) == 12  # 6 pairs for the Jacobian, 6 for the Hessian
    assert report.values["hessian"]["closed_form"].shape == (2, 2, 3, 3)
    text = str(report)
    assert "all routes agree" in text and "finite_diff" in text and "jax.hessian" in text
    for row in report.rows:
        limit = 1e-12 if "finite_diff" not in (row.route_a, row.route_b) else 1e-7
        assert row.max_rel < limit, row
    assert report.to_rows()[0]["quantity"] == "jacobian"


def test_float32_input_uses_float32_tolerances(net):
    params, xs = net
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    report = jj.cross_check(p32, xs[0].astype(jnp.float32), "logsig")
    assert report.passed and report.dtype == "float32"
    exact = [r for r in report.rows if "finite_diff" not in (r.route_a, r.route_b)]
    assert all(r.tolerance < 1e-3 for r in exact)


def test_a_wrong_closed_form_is_caught(net, monkeypatch):
    params, xs = net
    real = cc_module.closed_form.mlp_hessian

    def off_by_a_little(params, x, act):
        return real(params, x, act) * (1 + 1e-6)

    monkeypatch.setattr(cc_module.closed_form, "mlp_hessian", off_by_a_little)
    cc_module._batched_routes.clear_cache()  # the routes are compiled: recompile with the patch
    try:
        report = jj.cross_check(params, xs[0], "tansig")
    finally:
        cc_module._batched_routes.clear_cache()
    assert not report.passed
    failed = {(r.route_a, r.route_b) for r in report.rows if not r.passed}
    # Every pair with the perturbed closed form fails, every other pair still passes.
    assert failed == {
        ("closed_form", "jax.hessian"),
        ("closed_form", "jacrev(jacrev)"),
        ("closed_form", "finite_diff"),
    }
    assert "ROUTES DISAGREE" in str(report)


def test_nan_never_passes(net):
    params, _ = net
    report = jj.cross_check(params, jnp.array([jnp.nan, 0.0, 1.0]), "tansig")
    assert not report.passed


def test_a_wrong_user_second_derivative_is_caught_by_finite_differences(net):
    params, xs = net
    # A user registers tanh with a second derivative that is 1 % off. Autodiff through the
    # activation uses the declared derivatives too, so only the finite differences disagree.
    jj.register_activation(
        "test_tanh_bad_d2f",
        jnp.tanh,
        lambda z: 1 - jnp.tanh(z) ** 2,
        lambda z: -2.02 * jnp.tanh(z) * (1 - jnp.tanh(z) ** 2),
        overwrite=True,
    )
    report = jj.cross_check(params, xs[0], "test_tanh_bad_d2f")
    failed = {(r.quantity, r.route_a, r.route_b) for r in report.rows if not r.passed}
    assert failed == {
        ("hessian", "closed_form", "finite_diff"),
        ("hessian", "jax.hessian", "finite_diff"),
        ("hessian", "jacrev(jacrev)", "finite_diff"),
    }


# Run with JAX's default configuration (x64 off, standard promotion): the suite's conftest
# enables x64, so only a fresh interpreter can show what a default user gets.
_DEFAULT_CONFIG_SCRIPT = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxjac as jj

    assert not jax.config.jax_enable_x64
    params = jj.mlp_init(jax.random.key(0), [3, 6, 4, 2])
    params = [{"W": p["W"], "b": p["b"] + 0.25} for p in params]
    x = jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]], jnp.float32)
    report = jj.cross_check(params, x, "tansig")
    assert not jax.config.jax_enable_x64, "cross_check left x64 on"
    assert jnp.ones(1).dtype == jnp.float32
    leaves = {f"{k}{i}": np.asarray(p[k]) for i, p in enumerate(params) for k in ("W", "b")}
    np.savez(
        sys.argv[1],
        x=np.asarray(x),
        fd_jac=report.values["jacobian"]["finite_diff"],
        fd_hess=report.values["hessian"]["finite_diff"],
        meta=np.array([report.dtype, report.fd_dtype, str(report.passed)]),
        **leaves,
    )
    """
)


def test_finite_differences_are_float64_without_x64(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    out = tmp_path / "report.npz"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _DEFAULT_CONFIG_SCRIPT, str(out)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    assert list(got["meta"]) == ["float32", "float64", "True"]
    assert got["fd_jac"].dtype == got["fd_hess"].dtype == np.float64
    # Reference: autodiff in float64 here (x64 on) of the same float32 weights, widened exactly.
    params = [
        {"W": jnp.asarray(got[f"W{i}"], jnp.float64), "b": jnp.asarray(got[f"b{i}"], jnp.float64)}
        for i in range(3)
    ]
    xs = jnp.asarray(got["x"], jnp.float64)

    def net(x):
        return jj.mlp_apply(params, x, "tansig")

    jac = jax.vmap(jax.jacrev(net))(xs)
    hess = jax.vmap(jax.hessian(net))(xs)
    jac_err = rel_err(got["fd_jac"], jac)
    hess_err = rel_err(got["fd_hess"], hess, scale=float(jnp.max(jnp.abs(jac))))
    assert jac_err <= fd_rtol(jnp.float64), jac_err
    assert hess_err <= fd_rtol(jnp.float64), hess_err
    # The bar is one a float32 oracle cannot reach: the same differences in float32 miss it.
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    fd32 = jax.vmap(
        lambda x: cc_module._central_difference(lambda v: jj.mlp_apply(p32, v, "tansig"), x)
    )(xs.astype(jnp.float32))
    assert rel_err(fd32, jac) > 10 * fd_rtol(jnp.float64)
