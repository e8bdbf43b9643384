"""Determinants, divergence, Laplacian and their stochastic estimators (jaxjac.calculus)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import jaxjac as jj
from jaxjac import _mlp_cpu, closed_form
from jaxjac import calculus as jc
from jaxjac.activations import list_activations
from jaxjac.nets import mlp_apply, mlp_init
from tests.helpers import assert_close, central_jacobian, exact_rtol, fd_rtol, rel_err

F64, F32 = jnp.float64, jnp.float32

# --- test functions: module level, so each compiles once for the whole file --------------------


def sum_product(v):  # (x, y) -> (x + y, x y): det = x - y
    return jnp.stack([v[0] + v[1], v[0] * v[1]])


def polar(v):  # (r, θ) -> (r cos θ, r sin θ): det = r
    return jnp.stack([v[0] * jnp.cos(v[1]), v[0] * jnp.sin(v[1])])


def spherical(v):  # (r, θ, φ), θ from the z axis: det = r² sin θ
    r, t, p = v[0], v[1], v[2]
    return jnp.stack([r * jnp.sin(t) * jnp.cos(p), r * jnp.sin(t) * jnp.sin(p), r * jnp.cos(t)])


def rank_one(v):  # J = [[1, 1], [2, 2]] everywhere
    return jnp.stack([v[0] + v[1], 2 * v[0] + 2 * v[1]])


def cube(v):  # J = diag(3 v²): singular wherever a coordinate is 0
    return v**3


def zero_map(v):
    return 0 * v


def drop_last(v):  # R^3 -> R^2
    return v[:-1]


def field(v):  # a nonlinear R^n -> R^n for any shape, with a non-symmetric Jacobian
    return jnp.sin(v) * jnp.roll(v, 1) + v**2


def sq_norm(v):
    return jnp.sum(v * v)


def sum_sin(v):
    return jnp.sum(jnp.sin(v))


def two_outputs(v):  # (‖x‖², Σ sin x_i): Laplacians (2n, -Σ sin x_i)
    return jnp.stack([sq_norm(v), sum_sin(v)])


def coupled(v):  # scalar-pair with off-diagonal Hessians, so probes have real variance
    return jnp.stack([jnp.sum(jnp.sin(v * jnp.roll(v, 1))), jnp.sum(v * v) ** 2])


def linear(m, v):
    return m @ v


def affine(a, b, v):
    return a @ v + b


def half_quadratic(m, v):  # Hessian m (symmetric)
    return 0.5 * v @ (m @ v)


def _normal(seed, shape, dtype=F64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _orthogonal(seed, n):
    q, _ = np.linalg.qr(np.asarray(_normal(seed, (n, n))))
    return q


# --- determinants -------------------------------------------------------------------------------


def test_sum_product_det_is_x_minus_y():
    x = jnp.array([-1.0, 2.0])
    assert_close(jc.jacobian_det(sum_product, x), -3.0, exact_rtol(F64), what="det")
    sign, logabsdet = jc.slogdet_jacobian(sum_product, x)
    assert float(sign) == -1.0
    assert_close(logabsdet, math.log(3.0), exact_rtol(F64), what="slogdet")
    assert_close(jc.log_abs_det_jacobian(sum_product, x), math.log(3.0), exact_rtol(F64))
    xs = _normal(0, (6, 2))
    dets = jc.batch_jacobian_det(sum_product, xs)
    assert_close(dets, xs[:, 0] - xs[:, 1], exact_rtol(F64), what="batched det")


def test_polar_and_spherical_dets():
    u = jax.random.uniform(jax.random.key(1), (8, 3), F64)
    r, t, p = 0.1 + 2 * u[:, 0], 0.05 + 3 * u[:, 1], 2 * math.pi * u[:, 2]
    assert_close(jc.batch_jacobian_det(polar, jnp.stack([r, t], 1)), r, exact_rtol(F64))
    det = jc.batch_jacobian_det(spherical, jnp.stack([r, t, p], 1))
    assert_close(det, r**2 * jnp.sin(t), exact_rtol(F64), what="spherical")
    # θ in (π, 2π) makes sin θ < 0: the spherical map's det r² sin θ turns negative (the map
    # reverses orientation there), |det| = r² |sin θ|.
    sign, logabsdet = jc.batch_slogdet_jacobian(spherical, jnp.stack([r, t + math.pi, p], 1))
    np.testing.assert_array_equal(sign, -1.0)
    assert_close(logabsdet, jnp.log(r**2 * jnp.abs(jnp.sin(t))), exact_rtol(F64))


def test_disk_integral_by_change_of_variables():
    # ∫∫_{x²+y²≤1} exp(-(x²+y²)) = π (1 - 1/e), integrated over (r, θ) ∈ [0,1]×[0,2π] with
    # |det J| from the library. exp(-r²) r is entire: 20 Gauss-Legendre nodes are exact far
    # below 1e-10 (the rule integrates degree-39 polynomials exactly).
    nr, wr = np.polynomial.legendre.leggauss(20)
    nt, wt = np.polynomial.legendre.leggauss(8)
    r, wr = 0.5 * (nr + 1), 0.5 * wr
    t, wt = math.pi * (nt + 1), math.pi * wt
    pts = jnp.asarray(np.stack(np.meshgrid(r, t, indexing="ij"), -1).reshape(-1, 2))
    weights = np.outer(wr, wt).reshape(-1)
    xy = np.asarray(jax.vmap(polar)(pts))
    det = np.abs(np.asarray(jc.batch_jacobian_det(polar, pts)))
    integral = np.sum(weights * np.exp(-np.sum(xy**2, axis=1)) * det)
    assert abs(integral - math.pi * (1 - math.exp(-1))) < 1e-10
    via_log = np.exp(np.asarray(jc.batch_log_abs_det_jacobian(polar, pts)))
    assert_close(via_log, det, exact_rtol(F64), what="exp(log|det|) vs |det|")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reflect", [False, True])
def test_pushforward_density_of_affine_map(seed, reflect):
    # y = A x + b with x ~ N(0, I): log p_y(y) = log p_x(x) - log|det A| = log N(y; b, AAᵀ).
    # A = U diag(s) Vᵀ with s in [0.5, 2] keeps cond(AAᵀ) ≤ 16, so scipy's eigh-based logpdf
    # is accurate to a few ε and the rounding tolerance applies.
    n = 3
    s = 0.5 + 1.5 * np.asarray(jax.random.uniform(jax.random.key(seed), (n,), F64))
    a = _orthogonal(seed + 10, n) @ np.diag(s) @ _orthogonal(seed + 20, n).T
    if reflect:
        a[:, 0] = -a[:, 0]
    b = np.asarray(_normal(seed + 30, (n,)))
    f = functools.partial(affine, jnp.asarray(a), jnp.asarray(b))
    x = _normal(seed + 40, (n,))
    y = np.asarray(f(x))
    log_px = -0.5 * float(x @ x) - 0.5 * n * math.log(2 * math.pi)
    log_py = log_px - float(jc.log_abs_det_jacobian(f, x))
    reference = stats.multivariate_normal(mean=b, cov=a @ a.T).logpdf(y)
    assert_close(log_py, reference, exact_rtol(F64), what="pushforward log-density")
    assert float(jc.slogdet_jacobian(f, x)[0]) == np.sign(np.linalg.det(a))


@pytest.mark.parametrize("f", [rank_one, cube, zero_map])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_singular_point_gives_zero_and_minus_inf_never_nan(f, dtype):
    x = jnp.zeros(2, dtype) if f is not rank_one else jnp.array([0.3, -1.7], dtype)
    sign, logabsdet = jc.slogdet_jacobian(f, x)
    det, log_det = jc.jacobian_det(f, x), jc.log_abs_det_jacobian(f, x)
    assert float(sign) == 0.0 and float(det) == 0.0
    assert float(logabsdet) == -np.inf and float(log_det) == -np.inf
    assert det.dtype == dtype and logabsdet.dtype == dtype


def _squares(x):
    return x**2  # det J = 4 x_1 x_2: singular on the axes, with gradient (4 x_2, 4 x_1)


def _total_det(xs, chunk_size):
    return jc.batch_jacobian_det(_squares, xs, chunk_size=chunk_size).sum()


def test_gradient_of_the_determinant_is_finite_at_singular_points():
    # exp(log|det|) has a NaN derivative where det = 0; det itself is smooth there.
    xs = jnp.array([[0.0, 1.0], [2.0, 3.0], [0.0, 0.0], [-1.5, 0.0]], F64)
    want = 4 * xs[:, ::-1]  # ∇(4 x_1 x_2)
    for x, g in zip(xs, want, strict=True):
        assert_close(jax.grad(lambda x: jc.jacobian_det(_squares, x))(x), g, exact_rtol(F64))
    for chunk_size in (None, 3):
        total = functools.partial(_total_det, chunk_size=chunk_size)
        got = jax.grad(total)
        assert_close(got(xs), want, exact_rtol(F64), what=f"batched, chunk_size={chunk_size}")
    # the MLP's closed-form route, against jnp.linalg.det of jacfwd (regular points)
    params = mlp_init(jax.random.key(0), [3, 5, 3], dtype=F64)
    net = functools.partial(mlp_apply, params)
    pts = jax.random.normal(jax.random.key(1), (4, 3), F64)
    ref = jax.grad(lambda v: jax.vmap(lambda x: jnp.linalg.det(jax.jacfwd(net)(x)))(v).sum())
    got = jax.grad(lambda v: jc.batch_jacobian_det(net, v).sum())
    assert_close(got(pts), ref(pts), exact_rtol(F64), what="closed-form route")


def test_batched_det_mixes_singular_and_regular_points():
    xs = jnp.array([[1.0, 2.0, -0.5], [0.0, 1.0, 1.0], [1.5, -0.5, 2.0], [1.0, 0.0, 0.0]])
    dets = jc.batch_jacobian_det(cube, xs, chunk_size=3)
    assert_close(dets, 27 * jnp.prod(xs**2, axis=1), exact_rtol(F64), what="det of v³")
    sign, logabsdet = jc.batch_slogdet_jacobian(cube, xs)
    np.testing.assert_array_equal(sign, [1.0, 0.0, 1.0, 0.0])
    assert np.all(np.isneginf(np.asarray(logabsdet)[[1, 3]])) and not np.any(np.isnan(logabsdet))


@pytest.mark.parametrize(
    "entry",
    [
        jc.jacobian_det,
        jc.slogdet_jacobian,
        jc.log_abs_det_jacobian,
        jc.divergence,
        functools.partial(jc.hutchinson_divergence, key=jax.random.key(0), num_probes=4),
        functools.partial(jc.hutchpp_divergence, key=jax.random.key(0), num_probes=6),
    ],
)
def test_non_square_jacobian_raises_naming_both_shapes(entry):
    with pytest.raises(ValueError, match=r"x has shape \(3,\), f\(x\) has shape \(2,\)"):
        entry(drop_last, jnp.ones(3))


def test_batched_non_square_raises_with_per_example_shapes():
    with pytest.raises(ValueError, match=r"x has shape \(3,\), f\(x\) has shape \(\)"):
        jc.batch_jacobian_det(sq_norm, jnp.ones((4, 3)))


# --- divergence and Laplacian -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["vmap", "loop", "auto"])
def test_divergence_matches_trace_of_finite_difference_jacobian(method):
    x = _normal(2, (2, 3))  # any shape: the Jacobian is flattened to (6, 6)
    flat = np.asarray(x).reshape(-1)
    fd = central_jacobian(lambda v: np.asarray(field(jnp.asarray(v).reshape(2, 3))).ravel(), flat)
    div = jc.divergence(field, x, method=method)
    assert_close(div, np.trace(fd), fd_rtol(F64), what="divergence vs FD")
    exact = jnp.trace(jax.jacfwd(field)(x).reshape(6, 6))
    assert_close(div, exact, exact_rtol(F64), what="divergence vs jacfwd")


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_laplacian_of_known_functions(method, n):
    x = _normal(n, (n,))
    assert_close(jc.laplacian(sq_norm, x, method=method), 2.0 * n, exact_rtol(F64))
    assert_close(jc.laplacian(sum_sin, x, method=method), -jnp.sum(jnp.sin(x)), exact_rtol(F64))
    lap = jc.laplacian(two_outputs, x, method=method)
    assert_close(lap, jnp.stack([2.0 * n, -jnp.sum(jnp.sin(x))]), exact_rtol(F64))
    assert lap.shape == (2,)


def test_laplacian_of_matrix_input_and_vector_output_matches_hessian_trace():
    x = _normal(3, (2, 3))
    hess = jax.hessian(coupled)(x).reshape(2, 6, 6)
    for method in ("vmap", "loop"):
        lap = jc.laplacian(coupled, x, method=method)
        assert_close(lap, jnp.trace(hess, axis1=1, axis2=2), exact_rtol(F64), what=method)


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(1, 32), min_size=2, max_size=6),  # depth 1 to 5, widths to 32
    batch=st.integers(1, 3),
    activation=st.sampled_from(list_activations()),
)
def test_mlp_laplacian_equals_trace_of_both_hessians(seed, sizes, batch, activation):
    params = mlp_init(jax.random.key(seed), sizes, dtype=F64)
    xs = _normal(seed + 1, (batch, sizes[0]))
    lap = closed_form.mlp_laplacian(params, xs, activation)
    closed_hess = closed_form.mlp_hessian(params, xs, activation)
    net = functools.partial(mlp_apply, params, activation=activation)
    ad_hess = jax.jit(jax.vmap(jax.hessian(net)))(xs)
    # Rounding scales with the Hessian's entries, and a trace can cancel to ≈ 0 (identity or
    # relu nets), so errors are measured against max|H| when that is the larger.
    scale = float(jnp.max(jnp.abs(ad_hess)))
    rtol = exact_rtol(F64)
    assert_close(lap, jnp.trace(closed_hess, axis1=-2, axis2=-1), rtol, scale, "closed H")
    assert_close(lap, jnp.trace(ad_hess, axis1=-2, axis2=-1), rtol, scale, "jax.hessian")


@pytest.mark.parametrize(
    ("sizes", "activation"), [([3, 8, 2], "tanh"), ([5, 6, 6, 3], "gelu"), ([4, 7, 1], "softplus")]
)
def test_generic_laplacian_on_mlp_equals_closed_form(sizes, activation):
    params = mlp_init(jax.random.key(len(sizes)), sizes, dtype=F64)
    net = functools.partial(mlp_apply, params, activation=activation)
    xs = _normal(5, (5, sizes[0]))
    expected = closed_form.mlp_laplacian(params, xs, activation)
    assert_close(jc.batch_laplacian(net, xs), expected, exact_rtol(F64), what="vmap")
    looped = jc.batch_laplacian(net, xs, method="loop", chunk_size=2)
    assert_close(looped, expected, exact_rtol(F64), what="loop, chunked")


# --- batched, chunked, float32, compile-once ----------------------------------------------------

_SINGLE_AND_BATCHED = [
    (jc.jacobian_det, jc.batch_jacobian_det, {}),
    (jc.log_abs_det_jacobian, jc.batch_log_abs_det_jacobian, {}),
    (jc.slogdet_jacobian, jc.batch_slogdet_jacobian, {}),
    (jc.divergence, jc.batch_divergence, {"method": "vmap"}),
    (jc.divergence, jc.batch_divergence, {"method": "loop"}),
    (jc.laplacian, jc.batch_laplacian, {"method": "vmap"}),
    (jc.laplacian, jc.batch_laplacian, {"method": "loop"}),
]


@pytest.mark.parametrize(("single", "batched", "options"), _SINGLE_AND_BATCHED)
def test_batched_equals_looped_and_chunked_equals_unchunked(single, batched, options):
    xs = _normal(6, (7, 3))
    looped = [single(field, x, **options) for x in xs]
    looped = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *looped)
    whole = batched(field, xs, **options)
    assert_close(whole, looped, exact_rtol(F64), what="batched vs looped")
    chunked = batched(field, xs, chunk_size=3, **options)  # 3 does not divide 7
    assert_close(chunked, whole, exact_rtol(F64), what="chunked vs whole")


def test_float32_stays_float32_within_float32_rounding():
    # Inputs drawn in float32 and widened exactly, so both precisions see the same point; the
    # gap is then float32 rounding only.
    x32 = _normal(7, (4,), F32)
    x64 = x32.astype(F64)
    pairs = [
        (jc.jacobian_det(field, x32), jc.jacobian_det(field, x64)),
        (jc.log_abs_det_jacobian(field, x32), jc.log_abs_det_jacobian(field, x64)),
        (jc.divergence(field, x32), jc.divergence(field, x64)),
        (jc.laplacian(coupled, x32), jc.laplacian(coupled, x64)),
        (jc.laplacian(coupled, x32, method="loop"), jc.laplacian(coupled, x64)),
    ]
    for got, ref in pairs:
        assert got.dtype == F32
        assert_close(got, ref, exact_rtol(F32))
    est = jc.hutchinson_laplacian(coupled, x32, jax.random.key(0), num_probes=8)
    assert est.estimate.dtype == F32 and est.stderr.dtype == F32
    est = jc.hutchpp_divergence(field, x32, jax.random.key(0), num_probes=12)
    assert est.estimate.dtype == F32
    assert_close(est.estimate, jc.divergence(field, x64), exact_rtol(F32), what="Hutch++ f32")


def test_compiles_once_per_function_and_shape():
    traces = []

    def counted(v):
        traces.append(v.shape)
        return field(v)

    calls = [
        lambda x: jc.jacobian_det(counted, x),
        lambda x: jc.laplacian(counted, x),
        lambda x: jc.batch_slogdet_jacobian(counted, jnp.stack([x, x])),
        lambda x: jc.hutchinson_divergence(counted, x, jax.random.key(0), num_probes=4),
    ]
    for call in calls:
        call(_normal(8, (3,)))
        n_traces = len(traces)
        assert n_traces > 0
        call(_normal(9, (3,)))  # new values, same shape: cached
        assert len(traces) == n_traces
        call(_normal(9, (4,)))  # new shape: one more compilation
        assert len(traces) > n_traces
    # A new key is a new value, not a new program.
    n_traces = len(traces)
    jc.hutchinson_divergence(counted, jnp.ones(3), jax.random.key(5), num_probes=4)
    assert len(traces) == n_traces


# --- stochastic estimators -----------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("seed", range(5))
def test_hutchinson_within_four_standard_errors(probe, seed):
    # Fixed seeds, so deterministic; a correct estimator misses 4 standard errors with
    # probability ~1e-4 per draw, a biased one (wrong sign, missing factor) fails at once.
    key = jax.random.key(seed)
    x = _normal(11, (6,))
    div = jc.hutchinson_divergence(field, x, key, num_probes=64, probe=probe)
    exact = jc.divergence(field, x)
    assert 0 < float(div.stderr) and abs(float(div.estimate - exact)) <= 4 * float(div.stderr)
    assert int(div.num_probes) == 64
    lap = jc.hutchinson_laplacian(coupled, x, key, num_probes=64, probe=probe)
    exact = jc.laplacian(coupled, x)
    assert lap.estimate.shape == (2,) and np.all(lap.stderr > 0)
    assert np.all(np.abs(lap.estimate - exact) <= 4 * lap.stderr)


def _coupled_scalar(v):
    return coupled(v)[0]


@pytest.mark.parametrize("operator", ["divergence", "laplacian"])
def test_hutchinson_stderr_matches_theory_and_halves_with_four_times_the_probes(operator):
    # Gaussian probes make vᵀAv = Σ λ_i z_i² (λ: eigenvalues of S = sym(A)): variance
    # σ² = 2 Σ λ², excess kurtosis γ = 12 Σ λ⁴ / (Σ λ²)². The sample std over m probes then has
    # relative standard deviation ½ √((2 + γ) / m), so se·√m/σ must lie within 4 of those of 1,
    # and the ratio se(m)/se(4m) (independent keys) within 4·½ √(1.25 (2 + γ) / m) of 2.
    x = _normal(12, (6,))
    if operator == "divergence":
        m_lin = _normal(13, (6, 6))
        f = functools.partial(linear, m_lin)
        a, estimator = np.asarray(m_lin), jc.hutchinson_divergence
    else:
        f, estimator = _coupled_scalar, jc.hutchinson_laplacian
        a = np.asarray(jax.hessian(_coupled_scalar)(x))
    lam = np.linalg.eigvalsh(0.5 * (a + a.T))
    sigma = math.sqrt(2 * np.sum(lam**2))
    gamma = 12 * np.sum(lam**4) / np.sum(lam**2) ** 2
    m = 4096
    small = estimator(f, x, jax.random.key(0), num_probes=m, probe="gaussian")
    large = estimator(f, x, jax.random.key(1), num_probes=4 * m, probe="gaussian")
    rel_sd = 0.5 * math.sqrt((2 + gamma) / m)
    assert abs(float(small.stderr) * math.sqrt(m) / sigma - 1) <= 4 * rel_sd
    ratio = float(small.stderr / large.stderr)
    assert abs(ratio / 2 - 1) <= 4 * 0.5 * math.sqrt(1.25 * (2 + gamma) / m), ratio


def test_hutchpp_is_exact_once_the_sketch_spans_the_space():
    # n = 4 and num_probes = 12 give a sketch of k = 4 = n columns: Q spans R^4, the deflated
    # residual is zero and only rounding remains; Hutchinson with as many probes is not exact.
    x = _normal(14, (4,))
    key = jax.random.key(3)
    exact = jc.divergence(field, x)
    pp = jc.hutchpp_divergence(field, x, key, num_probes=12)
    assert_close(pp.estimate, exact, exact_rtol(F64), what="Hutch++ divergence")
    assert float(pp.stderr) <= exact_rtol(F64) * abs(float(exact))
    plain = jc.hutchinson_divergence(field, x, key, num_probes=12)
    assert rel_err(plain.estimate, exact) > 1e-3
    lap = jc.hutchpp_laplacian(coupled, x, key, num_probes=12)
    assert_close(lap.estimate, jc.laplacian(coupled, x), exact_rtol(F64), what="Hutch++ Δ")
    assert lap.estimate.shape == (2,)


def _low_rank_dominated(n, seed):
    # Three strong directions plus weak full-rank noise (symmetric, so it is also a Hessian).
    u = _orthogonal(seed, n)[:, :3]
    noise = np.asarray(_normal(seed + 1, (n, n))) / n
    return jnp.asarray(u @ np.diag([10.0, -8.0, 6.0]) @ u.T + 0.5 * (noise + noise.T))


@pytest.mark.parametrize("operator", ["divergence", "laplacian"])
def test_hutchpp_beats_hutchinson_on_low_rank_dominated_operator(operator):
    n, m = 30, 24
    mat = _low_rank_dominated(n, 15)
    if operator == "divergence":
        f, plain, pp = (
            functools.partial(linear, mat),
            jc.hutchinson_divergence,
            jc.hutchpp_divergence,
        )
    else:
        f = functools.partial(half_quadratic, mat)
        plain, pp = jc.hutchinson_laplacian, jc.hutchpp_laplacian
    x, exact = _normal(16, (n,)), float(jnp.trace(mat))
    err_plain, err_pp = [], []
    for seed in range(8):
        key = jax.random.key(seed)
        est = pp(f, x, key, num_probes=m)
        assert abs(float(est.estimate) - exact) <= 4 * float(est.stderr)
        err_pp.append(float(est.estimate) - exact)
        err_plain.append(float(plain(f, x, key, num_probes=m).estimate) - exact)
    rms_pp, rms_plain = np.sqrt(np.mean(np.square(err_pp))), np.sqrt(np.mean(np.square(err_plain)))
    # The sketch removes the ±10, ±8, ±6 directions that dominate Hutchinson's variance.
    assert rms_pp < 0.2 * rms_plain, (rms_pp, rms_plain)


# --- argument checks ---------------------------------------------------------------------------


class _Unhashable:
    __hash__ = None

    def __call__(self, v):
        return v


def test_bad_arguments_raise():
    x, key = jnp.ones(3), jax.random.key(0)
    with pytest.raises(ValueError, match="method must be one of"):
        jc.divergence(field, x, method="dense")
    with pytest.raises(ValueError, match="method must be one of"):
        jc.laplacian(sq_norm, x, method="taylor")
    with pytest.raises(ValueError, match="num_probes must be an integer >= 2"):
        jc.hutchinson_divergence(field, x, key, num_probes=1)
    with pytest.raises(ValueError, match="num_probes must be an integer >= 4"):
        jc.hutchpp_laplacian(sq_norm, x, key, num_probes=3)
    with pytest.raises(ValueError, match="probe must be one of"):
        jc.hutchinson_laplacian(sq_norm, x, key, num_probes=8, probe="sobol")
    with pytest.raises(ValueError, match="chunk_size"):
        jc.batch_jacobian_det(field, jnp.ones((4, 3)), chunk_size=0)
    with pytest.raises(TypeError, match="floating"):
        jc.jacobian_det(field, jnp.arange(3))
    with pytest.raises(TypeError, match="hashable"):
        jc.jacobian_det(_Unhashable(), x)
    with pytest.raises(TypeError, match="single array"):
        jc.laplacian(lambda v: (v, v), x)


def test_partial_of_a_network_compiles_once_across_new_params():
    traces = []

    def net(params, x):
        traces.append(1)  # runs only while JAX traces
        return jj.mlp_apply(params, x, "tansig")

    x = jnp.array([0.3, -0.4])
    for seed in range(3):  # new params on every call, as in a training loop
        params = jj.mlp_init(jax.random.key(seed), [2, 5, 2], dtype=jnp.float64)
        logdet = jj.log_abs_det_jacobian(functools.partial(net, params), x)
        jac = jj.closed_form.mlp_jacobian(params, x)
        assert abs(float(logdet) - float(jnp.linalg.slogdet(jac)[1])) < 1e-12
        if seed == 0:
            first = len(traces)
    assert len(traces) == first


def test_batch_laplacian_of_a_jaxjac_mlp_takes_the_closed_form(monkeypatch):
    params = jj.mlp_init(jax.random.key(3), [4, 9, 7, 2], dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(4), (6, 4), jnp.float64)
    f = functools.partial(jj.mlp_apply, params, activation="softplus")
    calls = []
    real = _mlp_cpu.laplacian  # the closed form's CPU path: these tests run on the CPU
    monkeypatch.setattr(_mlp_cpu, "laplacian", lambda *a: calls.append(1) or real(*a))
    generic = jc.batch_laplacian(f, xs, method="vmap")  # second-order passes, no closed form
    assert calls == []
    for chunk in (None, 4):
        fast = jc.batch_laplacian(f, xs, chunk_size=chunk)
        assert_close(fast, generic, exact_rtol(jnp.float64))
    assert calls  # traced through the closed form


@pytest.mark.parametrize("helper", [jc.batch_laplacian, jc.batch_jacobian_det])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_mlp_fast_paths_with_the_wrong_width_name_both_sizes(helper, chunk_size):
    # The closed-form fast paths check the width like every other route, before any GEMM (and,
    # for the determinant, before the squareness of this [4, 6, 2] net).
    params = jj.mlp_init(jax.random.key(5), [4, 6, 2], dtype=jnp.float64)
    f = functools.partial(jj.mlp_apply, params)
    with pytest.raises(ValueError, match=r"\(4,\) or \(batch, 4\).*got shape \(3, 5\)"):
        helper(f, jnp.ones((3, 5), jnp.float64), chunk_size=chunk_size)


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_batched_determinants_of_a_jaxjac_mlp_take_the_closed_form(monkeypatch, activation):
    # A square MLP as a function of x: the closed-form Jacobian replaces vmap(jacfwd); the
    # numbers are those of the generic route (a lambda, which the fast path cannot recognise).
    params = jj.mlp_init(jax.random.key(6), [5, 11, 8, 5], dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(7), (9, 5), jnp.float64)
    f = functools.partial(jj.mlp_apply, params, activation=activation)

    def generic(x):
        return jj.mlp_apply(params, x, activation)

    calls = []
    real = _mlp_cpu.jacobian
    monkeypatch.setattr(_mlp_cpu, "jacobian", lambda *a: calls.append(1) or real(*a))
    ref_sign, ref_log = jc.batch_slogdet_jacobian(generic, xs)
    assert calls == []
    for chunk in (None, 4):
        sign, log = jc.batch_slogdet_jacobian(f, xs, chunk_size=chunk)
        np.testing.assert_array_equal(sign, ref_sign)
        assert_close(log, ref_log, exact_rtol(jnp.float64), scale=1.0)
        assert_close(
            jc.batch_log_abs_det_jacobian(f, xs, chunk_size=chunk), ref_log, exact_rtol(F64), 1.0
        )
        det = jc.batch_jacobian_det(f, xs, chunk_size=chunk)
        assert_close(det, ref_sign * np.exp(ref_log), exact_rtol(jnp.float64))
    assert calls  # traced through the closed form


def test_batched_determinant_of_a_singular_mlp_is_zero_and_minus_inf():
    # W_2 with a zero row: the Jacobian has a zero row at every x, det 0, never NaN.
    params = jj.mlp_init(jax.random.key(8), [3, 6, 3], dtype=jnp.float64)
    params[1]["W"] = params[1]["W"].at[1].set(0.0)
    f = functools.partial(jj.mlp_apply, params)
    xs = jax.random.normal(jax.random.key(9), (4, 3), jnp.float64)
    sign, log = jc.batch_slogdet_jacobian(f, xs)
    np.testing.assert_array_equal(sign, np.zeros(4))
    np.testing.assert_array_equal(log, np.full(4, -np.inf))
    np.testing.assert_array_equal(jc.batch_jacobian_det(f, xs), np.zeros(4))


def test_batched_determinant_of_a_non_square_mlp_names_both_shapes():
    params = jj.mlp_init(jax.random.key(10), [4, 6, 2], dtype=jnp.float64)
    f = functools.partial(jj.mlp_apply, params)
    with pytest.raises(ValueError, match=r"x has shape \(4,\), f\(x\) has shape \(2,\)"):
        jc.batch_log_abs_det_jacobian(f, jnp.ones((3, 4), jnp.float64))
