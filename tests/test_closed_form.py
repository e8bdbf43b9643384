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


def _architecture(seed, depth=None):
    """``[n_in, h_1, …, n_out]``: ``depth`` layers (random 1 to 5 if not given), widths 1 to 32."""
    rng = np.random.default_rng(seed)
    if depth is None:
        depth = int(rng.integers(1, 6))
    return [int(rng.integers(1, 33)) for _ in range(depth)] + [int(rng.integers(1, 6))]


def _network(seed, dtype=F64, sizes=None, batch=3, depth=None):
    if sizes is None:
        sizes = _architecture(seed, depth)
    key = jax.random.key(seed)
    params = jj.mlp_init(key, sizes, dtype=dtype)
    # Non-zero biases so every activation is probed off its symmetric point.
    params = [
        {"W": p["W"], "b": jax.random.normal(jax.random.fold_in(key, i), p["b"].shape, dtype)}
        for i, p in enumerate(params)
    ]
    xs = jax.random.normal(jax.random.fold_in(key, 99), (batch, sizes[0]), dtype)
    return params, xs, sizes


# One random architecture per activation, the depth cycling through 1 … 5 so that every depth
# meets several activations (a one-layer net is affine: its Hessian must be exactly zero).
AUTODIFF_CASES = [(seed, act, 1 + (seed + 1) % 5) for seed, act in enumerate(ACTIVATIONS)]
FD_CASES = [(100 + seed, act, 1 + (seed + 2) % 5) for seed, act in enumerate(ACTIVATIONS)]


def test_random_architectures_cover_the_required_ranges():
    # The grid: depth 1 to 5, widths 1 to 32, n_out 1 to 5, every activation. Guard the
    # seeds above against drifting into a narrower range.
    for cases in (AUTODIFF_CASES, FD_CASES):
        archs = [_architecture(seed, depth) for seed, _, depth in cases]
        assert {len(sizes) - 1 for sizes in archs} == {1, 2, 3, 4, 5}
        assert {act for _, act, _ in cases} == set(ACTIVATIONS)
        widths = [w for sizes in archs for w in sizes[:-1]]
        assert min(widths) <= 4 and max(widths) >= 28 and all(1 <= w <= 32 for w in widths)
        assert all(1 <= sizes[-1] <= 5 for sizes in archs)


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


@pytest.mark.parametrize(("seed", "act", "depth"), AUTODIFF_CASES)
def test_closed_form_matches_autodiff_float64(seed, act, depth):
    params, xs, sizes = _network(seed, depth=depth)
    assert len(params) == depth
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
    # Symmetry where it is not built in: jax.hessian differentiates forward over reverse, so
    # H[i, j] and H[j, i] come from different sweeps. The closed form must equal the transpose.
    assert_close(hess, jnp.swapaxes(ad["hessian"], -1, -2), exact_rtol(F64), scale=scale)
    f = functools.partial(jj.mlp_apply, activation=act)
    h0 = jj.input_hessian(f, params, xs[0])
    assert_close(h0, jnp.swapaxes(h0, -1, -2), exact_rtol(F64), scale=scale, what="jj symmetry")
    assert_close(hess[0], h0, exact_rtol(F64), scale=scale, what="H vs jj.input_hessian")
    wjac = jj.closed_form.mlp_weight_jacobian(params, xs, act)
    assert_close(wjac, ad["weights"], REQUIRED_RTOL, what="weight Jacobian")


def _second_differences(fn, x):
    """Hessian ``(m, n, n)`` of ``fn: (B, n) -> (B, m)`` by second central differences of its value.

    ``H_ij ≈ [f(x+e_i+e_j) - f(x+e_i-e_j) - f(x-e_i+e_j) + f(x-e_i-e_j)] / (4 h_i h_j)``, all
    ``4 n²`` points in one batched call. Step ``h = ε^{1/4}``: truncation ``O(h²)`` and rounding
    ``O(ε/h²)`` are both ``ε^{1/2}``, hence the tolerance ``SECOND_FD_RTOL`` below. Uses no
    derivative of the activation at all: neither its ``df`` nor its ``d2f``.
    """
    x = np.asarray(x, np.float64)
    n = x.size
    h = np.finfo(np.float64).eps ** (1 / 4) * np.maximum(1.0, np.abs(x))
    e = np.diag(h)
    signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    pts = np.stack([x + si * e[:, None, :] + sj * e[None, :, :] for si, sj in signs])
    vals = np.asarray(fn(pts.reshape(-1, n))).reshape(4, n, n, -1)
    hess = (vals[0] - vals[1] - vals[2] + vals[3]) / (4 * h[:, None, None] * h[None, :, None])
    return np.moveaxis(hess, -1, 0)


SECOND_FD_RTOL = 100 * np.finfo(np.float64).eps ** (1 / 2)  # 1.5e-6; see _second_differences


@pytest.mark.parametrize(("seed", "act", "depth"), FD_CASES)
def test_closed_form_matches_finite_differences(seed, act, depth):
    # Oracles independent of the closed form: differences of the network's value (mlp_apply),
    # and differences of jax.jacrev (which uses the activation's df but never its d2f).
    params, xs, _ = _network(seed, depth=depth)
    x = xs[0] + 0.0123  # away from relu kinks at exactly representable points
    net = jax.jit(functools.partial(jj.mlp_apply, params, activation=act))
    grad = jax.jit(jax.jacrev(net))
    # A difference of g rounds to ε |g| / h: errors are measured against the magnitude of the
    # function differenced (a deep logsig net has |J| ~ 1e-3 |A|, and |A| sets the rounding).
    value = float(np.max(np.abs(np.asarray(net(x)))))
    fd_jac = central_jacobian(lambda v: np.asarray(net(v)), x)
    jac = jj.closed_form.mlp_jacobian(params, x, act)
    assert_close(jac, fd_jac, fd_rtol(F64), scale=value, what="J")
    jac_scale = float(np.max(np.abs(fd_jac)))
    hess = jj.closed_form.mlp_hessian(params, x, act)
    fd_hess = central_jacobian(lambda v: np.asarray(grad(v)), x)
    assert_close(hess, fd_hess, fd_rtol(F64), scale=jac_scale, what="H vs FD of jacrev")
    second = _second_differences(net, x)
    scale = max(value, jac_scale)
    assert_close(hess, second, SECOND_FD_RTOL, scale=scale, what="H vs second differences")


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    hidden=st.lists(st.integers(1, 32), min_size=0, max_size=4),
    n_in=st.integers(1, 32),
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


def test_jacobian_cost_counts_multiply_adds():
    # [3, 5, 7, 2]: layer products 15, 35, 14. From the input side the 3 columns pass W_2 and
    # W_3: 3 (35 + 14) = 147; from the output side the 2 rows pass W_2 and W_1: 2 (35 + 15) = 100.
    assert jacobian_cost([3, 5, 7, 2]) == {"fwd": 147, "rev": 100}
    assert jacobian_cost([4, 3]) == {"fwd": 0, "rev": 0}  # one layer: J = W_1, no product


def _flops(params, xs, mode):
    compiled = jj.closed_form.mlp_jacobian.lower(params, xs, "tanh", mode=mode).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize(
    ("sizes", "cheap"), [([64, 64, 64, 2], "rev"), ([2, 64, 64, 64], "fwd")], ids=["wide", "tall"]
)
def test_accumulation_side_is_chosen_by_cost(sizes, cheap):
    # mode="auto" must compile to the cheaper program: XLA's own FLOP count of the auto program
    # equals that of the cheap side and is far below the other (16x fewer multiply-adds here).
    params, xs, _ = _network(1, sizes=sizes, batch=8)
    dear = {"fwd": "rev", "rev": "fwd"}[cheap]
    auto, cheap_flops, dear_flops = (_flops(params, xs, m) for m in ("auto", cheap, dear))
    assert auto == cheap_flops, (auto, cheap_flops, dear_flops)
    assert dear_flops > 5 * cheap_flops, (cheap_flops, dear_flops)
    expected = _autodiff(params, xs, "tanh")["jacrev"]
    assert_close(jj.closed_form.mlp_jacobian(params, xs, "tanh"), expected, exact_rtol(F64))


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


def test_float32_weights_with_float64_inputs_give_float64_accuracy():
    # Flax's and mlp_init's float32 weights meet float64 data (x64 on). The result is float64,
    # so it must be as accurate as with float64 weights holding the same values: autodiff of
    # the mixed network is, and without the promotion the closed form squared float32 values
    # in float32 (errors ~1e-8 against ~1e-16 here).
    p32 = jj.mlp_init(jax.random.key(0), [3, 7, 6, 2], dtype=jnp.float32)
    p64 = jax.tree_util.tree_map(lambda a: a.astype(F64), p32)
    x = jax.random.normal(jax.random.key(1), (5, 3), F64)
    with jax.numpy_dtype_promotion("standard"):  # the mix is the point; strict forbids it
        for name in ("mlp_jacobian", "mlp_hessian", "mlp_laplacian"):
            fn = getattr(jj.closed_form, name)
            mixed, exact = fn(p32, x, "tanh"), fn(p64, x, "tanh")
            assert mixed.dtype == F64
            assert_close(mixed, exact, exact_rtol(F64), what=name)
        hess = jj.batch_input_hessian(jj.mlp_function("tanh"), p32, x)
        assert_close(hess, jj.closed_form.mlp_hessian(p64, x, "tanh"), exact_rtol(F64))
        assert jj.cross_check(p32, x[0], "tanh").passed
