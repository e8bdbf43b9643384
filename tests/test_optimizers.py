"""The Gauss-Newton optax transformation and sharpness tracking.

The Gauss-Newton direction is checked against a dense solve, its composition with optax.chain
against the bare direction, and its speed against optax.adam tuned over a learning-rate grid on
a small regression problem (fixed seeds, steps counted until the loss stays below a target).
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxjac as jj
from jaxjac import curvature as cv
from jaxjac import optimizers as opt
from tests.helpers import assert_close, exact_rtol

F64 = jnp.float64
RTOL = exact_rtol(F64)
F = functools.partial(jj.mlp_apply, activation="tanh")


def _problem(kind, sizes=(3, 5, 2), batch=7, seed=0):
    key = jax.random.key(seed)
    params = jj.mlp_init(key, list(sizes), dtype=F64)
    x = jax.random.normal(jax.random.fold_in(key, 1), (batch, sizes[0]), F64)
    if kind == "mse":
        y = jax.random.normal(jax.random.fold_in(key, 2), (batch, sizes[-1]), F64)
    else:
        y = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, sizes[-1])
    return params, x, y


@functools.partial(jax.jit, static_argnames=("kind", "curvature"))
def _dense_curvature(kind, curvature, params, x, y):
    """The P × P curvature matrix from the library's own products against the identity.

    The products are themselves checked against jax.hessian/jacobian in test_curvature.py.
    """
    flat, unravel = ravel_pytree(params)
    product = cv.ggn_vp if curvature == "ggn" else cv.empirical_fisher_vp
    columns = jax.vmap(lambda e: ravel_pytree(product(F, kind, params, x, y, unravel(e)))[0])
    return columns(jnp.eye(flat.size, dtype=flat.dtype))


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
def test_direction_is_the_damped_solve(kind, curvature):
    params, x, y = _problem(kind)
    loss = cv.supervised_loss(F, kind)
    grads = jax.grad(loss)(params, (x, y))
    g, _ = ravel_pytree(grads)
    damping = 0.1
    mat = _dense_curvature(kind, curvature, params, x, y) + damping * jnp.eye(g.size, dtype=F64)
    want = np.linalg.solve(np.asarray(mat), np.asarray(g))
    # CG on an SPD matrix of size P reaches the solution in at most P steps; the attainable
    # accuracy is the condition number times rounding.
    rtol = RTOL * float(np.linalg.cond(np.asarray(mat)))
    tx = opt.scale_by_gauss_newton(
        F, kind, damping=damping, cg_iters=2 * g.size, curvature=curvature
    )
    state = tx.init(params)
    direction, state = tx.update(grads, state, params, batch=(x, y))
    assert_close(ravel_pytree(direction)[0], want, rtol)
    assert int(state.count) == 1
    assert float(state.cg_residual) < rtol
    # A few CG steps only: a different, worse solve, and the residual says so.
    few = opt.scale_by_gauss_newton(F, kind, damping=damping, cg_iters=2, curvature=curvature)
    rough, rough_state = few.update(grads, few.init(params), params, batch=(x, y))
    assert float(rough_state.cg_residual) > 1e3 * rtol
    assert np.max(np.abs(ravel_pytree(rough)[0] - want)) > 1e3 * rtol * np.max(np.abs(want))


def test_composes_with_optax_chain():
    params, x, y = _problem("mse")
    grads = jax.grad(cv.supervised_loss(F, "mse"))(params, (x, y))
    bare = opt.scale_by_gauss_newton(F, "mse", damping=0.01, cg_iters=5)
    direction, _ = bare.update(grads, bare.init(params), params, batch=(x, y))
    chained = optax.chain(
        optax.clip_by_global_norm(1e6),  # ignores the extra argument; no effect at this norm
        opt.scale_by_gauss_newton(F, "mse", damping=0.01, cg_iters=5),
        optax.scale_by_learning_rate(0.5),
    )
    updates, state = chained.update(grads, chained.init(params), params, batch=(x, y))
    assert_close(updates, jax.tree_util.tree_map(lambda d: -0.5 * d, direction), RTOL)
    assert int(state[1].count) == 1
    full = opt.gauss_newton(F, "mse", 0.5, damping=0.01, cg_iters=5)
    assert_close(full.update(grads, full.init(params), params, batch=(x, y))[0], updates, RTOL)
    new = optax.apply_updates(params, updates)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)


def test_zero_gradient_gives_zero_step():
    params, x, y = _problem("cross_entropy")
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = opt.scale_by_gauss_newton(F, "cross_entropy", cg_iters=4)
    direction, state = tx.update(zeros, tx.init(params), params, batch=(x, y))
    assert all(np.all(leaf == 0) for leaf in jax.tree_util.tree_leaves(direction))
    assert float(state.cg_residual) == 0


# --- speed: Gauss-Newton against tuned Adam ----------------------------------------------------

TARGET = 1e-3  # loss ½ mean ‖f − y‖² to reach; both optimizers go well below (< 1e-5)
STEPS = 1500  # one horizon for both, so "stays below for the rest of the run" means the same
# Adam's learning rates: 13 points, a factor 10^(1/4) ≈ 1.8 apart, over three decades.
ADAM_RATES = np.logspace(-3, 0, 13)


def _regression():
    params = jj.mlp_init(jax.random.key(0), [1, 12, 1], dtype=F64)
    x = jnp.linspace(-2, 2, 64, dtype=F64)[:, None]
    return params, x, jnp.sin(2 * x)


def _train(tx, params, batch, steps, loss, state=None):
    def step(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(loss)(p, batch)
        updates, s = tx.update(grads, s, p, batch=batch)
        return (optax.apply_updates(p, updates), s), value

    state = tx.init(params) if state is None else state
    return jax.lax.scan(step, (params, state), length=steps)[1]  # losses[t]: after t steps


def _steps_to_stay_below(losses, target):
    """The first t after which the loss stays at or below target for the rest of the run.

    A first crossing would reward a rate that dips below the target once and then oscillates
    above it again (Adam at large rates does); this counts only lasting progress. ``inf`` if
    the last loss is above the target.
    """
    above = np.nonzero(np.asarray(losses) > target)[0]
    if above.size == 0:
        return 0
    return np.inf if above[-1] == len(losses) - 1 else int(above[-1]) + 1


def test_steps_to_stay_below():
    assert _steps_to_stay_below([3.0, 0.5, 2.0, 0.5, 0.4], 1.0) == 3  # not 1: it came back
    assert _steps_to_stay_below([0.5, 0.4], 1.0) == 0
    assert _steps_to_stay_below([3.0, 0.5, 2.0], 1.0) == np.inf


def _adam_state(tx, params):
    """optax.adam's state with its step count as a float64 array instead of int32.

    Bias correction computes ``b ** count`` with a Python float ``b``; for a traced int32
    count that is a float-int mix, which strict promotion rejects. optax's counter supports
    floating counts (``safe_increment``), float64 counts exactly up to 2^53 steps, and
    ``b ** count`` takes the same value, so Adam's arithmetic is unchanged; no global flag
    is touched.
    """
    adam_state, *rest = tx.init(params)
    return (adam_state._replace(count=adam_state.count.astype(F64)), *rest)


def test_gauss_newton_beats_tuned_adam():
    params, x, y = _regression()
    loss = cv.supervised_loss(F, "mse")

    @jax.jit
    def adam_losses(lr):
        tx = optax.adam(lr)
        return _train(tx, params, (x, y), STEPS, loss, _adam_state(tx, params))

    adam = jax.vmap(adam_losses)(jnp.asarray(ADAM_RATES, F64))
    adam_steps = [_steps_to_stay_below(row, TARGET) for row in adam]
    best = min(adam_steps)
    assert np.isfinite(best), adam_steps  # the grid does reach the target
    # The best rate is strictly inside the grid, not at an edge where a better one could lie.
    assert 0 < adam_steps.index(best) < len(ADAM_RATES) - 1, adam_steps

    tx = opt.gauss_newton(F, "mse", damping=1e-3, cg_iters=10)
    gn = jax.jit(lambda: _train(tx, params, (x, y), STEPS, loss))()
    gn_steps = _steps_to_stay_below(gn, TARGET)
    assert gn_steps < best, (gn_steps, adam_steps)


# --- mixed-precision parameters -----------------------------------------------------------------

# Strict promotion (tests/conftest.py) rejects ravel_pytree of mixed float32/float64 leaves, and
# the curvature products ravel; tests never flip that flag, so this runs in a fresh interpreter
# with JAX's default promotion (float64 enabled), as a user with mixed parameters would.
_MIXED_SCRIPT = textwrap.dedent("""
    import functools, json
    import jax
    import jax.numpy as jnp
    import optax

    jax.config.update("jax_enable_x64", True)
    import jaxjac as jj
    from jaxjac import curvature as cv
    from jaxjac import optimizers as opt

    f = functools.partial(jj.mlp_apply, activation="tanh")
    params = jj.mlp_init(jax.random.key(0), [2, 6, 1], dtype=jnp.float32)
    params[-1] = {k: v.astype(jnp.float64) for k, v in params[-1].items()}  # first leaf f32
    x = jax.random.normal(jax.random.key(1), (16, 2), jnp.float32)
    y = jnp.sin(x[:, :1]).astype(jnp.float64)
    loss = cv.supervised_loss(f, "mse")
    tx = optax.chain(
        opt.scale_by_gauss_newton(f, "mse", damping=1e-2, cg_iters=4),
        optax.scale_by_learning_rate(1.0),
        opt.track_sharpness(loss, jax.random.key(2), num_iters=8, every=2),
    )

    def step(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(loss)(p, (x, y))
        updates, s = tx.update(grads, s, p, batch=(x, y))
        return (optax.apply_updates(p, updates), s), value

    # A scan carries the state and track_sharpness's lax.cond returns it: both need the
    # dtypes that init chose to be those update computes.
    run = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), length=6))
    (params, state), losses = run(params, tx.init(params))
    print(json.dumps({
        "leaves": [leaf.dtype.name for leaf in jax.tree_util.tree_leaves(params)],
        "cg_residual": [state[0].cg_residual.dtype.name, float(state[0].cg_residual)],
        "sharpness": [state[2].sharpness.dtype.name, float(state[2].sharpness)],
        "losses": [float(losses[0]), float(losses[-1])],
    }))
""")


def test_mixed_precision_params_keep_one_state_dtype():
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUMPY_DTYPE_PROMOTION"}
    proc = subprocess.run(
        [sys.executable, "-c", _MIXED_SCRIPT], capture_output=True, text=True, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["leaves"] == ["float32", "float32", "float64", "float64"]  # params stay mixed
    # The state's scalars take the raveled (promoted) dtype, float64, not the first leaf's.
    assert out["cg_residual"][0] == out["sharpness"][0] == "float64"
    assert 0 < out["cg_residual"][1] < 1
    assert out["sharpness"][1] > 0  # the PSD Gauss-Newton part dominates near a fit
    assert out["losses"][1] < out["losses"][0]


# --- sharpness ---------------------------------------------------------------------------------


def test_track_sharpness_records_the_top_eigenvalue():
    params, x, y = _problem("mse")
    loss = cv.supervised_loss(F, "mse")
    n_params = ravel_pytree(params)[0].size
    tx = optax.chain(
        optax.sgd(0.1), opt.track_sharpness(loss, jax.random.key(1), num_iters=n_params, every=2)
    )

    @jax.jit
    def step(p, s):
        grads = jax.grad(loss)(p, (x, y))
        updates, s = tx.update(grads, s, p, batch=(x, y))
        return optax.apply_updates(p, updates), s

    def top(p):
        return cv.hessian_eigs(loss, p, (x, y), k=1, method="dense").eigenvalues[0]

    state = tx.init(params)
    assert np.isnan(state[1].sharpness)
    history = [params]
    for _ in range(3):
        params, state = step(params, state)
        history.append(params)
        if len(history) == 2:
            first = float(state[1].sharpness)
        if len(history) == 3:
            assert float(state[1].sharpness) == first  # every=2: step 2 keeps the value
    assert_close(first, top(history[0]), RTOL)
    assert_close(state[1].sharpness, top(history[2]), RTOL)
    assert abs(float(top(history[2])) - first) > 1e3 * RTOL * abs(first)  # the value moved
    assert int(state[1].count) == 3


def test_update_needs_params_and_batch():
    params, x, y = _problem("mse")
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    for tx in (
        opt.scale_by_gauss_newton(F, "mse"),
        opt.track_sharpness(cv.supervised_loss(F, "mse"), jax.random.key(0)),
    ):
        state = tx.init(params)
        with pytest.raises(ValueError, match="batch"):
            tx.update(grads, state, params)
        with pytest.raises(ValueError, match="params"):
            tx.update(grads, state, None, batch=(x, y))
    with pytest.raises(ValueError, match="damping"):
        opt.scale_by_gauss_newton(F, "mse", damping=0.0)
    with pytest.raises(ValueError, match="curvature"):
        opt.scale_by_gauss_newton(F, "mse", curvature="hessian")
    with pytest.raises(ValueError, match="every"):
        opt.track_sharpness(cv.supervised_loss(F, "mse"), jax.random.key(0), every=0)


def test_batch_must_be_a_pair():
    params, x, y = _problem("mse")
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    for tx in (opt.scale_by_gauss_newton(F, "mse"), opt.gauss_newton(F, "mse")):
        state = tx.init(params)
        with pytest.raises(ValueError, match=r"batch=\(x, y\).*array of shape \(7, 3\)"):
            tx.update(grads, state, params, batch=x)
        with pytest.raises(ValueError, match=r"batch=\(x, y\).*tuple of length 3"):
            tx.update(grads, state, params, batch=(x, y, y))


def test_numpy_integer_options():
    params, x, y = _problem("mse")
    grads = jax.grad(cv.supervised_loss(F, "mse"))(params, (x, y))
    loss = cv.supervised_loss(F, "mse")
    for n in (np.int64, np.int32):
        want, got = (
            opt.scale_by_gauss_newton(F, "mse", cg_iters=c(3)).update(
                grads, opt.scale_by_gauss_newton(F, "mse").init(params), params, batch=(x, y)
            )[0]
            for c in (int, n)
        )
        assert_close(ravel_pytree(got)[0], ravel_pytree(want)[0], RTOL)
        tx = opt.track_sharpness(loss, jax.random.key(0), num_iters=n(5), every=n(2))
        _, state = tx.update(grads, tx.init(params), params, batch=(x, y))
        assert np.isfinite(state.sharpness)
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="cg_iters must be a positive integer"):
            opt.scale_by_gauss_newton(F, "mse", cg_iters=bad)
        with pytest.raises(ValueError, match="every must be a positive integer"):
            opt.track_sharpness(loss, jax.random.key(0), every=bad)
