"""The cross-check report: agrees when the routes agree, fails when one route is wrong."""

import importlib

import jax
import jax.numpy as jnp
import pytest

import jaxjac as jj

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
