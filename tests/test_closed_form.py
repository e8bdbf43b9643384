"""Closed-form MLP derivatives against autodiff and finite differences, over random networks.

Architectures: depth 1 to 5 layers, widths 1 to 32, n_out 1 to 5, every activation. The
closed form must agree with jacfwd, jacrev and jax.hessian to 1e-10 relative in float64 (it
does to ~1e-15), with central differences to the finite-difference tolerance, and in float32
within a dtype-derived tolerance.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxjac as jj
from jaxjac import closed_form as closed_form_module
from jaxjac.closed_form import jacobian_cost
from tests.helpers import assert_close, central_jacobian, exact_rtol, fd_rtol

F64 = jnp.float64
ACTIVATIONS = [
    "tansig",
    "tanh",
    "logsig",
    "relu",
    "softplus",
    "gelu",
    "gelu_tanh",
    "silu",
    "sin",
    "radbas",
    "purelin",
]
REQUIRED_RTOL = 1e-10  # the bar; exact_rtol (2.2e-13) is tighter still


def _network(seed, dtype=F64, sizes=None, batch=3):
    rng = np.random.default_rng(seed)
    if sizes is None:
        depth = int(rng.integers(1, 6))
        sizes = [int(rng.integers(1, 33)) for _ in range(depth)] + [int(rng.integers(1, 6))]
    key = jax.random.key(seed)
    params = jj.mlp_init(key, sizes, dtype=dtype)
    # Non-zero biases so every activation is probed off its symmetric point.
    params = [
        {"W": p["W"], "b": jax.random.normal(jax.random.fold_in(key, i), p["b"].shape, dtype)}
        for i, p in enumerate(params)
    ]
    xs = jax.random.normal(jax.random.fold_in(key, 99), (batch, sizes[0]), dtype)
    return params, xs, sizes


@functools.partial(jax.jit, static_argnames=("act",))
def _autodiff(params, xs, act):
    """Every autodiff route, compiled once per (shapes, activation): eager vmap(hessian) is slow."""

    def f(x):
        return jj.mlp_apply(params, x, act)

    return {
        "jacfwd": jax.vmap(jax.jacfwd(f))(xs),
        "jacrev": jax.vmap(jax.jacrev(f))(xs),
        "hessian": jax.vmap(jax.hessian(f))(xs),
        "weights": jax.vmap(lambda x: jax.jacrev(lambda p: jj.mlp_apply(p, x, act))(params))(xs),
    }


@pytest.mark.parametrize(("seed", "act"), list(enumerate(ACTIVATIONS)))
def test_closed_form_matches_autodiff_float64(seed, act):
    params, xs, sizes = _network(seed)  # a different random architecture per activation
    ad = _autodiff(params, xs, act)
    n_out, n_in = sizes[-1], sizes[0]
    for mode in ("auto", "fwd", "rev"):
        jac = jj.closed_form.mlp_jacobian(params, xs, act, mode=mode)
        assert jac.shape == (3, n_out, n_in)
        assert_close(jac, ad["jacfwd"], REQUIRED_RTOL, what=f"J {mode} vs jacfwd")
        assert_close(jac, ad["jacrev"], exact_rtol(F64), what=f"J {mode} vs jacrev")
    hess = jj.closed_form.mlp_hessian(params, xs, act)
    assert hess.shape == (3, n_out, n_in, n_in)
    # Scale: a linear network has a zero Hessian; compare against the Jacobian's magnitude then.
    scale = float(jnp.max(jnp.abs(ad["jacrev"])))
    assert_close(hess, ad["hessian"], REQUIRED_RTOL, scale=scale, what="H vs jax.hessian")
    assert_close(hess, jnp.swapaxes(hess, -1, -2), exact_rtol(F64), scale=scale, what="symmetry")
    wjac = jj.closed_form.mlp_weight_jacobian(params, xs, act)
    assert_close(wjac, ad["weights"], REQUIRED_RTOL, what="weight Jacobian")


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_closed_form_matches_finite_differences(act):
    params, xs, _ = _network(10, sizes=[4, 7, 6, 2])
    x = xs[0] + 0.0123  # away from relu kinks at exactly representable points
    fd_jac = central_jacobian(lambda v: np.asarray(jj.mlp_apply(params, v, act)), x)
    assert_close(jj.closed_form.mlp_jacobian(params, x, act), fd_jac, fd_rtol(F64))
    fd_hess = central_jacobian(lambda v: np.asarray(jj.closed_form.mlp_jacobian(params, v, act)), x)
    assert_close(
        jj.closed_form.mlp_hessian(params, x, act),
        fd_hess,
        fd_rtol(F64),
        scale=float(np.max(np.abs(fd_jac))),
    )


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    hidden=st.lists(st.integers(1, 32), min_size=0, max_size=4),
    n_in=st.integers(1, 8),
    n_out=st.integers(1, 5),
    act=st.sampled_from(ACTIVATIONS),
)
def test_random_architectures_property(hidden, n_in, n_out, act):
    sizes = [n_in, *hidden, n_out]
    params, xs, _ = _network(len(hidden) * 100 + n_in * 10 + n_out, sizes=sizes, batch=2)
    ad = _autodiff(params, xs, act)
    scale = float(jnp.max(jnp.abs(ad["jacrev"])))
    assert_close(jj.closed_form.mlp_jacobian(params, xs, act), ad["jacrev"], REQUIRED_RTOL)
    assert_close(
        jj.closed_form.mlp_hessian(params, xs, act), ad["hessian"], REQUIRED_RTOL, scale=scale
    )


@pytest.mark.parametrize("act", ["tansig", "logsig", "gelu", "relu"])
def test_float32_within_dtype_tolerance(act):
    params64, xs64, _ = _network(5, sizes=[6, 32, 32, 32, 3])
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params64)
    xs32 = xs64.astype(jnp.float32)
    jac32 = jj.closed_form.mlp_jacobian(params32, xs32, act)
    hess32 = jj.closed_form.mlp_hessian(params32, xs32, act)
    assert jac32.dtype == hess32.dtype == jnp.float32
    jac64 = jj.closed_form.mlp_jacobian(params64, xs64, act)
    hess64 = jj.closed_form.mlp_hessian(params64, xs64, act)
    assert_close(jac32, jac64, exact_rtol(jnp.float32))
    assert_close(hess32, hess64, exact_rtol(jnp.float32), scale=float(jnp.max(jnp.abs(jac64))))


def test_hessian_of_a_linear_network_is_zero():
    params, xs, _ = _network(3, sizes=[3, 4, 2])
    np.testing.assert_array_equal(jj.closed_form.mlp_hessian(params, xs, "purelin"), 0.0)
    params, xs, _ = _network(3, sizes=[3, 2])  # no hidden layer at all
    np.testing.assert_array_equal(jj.closed_form.mlp_hessian(params, xs, "tansig"), 0.0)
    assert_close(
        jj.closed_form.mlp_jacobian(params, xs, "tansig"),
        jnp.broadcast_to(params[0]["W"], (3, 2, 3)),
        0.0,
    )


def test_laplacian_is_the_trace_of_the_hessian():
    params, xs, _ = _network(4, sizes=[5, 9, 8, 3])
    lap = jj.closed_form.mlp_laplacian(params, xs, "tansig")
    assert lap.shape == (3, 3)
    hess = jj.closed_form.mlp_hessian(params, xs, "tansig")
    assert_close(lap, jnp.trace(hess, axis1=-2, axis2=-1), REQUIRED_RTOL)
    assert jj.closed_form.mlp_laplacian(params, xs[0], "tansig").shape == (3,)


def test_unbatched_input_gives_unbatched_output():
    params, xs, _ = _network(6, sizes=[4, 5, 2])
    x = xs[0]
    assert jj.closed_form.mlp_jacobian(params, x).shape == (2, 4)
    assert jj.closed_form.mlp_hessian(params, x).shape == (2, 4, 4)
    wjac = jj.closed_form.mlp_weight_jacobian(params, x)
    assert [(p["W"].shape, p["b"].shape) for p in wjac] == [
        ((2, 5, 4), (2, 5)),
        ((2, 2, 5), (2, 2)),
    ]


def test_accumulation_side_is_chosen_by_cost():
    # 100 inputs, 2 outputs: carrying 2 rows from the output side is far cheaper.
    assert jacobian_cost([100, 50, 2]) == {"fwd": 100 * 50 * 2, "rev": 2 * 100 * 50}
    cost = jacobian_cost([100, 50, 50, 2])
    assert cost["rev"] < cost["fwd"]
    cost = jacobian_cost([2, 50, 50, 100])
    assert cost["fwd"] < cost["rev"]


def test_errors_name_the_shapes():
    params, _, _ = _network(0, sizes=[3, 4, 2])
    with pytest.raises(ValueError, match=r"\(3,\) or \(batch, 3\).*got shape \(4,\)"):
        jj.closed_form.mlp_hessian(params, jnp.ones(4))
    with pytest.raises(ValueError, match="unknown activation"):
        jj.closed_form.mlp_jacobian(params, jnp.ones(3), "nope")
    with pytest.raises(ValueError, match="mode must be"):
        jj.closed_form.mlp_jacobian(params, jnp.ones(3), mode="sideways")


def test_nan_in_x_propagates_per_example():
    params, xs, _ = _network(2, sizes=[3, 5, 2])
    xs = xs.at[1, 0].set(jnp.nan)
    for fn in (
        jj.closed_form.mlp_jacobian,
        jj.closed_form.mlp_hessian,
        jj.closed_form.mlp_laplacian,
    ):
        for act in ("tansig", "relu"):
            out = fn(params, xs, act)
            assert bool(jnp.all(jnp.isnan(out[1]))), (fn.__name__, act)
            assert bool(jnp.all(jnp.isfinite(out[0]))) and bool(jnp.all(jnp.isfinite(out[2])))


@pytest.mark.parametrize("n_in", [70, 130])
def test_blocked_symmetric_contraction_for_wide_inputs(n_in):
    # n_in >= 64 splits the upper triangle into row blocks (2 and 4 here, uneven sizes).
    params, xs, _ = _network(n_in, sizes=[n_in, 6, 5, 2], batch=2)
    expected = _autodiff(params, xs, "tansig")["hessian"]
    got = jj.closed_form.mlp_hessian(params, xs, "tansig")
    assert_close(got, expected, REQUIRED_RTOL)
    assert_close(got, jnp.swapaxes(got, -1, -2), exact_rtol(F64), what="symmetry")


def test_chunked_contraction_matches(monkeypatch):
    # A tiny cache budget forces the per-example contraction through lax.map in small steps.
    params, xs, _ = _network(3, sizes=[5, 8, 7, 6, 2], batch=7)
    monkeypatch.setattr(closed_form_module, "_CONTRACTION_BYTES", 1)
    got = closed_form_module._hessian(params, xs, jj.get_activation("tansig"))
    assert_close(got, _autodiff(params, xs, "tansig")["hessian"], REQUIRED_RTOL)


def test_chunked_laplacian_matches(monkeypatch):
    # A tiny cache budget forces the forward Laplacian through chunks of one row.
    params, xs, _ = _network(8, sizes=[5, 8, 7, 2], batch=5)
    monkeypatch.setattr(closed_form_module, "_LAPLACIAN_BYTES", 1)
    got = closed_form_module._laplacian(params, xs, jj.get_activation("tansig"))
    hess = _autodiff(params, xs, "tansig")["hessian"]
    assert_close(got, jnp.trace(hess, axis1=-2, axis2=-1), REQUIRED_RTOL)
