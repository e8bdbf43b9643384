"""Autodiff helpers: known identities, layouts, batching, chunking, products, compile-once."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxjac as jj
from jaxjac.derivatives import resolve_input_mode
from tests.helpers import assert_close, central_jacobian, exact_rtol, fd_rtol

F64 = jnp.float64
MODES = ["fwd", "rev", "auto"]


def _mlp_tanh(params, x):
    return jj.mlp_apply(params, x, "tanh")


def _loss(params, x):
    return jnp.sum(jj.mlp_apply(params, x, "tansig") ** 2)


@pytest.fixture(scope="module")
def net():
    params = jj.mlp_init(jax.random.key(0), [4, 6, 5, 3], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (7, 4), F64)
    return params, xs


# --- the five identities -----------------------------------------------------------------


def _linear(w, x):
    return w @ x


def _sqnorm(_, x):
    return jnp.sum(x**2)


def _elementwise_sin(_, x):
    return jnp.sin(x)


def _times_c(c, x):
    return x * c


def _plus_c(c, x):
    return x + c


@pytest.mark.parametrize("mode", MODES)
def test_identities(mode):
    x = jnp.array([0.3, -1.2, 2.0])
    w = jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]])
    c = jnp.array([2.0, -3.0, 0.5])
    eye = jnp.eye(3)
    assert_close(jj.input_jacobian(_linear, w, x, mode=mode), w, exact_rtol(F64), what="Wx")
    assert_close(jj.input_jacobian(_sqnorm, None, x, mode=mode), 2 * x, exact_rtol(F64))
    assert_close(
        jj.input_jacobian(_elementwise_sin, None, x, mode=mode), jnp.diag(jnp.cos(x)), 1e-15
    )
    assert_close(jj.input_jacobian(_times_c, c, x, mode=mode), jnp.diag(c), 0.0)
    assert_close(jj.input_jacobian(_plus_c, c, x, mode=mode), eye, 0.0)


def test_hessian_identities():
    x = jnp.array([0.3, -1.2, 2.0])
    assert_close(jj.input_hessian(_sqnorm, None, x), 2 * jnp.eye(3), 0.0)
    hess = jj.input_hessian(_elementwise_sin, None, x)  # (3, 3, 3): H[k] = -sin(x_k) e_k e_kᵀ
    expected = np.zeros((3, 3, 3))
    for k in range(3):
        expected[k, k, k] = -np.sin(float(x[k]))
    assert_close(hess, expected, 1e-15)


# --- layouts -----------------------------------------------------------------------------


def _matrix_fn(w, x):
    # x: (2, 3) -> (4, 2): a matrix-valued function of a matrix.
    return jnp.tanh(w @ x.reshape(-1)).reshape(4, 2)


def test_layouts_for_matrix_inputs_and_outputs():
    w = jax.random.normal(jax.random.key(3), (8, 6), F64)
    x = jax.random.normal(jax.random.key(4), (2, 3), F64)
    for mode in MODES:
        jac = jj.input_jacobian(_matrix_fn, w, x, mode=mode)
        assert jac.shape == (4, 2, 2, 3)
        flat = central_jacobian(
            lambda v: np.asarray(_matrix_fn(w, v.reshape(2, 3))).ravel(), x.ravel()
        )
        assert_close(jac.reshape(8, 6), flat, fd_rtol(F64))
    hess = jj.input_hessian(_matrix_fn, w, x)
    assert hess.shape == (4, 2, 2, 3, 2, 3)
    wjac = jj.weight_jacobian(_matrix_fn, w, x)
    assert wjac.shape == (4, 2, 8, 6)


def test_auto_mode_picks_the_cheaper_side():
    assert resolve_input_mode(10, 2) == "rev"
    assert resolve_input_mode(2, 10) == "fwd"
    assert resolve_input_mode(3, 3) == "fwd"
    assert resolve_input_mode(3, 1, "fwd") == "fwd"
    with pytest.raises(ValueError, match="mode must be one of"):
        resolve_input_mode(3, 1, "sideways")


# --- MLP derivatives against the other routes ----------------------------------------------


def test_input_jacobian_and_hessian_against_finite_differences(net):
    params, xs = net
    x = xs[0]
    fd = central_jacobian(lambda v: np.asarray(_mlp_tanh(params, v)), x)
    for mode in MODES:
        assert_close(jj.input_jacobian(_mlp_tanh, params, x, mode=mode), fd, fd_rtol(F64))
    fd_h = central_jacobian(lambda v: np.asarray(jax.jacrev(_mlp_tanh, 1)(params, v)), x)
    assert_close(jj.input_hessian(_mlp_tanh, params, x), fd_h, fd_rtol(F64))


def test_weight_jacobian_against_closed_form_and_finite_differences(net):
    params, xs = net
    x = xs[0]
    closed = jj.closed_form.mlp_weight_jacobian(params, x, "tanh")
    for mode in ("rev", "fwd", "auto"):
        wjac = jj.weight_jacobian(_mlp_tanh, params, x, mode=mode)
        assert jax.tree_util.tree_structure(wjac) == jax.tree_util.tree_structure(params)
        assert wjac[1]["W"].shape == (3, 5, 6)
        assert_close(wjac, closed, exact_rtol(F64))
    flat, unravel = ravel_pytree(params)
    fd = central_jacobian(lambda v: np.asarray(_mlp_tanh(unravel(v), x)), flat)  # (3, P)
    wjac = jj.weight_jacobian(_mlp_tanh, params, x)
    flat_jac = np.concatenate(
        [leaf.reshape(3, -1) for leaf in jax.tree_util.tree_leaves(wjac)], axis=1
    )
    assert_close(flat_jac, fd, fd_rtol(F64))


def test_weight_hessian_matrix_and_pytree_agree_with_finite_differences(net):
    params, xs = net
    x = xs[0]
    flat, unravel = ravel_pytree(params)
    mat = jj.weight_hessian_matrix(_loss, params, x)
    assert mat.shape == (flat.size, flat.size)
    assert_close(mat, mat.T, exact_rtol(F64))
    grad = jax.grad(lambda v: _loss(unravel(v), x))
    assert_close(mat, central_jacobian(lambda v: np.asarray(grad(v)), flat), fd_rtol(F64))
    tree = jj.weight_hessian(_loss, params, x)
    block = tree[1]["W"][0]["b"]  # ∂²L / ∂W_2 ∂b_1: (5, 6) + (6,)
    assert block.shape == (5, 6, 6)
    i0 = 4 * 6 + 6  # offset of W_2 in the raveled order W_1, b_1, W_2, ...
    j0 = 4 * 6  # offset of b_1
    expected = mat[i0 : i0 + 30, j0 : j0 + 6].reshape(5, 6, 6)
    assert_close(block, expected, exact_rtol(F64))


def test_weight_hessian_requires_a_scalar(net):
    params, xs = net
    with pytest.raises(ValueError, match=r"scalar.*got shape \(3,\)"):
        jj.weight_hessian(_mlp_tanh, params, xs[0])
    with pytest.raises(ValueError, match="scalar"):
        jj.weight_hessian_matrix(_mlp_tanh, params, xs[0])


# --- batching and chunking ---------------------------------------------------------------


def test_batched_equals_looped(net):
    params, xs = net
    jac = jj.batch_input_jacobian(_mlp_tanh, params, xs)
    hess = jj.batch_input_hessian(_mlp_tanh, params, xs)
    wjac = jj.batch_weight_jacobian(_mlp_tanh, params, xs)
    assert jac.shape == (7, 3, 4) and hess.shape == (7, 3, 4, 4)
    assert wjac[0]["W"].shape == (7, 3, 6, 4)
    for i, x in enumerate(xs):
        assert_close(jac[i], jj.input_jacobian(_mlp_tanh, params, x), exact_rtol(F64))
        assert_close(hess[i], jj.input_hessian(_mlp_tanh, params, x), exact_rtol(F64))
        per = jj.weight_jacobian(_mlp_tanh, params, x)
        assert_close(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], wjac), per, exact_rtol(F64))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 100])
def test_every_chunk_size_equals_unchunked(net, chunk_size):
    params, xs = net
    pairs = [
        (jj.batch_input_jacobian, {}),
        (jj.batch_input_jacobian, {"mode": "fwd"}),
        (jj.batch_input_hessian, {}),
        (jj.batch_weight_jacobian, {}),
    ]
    for helper, kwargs in pairs:
        whole = helper(_mlp_tanh, params, xs, **kwargs)
        chunked = helper(_mlp_tanh, params, xs, chunk_size=chunk_size, **kwargs)
        assert_close(chunked, whole, exact_rtol(F64), what=f"{helper.__name__} {chunk_size}")


def test_bad_chunk_size_and_unbatched_input(net):
    params, xs = net
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        jj.batch_input_jacobian(_mlp_tanh, params, xs, chunk_size=0)
    with pytest.raises(ValueError, match="leading batch axis"):
        jj.batch_input_jacobian(_sqnorm, None, jnp.array(1.0))


def test_a_list_input_is_an_array_and_an_integer_input_is_refused(net):
    params, xs = net
    x = [float(v) for v in xs[0]]  # as a user types it
    assert_close(
        jj.input_jacobian(_mlp_tanh, params, x), jj.input_jacobian(_mlp_tanh, params, xs[0]), 0.0
    )
    assert_close(
        jj.input_hessian(_mlp_tanh, params, x), jj.input_hessian(_mlp_tanh, params, xs[0]), 0.0
    )
    ints = jnp.arange(4)
    message = r"x must be a floating array to differentiate with respect to it, got dtype int"
    for helper in (jj.input_jacobian, jj.input_hessian):
        with pytest.raises(TypeError, match=message):
            helper(_mlp_tanh, params, ints)
    with pytest.raises(TypeError, match=message):
        jj.input_jvp(_mlp_tanh, params, ints, ints)
    for helper in (jj.batch_input_jacobian, jj.batch_input_hessian, jj.batch_weight_jacobian):
        with pytest.raises(TypeError, match="xs must be a floating array"):
            helper(jj.mlp_function("tanh"), params, jnp.ones((3, 4), jnp.int32))


def test_numpy_integers_are_integer_options_and_bools_are_not(net):
    params, xs = net
    f = jj.mlp_function("tanh")
    want = jj.batch_input_jacobian(f, params, xs, chunk_size=3)
    got = jj.batch_input_jacobian(f, params, xs, chunk_size=np.int64(3))
    assert_close(got, want, 0.0)
    hess = jj.batch_input_hessian(f, params, xs, max_memory_bytes=np.int64(2**20))
    assert_close(hess, jj.batch_input_hessian(f, params, xs), exact_rtol(F64))
    net_of_x = functools.partial(jj.mlp_apply, params, activation="tanh")
    lap = jj.batch_laplacian(net_of_x, xs, chunk_size=np.int32(2))
    assert_close(lap, jj.closed_form.mlp_laplacian(params, xs, "tanh"), exact_rtol(F64))
    key = jax.random.key(0)
    assert_close(
        jj.hutchinson_laplacian(net_of_x, xs[0], key, num_probes=np.int64(6)).estimate,
        jj.hutchinson_laplacian(net_of_x, xs[0], key, num_probes=6).estimate,
        0.0,
    )
    for bad in (True, 3.0):
        with pytest.raises(
            ValueError, match=f"chunk_size must be a positive integer or None, got {bad}"
        ):
            jj.batch_input_jacobian(f, params, xs, chunk_size=bad)


def test_float32_batched_jacobian_within_dtype_tolerance(net):
    params, xs = net
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    jac32 = jj.batch_input_jacobian(_mlp_tanh, p32, xs.astype(jnp.float32))
    assert jac32.dtype == jnp.float32
    assert_close(jac32, jj.batch_input_jacobian(_mlp_tanh, params, xs), exact_rtol(jnp.float32))


# --- products --------------------------------------------------------------------------------


def test_input_products_against_dense(net):
    params, xs = net
    x = xs[0]
    v = jax.random.normal(jax.random.key(5), (4,), F64)
    u = jax.random.normal(jax.random.key(6), (3,), F64)
    jac = jj.input_jacobian(_mlp_tanh, params, x)
    hess = jj.input_hessian(_mlp_tanh, params, x)
    out, jv = jj.input_jvp(_mlp_tanh, params, x, v)
    assert_close(out, _mlp_tanh(params, x), 0.0)
    assert_close(jv, jac @ v, exact_rtol(F64))
    _, uj = jj.input_vjp(_mlp_tanh, params, x, u)
    assert_close(uj, u @ jac, exact_rtol(F64))
    assert_close(jj.input_hvp(_mlp_tanh, params, x, v), hess @ v, exact_rtol(F64))


def test_weight_products_against_dense(net):
    params, xs = net
    x = xs[0]
    flat, unravel = ravel_pytree(params)
    t = jax.random.normal(jax.random.key(7), flat.shape, F64)
    u = jax.random.normal(jax.random.key(8), (3,), F64)
    jac = jax.jacrev(lambda v: _mlp_tanh(unravel(v), x))(flat)  # (3, P)
    _, jt = jj.weight_jvp(_mlp_tanh, params, x, unravel(t))
    assert_close(jt, jac @ t, exact_rtol(F64))
    _, uj = jj.weight_vjp(_mlp_tanh, params, x, u)
    assert_close(ravel_pytree(uj)[0], u @ jac, exact_rtol(F64))
    hv = jj.weight_hvp(_loss, params, x, unravel(t))
    assert_close(ravel_pytree(hv)[0], jj.weight_hessian_matrix(_loss, params, x) @ t, 1e-12)


# --- compile once ------------------------------------------------------------------------


def test_second_call_with_same_shapes_does_not_retrace():
    traces = []

    def counted(params, x):
        traces.append(x.shape)  # runs only while JAX traces
        return jj.mlp_apply(params, x, "tansig")

    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
    for helper in (jj.input_jacobian, jj.input_hessian, jj.weight_jacobian):
        traces.clear()
        helper(counted, params, xs[0])
        first = len(traces)
        assert first > 0
        helper(counted, params, xs[1])  # new values, same shapes: cached
        assert len(traces) == first, helper.__name__
    traces.clear()
    jj.batch_input_jacobian(counted, params, xs, chunk_size=2)
    first = len(traces)
    jj.batch_input_jacobian(counted, params, xs + 1.0, chunk_size=2)
    assert len(traces) == first
    jj.batch_input_jacobian(counted, params, xs[:4], chunk_size=2)  # new shape: traced again
    assert len(traces) > first


def test_default_batched_calls_plan_while_tracing_only(monkeypatch):
    from jaxjac import routes

    plans = []
    real_plan = routes.resolve
    monkeypatch.setattr(routes, "resolve", lambda *a, **k: plans.append(a[0]) or real_plan(*a, **k))

    def f(params, x):  # a function of its own: nothing compiled for it yet
        return jj.mlp_apply(params, x, "tansig")

    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
    for helper in (jj.batch_input_jacobian, jj.batch_input_hessian, jj.batch_weight_jacobian):
        plans.clear()
        first = helper(f, params, xs)
        assert len(plans) == 1, helper.__name__  # planned once, while tracing
        again = helper(f, params, xs + 1.0)  # same shapes: one compiled dispatch
        assert len(plans) == 1, helper.__name__
        # The same plan as the planning path (a chunk size of the whole batch takes that path).
        assert_close(first, helper(f, params, xs, chunk_size=5), 0.0)
        assert_close(again, helper(f, params, xs + 1.0, chunk_size=5), 0.0)
        assert len(plans) == 3, helper.__name__  # that path plans on every call
    with pytest.raises(ValueError, match=r"mode must be one of \('auto', 'fwd', 'rev'\)"):
        jj.batch_input_jacobian(f, params, xs, mode="backwards")  # refused while tracing
    with pytest.raises(ValueError, match=r"positive integer or None, got 5\.0$"):
        jj.batch_input_jacobian(f, params, xs, chunk_size=5.0)  # after chunk_size=5 ran


def _retraces(run, args, same_shapes, new_shapes, traces):
    """Trace counts of ``run`` on first call, on new values of the same shapes, on new shapes."""
    traces.clear()
    run(*args)
    first = len(traces)
    run(*same_shapes)
    second = len(traces)
    run(*new_shapes)
    return first, second, len(traces)


def _per_example_calls(f, loss):
    """Every per-example entry point, as ``run(params, x)``, with its vectors drawn from x."""

    def tangent(params, x):
        return jax.tree_util.tree_map(lambda leaf: jnp.full_like(leaf, x[0]), params)

    n_out = 2
    return {
        "input_jacobian fwd": lambda p, x: jj.input_jacobian(f, p, x, mode="fwd"),
        "weight_hessian": lambda p, x: jj.weight_hessian(loss, p, x),
        "weight_hessian_matrix": lambda p, x: jj.weight_hessian_matrix(loss, p, x),
        "input_jvp": lambda p, x: jj.input_jvp(f, p, x, x[::-1]),
        "input_vjp": lambda p, x: jj.input_vjp(f, p, x, x[:n_out]),
        "input_hvp": lambda p, x: jj.input_hvp(f, p, x, x[::-1]),
        "weight_jvp": lambda p, x: jj.weight_jvp(f, p, x, tangent(p, x)),
        "weight_vjp": lambda p, x: jj.weight_vjp(f, p, x, x[:n_out]),
        "weight_hvp": lambda p, x: jj.weight_hvp(loss, p, x, tangent(p, x)),
    }


def _batched_calls(f):
    return {
        "batch_input_jacobian": lambda p, xs: jj.batch_input_jacobian(f, p, xs),
        "batch_input_hessian": lambda p, xs: jj.batch_input_hessian(f, p, xs),
        "batch_input_hessian chunked": lambda p, xs: jj.batch_input_hessian(f, p, xs, chunk_size=2),
        "batch_weight_jacobian": lambda p, xs: jj.batch_weight_jacobian(f, p, xs),
        "batch_weight_jacobian chunked": lambda p, xs: jj.batch_weight_jacobian(
            f, p, xs, chunk_size=2
        ),
    }


def _counting_tanh(traces):
    """An unregistered tanh whose value and derivatives record every trace through them."""

    def f(z):
        traces.append("f")
        return jnp.tanh(z)

    def df(z):
        traces.append("df")
        return 1 - jnp.tanh(z) ** 2

    def d2f(z):
        traces.append("d2f")
        t = jnp.tanh(z)
        return -2 * t * (1 - t * t)

    return jj.Activation("counting_tanh", f, df, d2f)


@pytest.fixture(scope="module")
def small_nets():
    narrow = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    wide = jj.mlp_init(jax.random.key(1), [3, 6, 2], dtype=F64)  # same x, new param shapes
    xs = jax.random.normal(jax.random.key(2), (5, 3), F64)
    return narrow, wide, xs


@pytest.mark.parametrize("name", list(_per_example_calls(None, None)))
def test_per_example_products_and_weight_hessians_do_not_retrace(small_nets, name):
    narrow, wide, xs = small_nets
    traces = []

    def counted(params, x):
        traces.append(x.shape)  # runs only while JAX traces
        return jj.mlp_apply(params, x, "tansig")

    def counted_loss(params, x):
        traces.append(x.shape)
        return jnp.sum(jj.mlp_apply(params, x, "tansig") ** 2)

    run = _per_example_calls(counted, counted_loss)[name]
    first, second, third = _retraces(
        run, (narrow, xs[0]), (narrow, xs[1] * 3.0), (wide, xs[0]), traces
    )
    assert first > 0, name  # the counter does see traces
    assert second == first, f"{name}: same shapes traced again"
    assert third > second, f"{name}: new parameter shapes must compile anew"


@pytest.mark.parametrize("route", ["autodiff", "closed_form"])
@pytest.mark.parametrize("name", list(_batched_calls(None)))
def test_batched_helpers_do_not_retrace_on_either_route(small_nets, route, name):
    narrow, _, xs = small_nets
    traces = []
    if route == "autodiff":

        def f(params, x):
            traces.append(x.shape)  # runs only while JAX traces
            return jj.mlp_apply(params, x, "tanh")

    else:  # jaxjac's MLP with an unregistered activation: the planner takes the closed form
        f = functools.partial(jj.mlp_apply, activation=_counting_tanh(traces))
    task = name.split()[0].removeprefix("batch_")
    assert jj.routes.resolve(task, f, narrow, xs).route == route
    run = _batched_calls(f)[name]
    first, second, third = _retraces(
        run, (narrow, xs), (narrow, xs + 1.0), (narrow, xs[:4]), traces
    )
    assert first > 0 and second == first and third > second, (first, second, third)


_CLOSED_FORM_CALLS = {
    "mlp_jacobian auto": lambda p, x, a: jj.closed_form.mlp_jacobian(p, x, a),
    "mlp_jacobian fwd": lambda p, x, a: jj.closed_form.mlp_jacobian(p, x, a, mode="fwd"),
    "mlp_jacobian rev": lambda p, x, a: jj.closed_form.mlp_jacobian(p, x, a, mode="rev"),
    "mlp_hessian": lambda p, x, a: jj.closed_form.mlp_hessian(p, x, a),
    "mlp_weight_jacobian": lambda p, x, a: jj.closed_form.mlp_weight_jacobian(p, x, a),
    "mlp_laplacian": lambda p, x, a: jj.closed_form.mlp_laplacian(p, x, a),
}


@pytest.mark.parametrize("name", list(_CLOSED_FORM_CALLS))
def test_closed_form_functions_do_not_retrace(small_nets, name):
    narrow, _, xs = small_nets
    traces = []
    act = _counting_tanh(traces)
    call = _CLOSED_FORM_CALLS[name]

    def run(x):
        return call(narrow, x, act)

    first, second, third = _retraces(run, (xs,), (xs * 2.0,), (xs[0],), traces)
    assert first > 0 and second == first and third > second, (first, second, third)
    # The counting activation is tanh: the results are tanh's.
    assert_close(run(xs), call(narrow, xs, "tanh"), 0.0)


def test_unhashable_function_gets_a_clear_error():
    class Unhashable:
        __hash__ = None

        def __call__(self, params, x):
            return x

    with pytest.raises(TypeError, match="f must be hashable"):
        jj.input_jacobian(Unhashable(), None, jnp.ones(2))


def test_partial_of_mlp_apply_is_accepted():
    f = functools.partial(jj.mlp_apply, activation="relu")
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    x = jnp.array([0.1, 0.2, -0.3])
    assert_close(
        jj.input_jacobian(f, params, x), jj.closed_form.mlp_jacobian(params, x, "relu"), 1e-14
    )


def test_nan_in_x_gives_nan_results_not_errors(net):
    params, xs = net
    xs = xs.at[2, 1].set(jnp.nan)
    for helper in (jj.batch_input_jacobian, jj.batch_input_hessian):
        out = helper(_mlp_tanh, params, xs)
        assert bool(jnp.all(jnp.isnan(out[2]))), helper.__name__
        assert bool(jnp.all(jnp.isfinite(jnp.delete(out, 2, axis=0))))


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("route", ["closed_form", "autodiff"])
def test_nan_in_x_through_the_weight_jacobian(net, act, route):
    # Documented: every entry that depends on x is NaN. The output bias enters A = W_n a + b_n
    # additively, so ∂A/∂b_n = I whatever x is (also mathematically right for a NaN row).
    params, xs = net
    xs = xs.at[2, 1].set(jnp.nan)
    f = jj.mlp_function(act)
    wjac = jj.batch_weight_jacobian(f, params, xs, route=route)
    for i, layer in enumerate(wjac):
        for name, leaf in layer.items():
            others = jnp.delete(leaf, 2, axis=0)
            assert bool(jnp.all(jnp.isfinite(others))), (i, name)
            if (i, name) == (len(params) - 1, "b"):
                np.testing.assert_array_equal(leaf[2], np.eye(3))
            else:
                assert bool(jnp.all(jnp.isnan(leaf[2]))), (route, act, i, name)


def test_partials_compile_once_per_function_and_options():
    traces = []

    def net(params, x, *, scale):
        traces.append(1)  # runs only while JAX traces
        return scale * jj.mlp_apply(params, x, "tansig")

    def shifted(params, shift, x):
        return net(params, x + shift, scale=1.0)

    x = jnp.array([0.1, 0.2, -0.3])
    for seed in range(3):  # new params and a new partial object on every step
        params = jj.mlp_init(jax.random.key(seed), [3, 4, 2], dtype=F64)
        jac = jj.input_jacobian(functools.partial(net, scale=2.0), params, x)
        assert_close(jac, 2.0 * jj.closed_form.mlp_jacobian(params, x), exact_rtol(F64))
        # Bound arrays are traced arguments, not constants: partial(net, params) style.
        jac = jj.input_jacobian(functools.partial(shifted, params), jnp.float64(0.5), x)
        assert_close(jac, jj.closed_form.mlp_jacobian(params, x + 0.5), exact_rtol(F64))
        if seed == 0:
            first = len(traces)
    assert len(traces) == first  # compiled once per (function, options), whatever the params
    jj.input_jacobian(functools.partial(net, scale=3.0), params, x)  # new option: new program
    assert len(traces) > first


def test_out_buffer_is_reused_and_results_are_unchanged(net):
    params, xs = net
    helpers = (jj.batch_input_jacobian, jj.batch_input_hessian, jj.batch_weight_jacobian)
    for helper, f in itertools.product(helpers, (_mlp_tanh, jj.mlp_function("tanh"))):
        first = helper(f, params, xs)
        expected = jax.tree_util.tree_map(jnp.copy, first)
        again = helper(f, params, xs * 0.5, out=first)
        assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(first))  # donated
        assert_close(again, helper(f, params, xs * 0.5), 0.0)
        assert_close(helper(f, params, xs, out=again), expected, 0.0)
        # The buffer's values are never read (chunks and the Hessian's steps are written into
        # it); chunks of 3 of the 7 rows end with one moved back.
        # Against the same chunking without out= (other chunk sizes change the GEMMs' shapes,
        # hence their rounding, on some CPUs).
        for chunk_size in (None, 3):
            nans = jax.tree_util.tree_map(lambda a: jnp.full_like(a, jnp.nan), expected)
            got = helper(f, params, xs, chunk_size=chunk_size, out=nans)
            want = helper(f, params, xs, chunk_size=chunk_size)
            assert_close(got, want, 0.0, what=f"chunk_size={chunk_size}")
    with pytest.raises(ValueError, match="out must have the result's layout"):
        jj.batch_input_jacobian(_mlp_tanh, params, xs, out=jnp.zeros((7, 3, 5), F64))


def test_out_calls_trace_nothing_after_the_first(net):
    # Checking out='s layout must not trace the program again on every call.
    params, xs = net
    traces = []

    def counted(p, x):
        traces.append(x.shape)  # runs only while JAX traces
        return _mlp_tanh(p, x)

    out = jj.batch_weight_jacobian(counted, params, xs)
    out = jj.batch_weight_jacobian(counted, params, xs, out=out)
    first = len(traces)
    for scale in (0.5, 2.0, 3.0):
        out = jj.batch_weight_jacobian(counted, params, xs * scale, out=out)
    assert len(traces) == first
    assert_close(out, jj.batch_weight_jacobian(_mlp_tanh, params, xs * 3.0), 0.0)


def test_the_old_spelling_of_the_route_still_works_with_a_warning(net):
    params, xs = net
    f = jj.mlp_function("tanh")
    with pytest.warns(DeprecationWarning, match="pass route='autodiff'"):
        old = jj.batch_input_jacobian(f, params, xs, mode="autodiff")
    assert_close(old, jj.batch_input_jacobian(f, params, xs, route="autodiff"), 0.0)
    with pytest.warns(DeprecationWarning, match=r"jaxjac\.routes\.batch_input_hessian"):
        moved = jj.derivatives.batch_input_hessian
    assert moved is jj.batch_input_hessian
    with pytest.warns(DeprecationWarning, match="use jaxjac.routes.resolve"):
        plan = jj.planner.plan("input_jacobian", f, params, xs)
    assert plan == jj.routes.resolve("input_jacobian", f, params, xs)
