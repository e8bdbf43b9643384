"""The route resolver: route and mode choices, memory budgets, explanations, refusals."""

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from jaxjac import _mlp_cpu, closed_form, routes
from jaxjac._mlp import mlp_activation
from tests.helpers import assert_close, exact_rtol

F64 = jnp.float64
DERIVATIVE_TASKS = ("input_jacobian", "input_hessian", "weight_jacobian")


def _generic(params, x):
    return jnp.tanh(params["W"] @ x)


@pytest.fixture(scope="module")
def mlp():
    params = jj.mlp_init(jax.random.key(0), [6, 16, 16, 3], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (40, 6), F64)
    return params, xs


def test_recognises_jaxjac_mlps_only():
    assert mlp_activation(jj.mlp_apply).name == "tansig"
    assert mlp_activation(jj.mlp_function("relu")).name == "relu"
    assert mlp_activation(functools.partial(jj.mlp_apply, activation="gelu")).name == "gelu"
    assert mlp_activation(_generic) is None
    assert mlp_activation(lambda p, x: jj.mlp_apply(p, x)) is None


def test_routes_and_modes(mlp):
    params, xs = mlp
    f = jj.mlp_function("tanh")
    p = routes.resolve("input_jacobian", f, params, xs)
    assert (p.route, p.mode, p.chunk_size) == ("closed_form", "rev", None)
    assert routes.resolve("input_hessian", f, params, xs).mode == "layer-sum"
    p = routes.resolve("input_jacobian", f, params, xs, mode="fwd")
    assert (p.route, p.mode) == ("autodiff", "fwd")
    wide = {"W": jnp.ones((2, 9), F64)}
    p = routes.resolve("input_jacobian", _generic, wide, jnp.ones((5, 9), F64))
    assert (p.route, p.mode) == ("autodiff", "rev")
    tall = {"W": jnp.ones((9, 2), F64)}
    assert routes.resolve("input_jacobian", _generic, tall, jnp.ones((5, 2), F64)).mode == "fwd"
    with pytest.raises(ValueError, match=r"closed_form.*: f is not jaxjac's MLP"):
        routes.resolve("input_jacobian", _generic, wide, jnp.ones((5, 9), F64), route="closed_form")
    with pytest.raises(ValueError, match=r"params must be a non-empty list of \{'W'"):
        routes.resolve("input_jacobian", f, wide, jnp.ones((5, 9), F64), route="closed_form")
    with pytest.raises(ValueError, match=r"closed_form.*: xs has shape \(5, 2, 6\), not"):
        routes.resolve("input_jacobian", f, params, jnp.ones((5, 2, 6), F64), route="closed_form")
    with pytest.raises(ValueError, match="task must be one of"):
        routes.resolve("laplacian_of_everything", f, params, xs)


@pytest.mark.parametrize("task", ["input_jacobian", "input_hessian", "weight_jacobian"])
def test_every_route_gives_the_same_numbers(mlp, task):
    params, xs = mlp
    helper = {
        "input_jacobian": jj.batch_input_jacobian,
        "input_hessian": jj.batch_input_hessian,
        "weight_jacobian": jj.batch_weight_jacobian,
    }[task]
    f = jj.mlp_function("tanh")
    closed = helper(f, params, xs)
    autodiff = helper(f, params, xs, route="autodiff")
    assert_close(closed, autodiff, exact_rtol(F64), what=task)
    assert_close(helper(f, params, xs, chunk_size=7), closed, exact_rtol(F64))


def test_budget_picks_a_chunk_that_fits_and_changes_nothing_else(mlp):
    params, xs = mlp
    f = jj.mlp_function("tanh")
    whole = routes.explain("input_hessian", f, params, xs)
    assert whole.chunk_size is None and whole.temp_bytes_per_example > 0
    assert whole.flops > 0
    # Chunked, an example also holds its result until it is copied into the output.
    per_row = whole.temp_bytes_per_example + whole.result_bytes // whole.batch
    budget = whole.temp_bytes_fixed + 10 * per_row
    p = routes.resolve("input_hessian", f, params, xs, max_memory_bytes=budget)
    assert p.chunk_size == 10
    assert p.temp_bytes <= budget
    hess = jj.batch_input_hessian(f, params, xs, max_memory_bytes=budget)
    assert_close(hess, closed_form.mlp_hessian(params, xs, "tanh"), exact_rtol(F64))
    with pytest.raises(ValueError, match="too small: one example"):
        routes.resolve("input_hessian", f, params, xs, max_memory_bytes=1)


def test_a_result_larger_than_memory_is_refused_before_running(mlp):
    params, _ = mlp
    huge = jax.ShapeDtypeStruct((10**9, 6), F64)  # 10^9 Hessians of 3×6×6 doubles: 864 GB
    with pytest.raises(ValueError, match=r"needs .*GiB for its result alone, more than"):
        routes.resolve("input_hessian", jj.mlp_function("tanh"), params, huge)


@pytest.mark.parametrize("task", DERIVATIVE_TASKS)
def test_a_batch_of_the_wrong_width_names_the_batch_shape(mlp, task):
    params, _ = mlp  # 6 inputs
    with pytest.raises(ValueError, match=r"\(batch, 6\) to match W_1 .*got shape \(5, 4\)"):
        routes.resolve(task, jj.mlp_apply, params, jnp.ones((5, 4), F64))


@pytest.mark.parametrize("task", DERIVATIVE_TASKS)
def test_one_example_given_to_a_batched_helper_is_named_as_such(mlp, task):
    params, xs = mlp
    with pytest.raises(
        ValueError, match=r"xs must be a batch of shape \(B, 6\) .*got shape \(6,\)"
    ):
        routes.resolve(task, jj.mlp_apply, params, xs[0])


def test_python_scalars_in_params_are_planned_like_arrays():
    xs = jnp.arange(12.0, dtype=F64).reshape(4, 3)

    def scaled(p, x):
        return jnp.sin(x) * p["a"] + p["b"]

    params = {"a": 2.0, "b": 1.0}  # Python floats, as a user writes them
    as_arrays = {"a": jnp.asarray(2.0, F64), "b": jnp.asarray(1.0, F64)}
    for task in ("input_jacobian", "input_hessian"):
        got = getattr(jj, f"batch_{task}")(scaled, params, xs)
        want = jax.vmap(
            getattr(jax, "jacfwd" if task == "input_jacobian" else "hessian")(
                lambda x: scaled(as_arrays, x)
            )
        )(xs)
        assert_close(got, want, rtol=exact_rtol(F64))
    jw = jj.batch_weight_jacobian(scaled, params, xs, max_memory_bytes=2**20)
    assert_close(jw["a"], jnp.sin(xs), rtol=exact_rtol(F64))


def test_explain_reads_well(mlp):
    params, xs = mlp
    text = str(routes.explain("input_jacobian", jj.mlp_function("tanh"), params, xs))
    assert "closed_form route" in text and "from the output side" in text
    assert "GFLOP" in text and "per example" in text
    text = str(
        jj.explain("input_jacobian", _generic, {"W": jnp.ones((2, 9), F64)}, jnp.ones((4, 9), F64))
    )
    assert "autodiff" in text and "reverse mode carries fewer vectors" in text


def test_planning_is_cached(mlp):
    params, xs = mlp
    traces = []

    def counted(params, x):
        traces.append(1)
        return jj.mlp_apply(params, x, "tanh")

    jj.batch_input_jacobian(counted, params, xs, max_memory_bytes=10**8)
    first = len(traces)
    jj.batch_input_jacobian(counted, params, xs + 1.0, max_memory_bytes=10**8)
    assert len(traces) == first


@pytest.mark.parametrize("task", ["input_jacobian", "input_hessian"])
@pytest.mark.parametrize("batch", [4096, 4000])
def test_memory_estimate_matches_xla_for_the_chunked_program(task, batch):
    # The estimate must describe the real program: compile the batched helper under the budget
    # and read XLA's own temporaries (a batch-of-one analysis made the slope negative; a chunk's
    # result, copied into the output, is a temporary too; 4000 is not a multiple of the chunk).
    params = jj.mlp_init(jax.random.key(0), [32, 256, 256, 8], dtype=jnp.float32)
    xs = jnp.ones((batch, 32), jnp.float32)
    f = jj.mlp_function("tansig")
    budget = 8 * 2**20
    if task == "input_hessian":  # below its row steps (3.5 MB with the fused kernel): chunks
        budget = min(budget, routes.explain(task, f, params, xs).temp_bytes_stepped // 2)
    helper = {"input_jacobian": jj.batch_input_jacobian, "input_hessian": jj.batch_input_hessian}
    p = routes.resolve(task, f, params, xs, max_memory_bytes=budget)
    assert p.chunk_size is not None and p.chunk_size < batch
    call = jax.jit(lambda q, b: helper[task](f, q, b, max_memory_bytes=budget))
    temp = call.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
    assert temp <= budget, (temp, budget, p.chunk_size)
    assert temp >= 0.5 * p.temp_bytes, (temp, p.temp_bytes)  # not a wild overestimate either


@pytest.mark.parametrize("task", ["input_jacobian", "input_hessian"])
def test_budgets_around_the_row_steps_are_kept(task):
    # Near the stepped program's own temporaries the planner must choose between running the
    # whole batch in row steps and chunks small enough to run without them (a larger chunk
    # would step again and need what did not fit). Either way XLA's temporaries stay within.
    params = jj.mlp_init(jax.random.key(0), [32, 256, 256, 8], dtype=jnp.float32)
    xs = jnp.ones((4096, 32), jnp.float32)
    f = jj.mlp_function("tansig")
    helper = {"input_jacobian": jj.batch_input_jacobian, "input_hessian": jj.batch_input_hessian}
    stepped = routes.explain(task, f, params, xs).temp_bytes_stepped
    assert stepped is not None
    for scale in (0.9, 0.99, 1.0, 1.1):
        budget = int(scale * stepped)
        p = routes.resolve(task, f, params, xs, max_memory_bytes=budget)
        assert (p.chunk_size is None) == (scale >= 1), (scale, p.chunk_size)
        if p.chunk_size is not None:
            assert p.step_rows is None, (scale, p.chunk_size, p.step_rows)
        call = jax.jit(lambda q, b, m=budget: helper[task](f, q, b, max_memory_bytes=m))
        temp = call.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
        assert temp <= budget, (scale, temp, budget, p.chunk_size)


@pytest.mark.parametrize("task", ["input_jacobian", "input_hessian"])
@pytest.mark.parametrize("batch", [4096, 4000])
def test_the_closed_forms_row_steps_are_in_the_estimate(task, batch):
    # A large closed-form Jacobian or Hessian runs in cache-sized row steps of its own, so its
    # temporaries stop growing with the batch: the estimate is the stepped program's own (a
    # linear one said 64 MiB against XLA's 8.5 MiB for the Jacobian; one from a step's rows
    # 1.4x the Hessian's, which contracts a few examples at a time within a step), and a
    # budget the steps fit needs no chunking.
    params = jj.mlp_init(jax.random.key(0), [32, 256, 256, 8], dtype=jnp.float32)
    xs = jnp.ones((batch, 32), jnp.float32)
    f = jj.mlp_function("tansig")
    helper = {"input_jacobian": jj.batch_input_jacobian, "input_hessian": jj.batch_input_hessian}
    p = routes.explain(task, f, params, xs)
    assert p.step_rows is not None and p.step_rows < batch
    temp = jax.jit(lambda q, b: helper[task](f, q, b)).lower(params, xs).compile()
    temp = temp.memory_analysis().temp_size_in_bytes
    if task == "input_hessian" and _mlp_cpu.fused_default(xs.dtype):
        # The fused kernel's buffers, a worker per core, which XLA does not see: a panel of 256
        # units in two layouts of 32 columns and 32 rows, and an accumulator per output.
        temp += (os.cpu_count() or 1) * 4 * (256 * (32 + 32) + 8 * 32 * 32)
    # the planner compiles the helper's program without its jit wrapper: XLA may share a few
    # bytes differently (1.00x measured for both)
    assert 0.95 * temp <= p.temp_bytes <= 1.05 * temp, (temp, p.temp_bytes)
    linear = p.temp_bytes_fixed + batch * p.temp_bytes_per_example
    assert p.temp_bytes < linear / 4
    roomy = routes.resolve(task, f, params, xs, max_memory_bytes=int(1.1 * temp))
    assert roomy.chunk_size is None and roomy.temp_bytes <= int(1.1 * temp)
    assert "row steps" in str(p)


# --- shapes and activations the closed form must not take, or must take as given ------------

_HELPERS = {
    "input_jacobian": jj.batch_input_jacobian,
    "input_hessian": jj.batch_input_hessian,
    "weight_jacobian": jj.batch_weight_jacobian,
}


def test_examples_that_are_not_feature_rows_take_the_autodiff_route():
    # xs of shape (B, 2, n_in): each example is itself a (2, n_in) block, and mlp_apply maps it
    # to (2, n_out). The closed form only knows rows (B, n_in): it must not be chosen here.
    params = jj.mlp_init(jax.random.key(2), [3, 5, 2], dtype=F64)
    params = [{"W": p["W"], "b": p["b"] + 0.3} for p in params]
    xs = jax.random.normal(jax.random.key(3), (4, 2, 3), F64)
    f = jj.mlp_apply

    def net(x):
        return jj.mlp_apply(params, x)

    expected = {
        "input_jacobian": jnp.stack([jax.jacrev(net)(x) for x in xs]),
        "input_hessian": jnp.stack([jax.hessian(net)(x) for x in xs]),
        "weight_jacobian": jax.tree_util.tree_map(
            lambda *leaves: jnp.stack(leaves),
            *[jax.jacrev(lambda p, x=x: jj.mlp_apply(p, x))(params) for x in xs],
        ),
    }
    shapes = {"input_jacobian": (4, 2, 2, 2, 3), "input_hessian": (4, 2, 2, 2, 3, 2, 3)}
    for task, helper in _HELPERS.items():
        p = routes.resolve(task, f, params, xs)
        assert p.route == "autodiff" and p.activation is None, (task, p)
        got = helper(f, params, xs)
        if task in shapes:
            assert got.shape == shapes[task]
        else:
            assert got[1]["W"].shape == (4, 2, 2, 2, 5)  # (B,) + f_out + W_2.shape
        assert_close(got, expected[task], exact_rtol(F64), what=task)
        assert_close(helper(f, params, xs, chunk_size=3), got, exact_rtol(F64), what="chunked")
        with pytest.raises(
            ValueError, match=r"\(B, n_in\) batch: xs has shape \(4, 2, 3\), not \(B, n_in\)"
        ):
            routes.resolve(task, f, params, xs, route="closed_form")
    # Rows within an example do not interact: the Jacobian is block diagonal, each block the
    # closed-form Jacobian of that row (an oracle that owes nothing to autodiff).
    jac = jj.batch_input_jacobian(f, params, xs)
    for b, i, j in itertools.product(range(4), range(2), range(2)):
        block = jac[b, i, :, j, :]
        if i == j:
            assert_close(block, closed_form.mlp_jacobian(params, xs[b, i]), exact_rtol(F64))
        else:
            np.testing.assert_array_equal(block, 0.0)


def test_an_unregistered_activation_object_takes_the_closed_form():
    act = jj.Activation("mysin", jnp.sin, jnp.cos, lambda z: -jnp.sin(z))
    with pytest.raises(ValueError, match="unknown activation"):
        jj.get_activation("mysin")  # not in the registry: only the object itself can work
    f = functools.partial(jj.mlp_apply, activation=act)
    params = jj.mlp_init(jax.random.key(4), [4, 7, 6, 3], dtype=F64)
    params = [{"W": p["W"], "b": p["b"] - 0.2} for p in params]
    xs = jax.random.normal(jax.random.key(5), (6, 4), F64)

    def net(x):
        return jj.mlp_apply(params, x, act)

    for task, helper in _HELPERS.items():
        p = routes.resolve(task, f, params, xs)
        assert p.route == "closed_form" and p.activation is act, (task, p)
        closed = helper(f, params, xs)
        assert_close(closed, helper(f, params, xs, route="autodiff"), exact_rtol(F64), what=task)
        assert_close(helper(f, params, xs, chunk_size=4), closed, exact_rtol(F64), what="chunks")
        # sin's derivatives are cos and -sin: the same numbers as the registered "sin".
        assert_close(closed, helper(jj.mlp_function("sin"), params, xs), exact_rtol(F64))
    jac = jj.batch_input_jacobian(f, params, xs)
    assert_close(jac, jax.vmap(jax.jacrev(net))(xs), exact_rtol(F64), what="vs jax.jacrev")
    hess = jj.batch_input_hessian(f, params, xs)
    assert_close(hess, jax.vmap(jax.hessian(net))(xs), exact_rtol(F64), what="vs jax.hessian")


def test_a_cached_plan_follows_params_changed_in_place():
    # The plan cache is keyed on shapes and dtypes, not on the params object: a list edited in
    # place to another architecture gets a new plan (and the helper the right result).
    params = jj.mlp_init(jax.random.key(1), [3, 5, 2], dtype=jnp.float64)
    xs = jnp.ones((4, 3), jnp.float64)
    f = jj.mlp_function("tanh")
    assert "[3, 5, 2]" in str(routes.resolve("input_jacobian", f, params, xs))
    params[:] = jj.mlp_init(jax.random.key(2), [3, 7, 6], dtype=jnp.float64)
    again = routes.resolve("input_jacobian", f, params, xs)
    assert "[3, 7, 6]" in str(again)
    jac = jj.batch_input_jacobian(f, params, xs)
    assert jac.shape == (4, 6, 3)
    assert_close(jac, jj.closed_form.mlp_jacobian(params, xs, "tanh"), 0.0)


def test_a_batch_of_no_rows_gives_empty_results_everywhere():
    params = jj.mlp_init(jax.random.key(0), [3, 5, 4, 3], dtype=F64)
    empty = jnp.zeros((0, 3), F64)
    f = jj.mlp_function("tanh")
    net_of_x = functools.partial(jj.mlp_apply, params, activation="tanh")
    for route in ("closed_form", "autodiff"):
        assert jj.batch_input_jacobian(f, params, empty, route=route).shape == (0, 3, 3)
        assert jj.batch_input_hessian(f, params, empty, route=route).shape == (0, 3, 3, 3)
        wjac = jj.batch_weight_jacobian(f, params, empty, route=route)
        assert [leaf.shape[:2] for leaf in jax.tree_util.tree_leaves(wjac)] == [(0, 3)] * 6
        assert jj.batch_laplacian(net_of_x, empty, route=route).shape == (0, 3)
        assert jj.batch_divergence(net_of_x, empty, route=route).shape == (0,)
        sign, logdet = jj.batch_slogdet_jacobian(net_of_x, empty, route=route)
        assert sign.shape == logdet.shape == (0,)
        assert jj.batch_jacobian_det(net_of_x, empty, route=route).shape == (0,)
    assert jj.batch_input_hessian(f, params, empty, chunk_size=2).shape == (0, 3, 3, 3)
    assert jj.batch_jacobian_gram(f, params, empty).shape == (0, 3, 3)
    assert jj.batch_jacobian_norm(f, params, empty).shape == (0,)


def test_explain_covers_the_calculus_tasks():
    params = jj.mlp_init(jax.random.key(0), [3, 6, 3], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
    net_of_x = functools.partial(jj.mlp_apply, params, activation="tanh")

    def other(x):
        return jnp.sin(x)

    for task in ("laplacian", "divergence", "slogdet", "det"):
        closed = jj.explain(task, net_of_x, None, xs)
        assert (closed.route, closed.task, closed.batch) == ("closed_form", task, 5)
        assert "jaxjac MLP [3, 6, 3]" in str(closed) and closed.flops > 0
        generic = jj.explain(task, other, None, xs)
        assert generic.route == "autodiff" and "not jaxjac's MLP" in str(generic)
    assert jj.explain("laplacian", other, None, xs, mode="loop").mode == "loop"
    with pytest.raises(ValueError, match=r"mode must be one of \('auto',\), got 'fwd'"):
        jj.explain("slogdet", net_of_x, None, xs, mode="fwd")
    with pytest.raises(ValueError, match="f is not jaxjac's MLP as a function of x"):
        routes.resolve("laplacian", other, None, xs, route="closed_form")
