"""Activations: values against independent literal formulas, derivatives against autodiff of
those formulas and against central differences, stability at |z| = 50, NaN, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtr

import jaxjac as jj
from tests.helpers import assert_close, exact_rtol, fd_rtol

# Literal formulas written independently of the library: autodiff of these is the oracle for
# df and d2f (in float64 they are finite on [-50, 50]).
RAW = {
    "tansig": lambda z: 2 / (1 + jnp.exp(-2 * z)) - 1,
    "tanh": jnp.tanh,
    "logsig": lambda z: 1 / (1 + jnp.exp(-z)),
    "relu": lambda z: jnp.where(z > 0, z, 0.0),
    "softplus": lambda z: jnp.log(1 + jnp.exp(z)),
    "gelu": lambda z: z * ndtr(z),
    "gelu_tanh": lambda z: 0.5 * z * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))),
    "silu": lambda z: z / (1 + jnp.exp(-z)),
    "sin": jnp.sin,
    "radbas": lambda z: jnp.exp(-(z**2)),
    "purelin": lambda z: z,
}
ALIASES = {"sigmoid": "logsig", "poslin": "relu", "swish": "silu", "identity": "purelin"}

# An even number of points: the grid avoids z = 0, where relu has its kink.
GRID = jnp.linspace(-50.0, 50.0, 2000, dtype=jnp.float64)


def _elementwise_grad(g):
    return jax.vmap(jax.grad(g))


def test_every_required_activation_is_registered():
    assert set(RAW) | set(ALIASES) <= set(jj.list_activations())


@pytest.mark.parametrize("name", sorted(RAW))
def test_value_matches_the_literal_formula(name):
    act = jj.get_activation(name)
    assert_close(act.f(GRID), RAW[name](GRID), exact_rtol(jnp.float64), what=name)


@pytest.mark.parametrize("name", sorted(RAW))
def test_derivatives_match_autodiff_of_the_literal_formula(name):
    act = jj.get_activation(name)
    d1 = _elementwise_grad(RAW[name])
    d2 = _elementwise_grad(lambda z: jax.grad(RAW[name])(z))
    # Scale by the largest derivative over the grid: exact up to rounding of the formulas.
    assert_close(act.df(GRID), d1(GRID), exact_rtol(jnp.float64), scale=1.0, what=f"{name} df")
    assert_close(act.d2f(GRID), d2(GRID), exact_rtol(jnp.float64), scale=1.0, what=f"{name} d2f")


@pytest.mark.parametrize("name", sorted(RAW))
def test_derivatives_match_central_differences(name):
    act = jj.get_activation(name)
    z = jnp.linspace(-4.0, 4.0, 801, dtype=jnp.float64) + 0.0031  # off the relu kink
    h = float(np.finfo(np.float64).eps ** (1 / 3))
    fd1 = (act.f(z + h) - act.f(z - h)) / (2 * h)
    fd2 = (act.df(z + h) - act.df(z - h)) / (2 * h)
    assert_close(act.df(z), fd1, fd_rtol(jnp.float64), scale=1.0, what=f"{name} df")
    assert_close(act.d2f(z), fd2, fd_rtol(jnp.float64), scale=1.0, what=f"{name} d2f")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_compute_the_same_function(alias):
    a, b = jj.get_activation(alias), jj.get_activation(ALIASES[alias])
    for fa, fb in [(a.f, b.f), (a.df, b.df), (a.d2f, b.d2f)]:
        np.testing.assert_array_equal(fa(GRID), fb(GRID))


def test_tansig_is_tanh_and_the_circulating_variant_is_not():
    tansig = jj.get_activation("tansig")
    assert_close(tansig.f(GRID), jnp.tanh(GRID), exact_rtol(jnp.float64))
    wrong = 1 / (1 + jnp.exp(-2 * GRID)) - 1
    # The wrong formula maps into (-1, 0]: at z = 1 it gives -0.119 where tanh gives 0.762.
    assert float(jnp.max(wrong)) <= 0.0
    assert float(jnp.max(jnp.abs(wrong - tansig.f(GRID)))) > 0.99
    z = jnp.array(1.0)
    assert abs(float(1 / (1 + jnp.exp(-2 * z)) - 1) - (-0.11920292202211755)) < 1e-15
    assert float(tansig.f(z)) == pytest.approx(np.tanh(1.0), rel=1e-15, abs=0)


def test_tansig_derivative_identities():
    tansig = jj.get_activation("tansig")
    t = jnp.tanh(GRID)
    assert_close(tansig.df(GRID), 1 - t**2, exact_rtol(jnp.float64), scale=1.0)
    assert_close(tansig.d2f(GRID), -2 * t * (1 - t**2), exact_rtol(jnp.float64), scale=1.0)


@pytest.mark.parametrize("name", sorted(RAW))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_stable_and_finite_at_large_arguments(name, dtype):
    act = jj.get_activation(name)
    z = jnp.array([-100.0, -50.0, -44.5, 44.5, 50.0, 100.0], dtype)
    for fn in (act.f, act.df, act.d2f, _elementwise_grad(act.f), _elementwise_grad(act.df)):
        out = fn(z)
        assert out.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(out))), (name, fn, out)
    # Saturating activations: the derivative really vanishes, the value really saturates.
    if name in ("tansig", "tanh", "logsig"):
        assert float(act.df(z)[1]) == pytest.approx(0.0, abs=1e-20)
        assert float(act.f(z)[-1]) == pytest.approx(1.0, abs=float(jnp.finfo(dtype).eps))


@pytest.mark.parametrize("name", sorted(RAW))
def test_nan_propagates_into_value_and_derivatives(name):
    act = jj.get_activation(name)
    z = jnp.array([jnp.nan, 0.5])
    for fn in (act.f, act.df, act.d2f):
        out = fn(z)
        assert bool(jnp.isnan(out[0])) and bool(jnp.isfinite(out[1])), (name, out)


def test_relu_derivative_at_the_kink_is_zero_in_closed_form_and_autodiff():
    relu = jj.get_activation("relu")
    assert float(relu.df(jnp.array(0.0))) == 0.0
    assert float(jax.grad(relu.f)(0.0)) == 0.0


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'swishy'.*tansig"):
        jj.get_activation("swishy")
    with pytest.raises(TypeError, match="name or an Activation"):
        jj.get_activation(3)


def test_lookup_is_case_insensitive_and_activations_pass_through():
    act = jj.get_activation("TanSig")
    assert act is jj.get_activation("tansig")
    assert jj.get_activation(act) is act


def test_register_custom_activation_with_and_without_derivatives():
    cube = jj.register_activation(
        "test_cube", lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z, overwrite=True
    )
    derived = jj.register_activation("test_cube_derived", lambda z: z**3, overwrite=True)
    z = jnp.linspace(-2.0, 2.0, 9)
    for act in (cube, derived):
        assert_close(act.df(z), 3 * z**2, exact_rtol(jnp.float64))
        assert_close(act.d2f(z), 6 * z, exact_rtol(jnp.float64))
        assert_close(_elementwise_grad(act.f)(z), 3 * z**2, exact_rtol(jnp.float64))
    assert jj.get_activation("test_cube") is cube
    with pytest.raises(ValueError, match="already registered"):
        jj.register_activation("tansig", jnp.tanh)
    # A registered activation drives networks and their closed form like a built-in one.
    params = jj.mlp_init(jax.random.key(0), [2, 3, 1], dtype=jnp.float64)
    x = jnp.array([0.3, -0.2])
    jac = jj.closed_form.mlp_jacobian(params, x, "test_cube_derived")
    assert_close(jac, jax.jacrev(lambda v: jj.mlp_apply(params, v, "test_cube"))(x), 1e-13)


def test_replacing_an_activation_recompiles_everything_that_used_it():
    # The compiled programs are keyed on the name: after overwrite=True none may run the old
    # definition (a silent sin-for-cos mix otherwise, errors of order one).
    name = "test_replaced_sin_then_cos"
    params = jj.mlp_init(jax.random.key(0), [3, 5, 2], dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)

    def by_hand(x, g):  # the same network written out with the activation g
        return params[1]["W"] @ g(params[0]["W"] @ x + params[0]["b"]) + params[1]["b"]

    jj.register_activation(name, jnp.sin)
    net = jj.mlp_function(name)

    def run():
        return {
            "hessian": jj.batch_input_hessian(net, params, xs),
            "jacobian": jj.input_jacobian(net, params, xs[0]),
            "laplacian": jj.closed_form.mlp_laplacian(params, xs, name),
            "value": jax.jit(lambda x: jj.mlp_apply(params, x, name))(xs[0]),
        }

    for g in (jnp.sin, jnp.cos):
        if g is jnp.cos:
            jj.register_activation(name, jnp.cos, overwrite=True)
        results = run()  # the same calls, the same function objects
        hess = jax.vmap(jax.hessian(lambda x, g=g: by_hand(x, g)))(xs)
        assert_close(results["hessian"], hess, exact_rtol(jnp.float64), what=g.__name__)
        jac = jax.jacfwd(lambda x, g=g: by_hand(x, g))(xs[0])
        assert_close(results["jacobian"], jac, exact_rtol(jnp.float64), what=g.__name__)
        lap = jnp.trace(hess, axis1=-2, axis2=-1)
        assert_close(results["laplacian"], lap, exact_rtol(jnp.float64), what=g.__name__)
        assert_close(results["value"], by_hand(xs[0], g), exact_rtol(jnp.float64))
