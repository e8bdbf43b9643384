"""Weight-space curvature against dense matrices built independently with jax.hessian/jacobian.

Small networks (P = 32 parameters, batch 7) make the dense Hessian, Gauss-Newton and Fisher
matrices cheap, so every matrix-free product, estimator and eigen-solver is checked against them:
exact routes to ``exact_rtol`` (normwise, against the largest entry), randomised routes within
4 of their own standard errors.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxjac as jj
from jaxjac import _curvature_ops as ops
from jaxjac import curvature as cv
from tests.helpers import assert_close, exact_rtol

F64 = jnp.float64
RTOL = exact_rtol(F64)
SIZES = [3, 5, 2]  # P = 3·5 + 5 + 5·2 + 2 = 32
F = functools.partial(jj.mlp_apply, activation="tanh")  # one object: compiled once


def _problem(kind, seed=0, sizes=SIZES, batch=7, dtype=F64):
    key = jax.random.key(seed)
    params = jj.mlp_init(key, sizes, dtype=dtype)
    params = [  # non-zero biases: no symmetric special point
        {"W": p["W"], "b": 0.3 * jax.random.normal(jax.random.fold_in(key, i), p["b"].shape, dtype)}
        for i, p in enumerate(params)
    ]
    x = jax.random.normal(jax.random.fold_in(key, 10), (batch, sizes[0]), dtype)
    if kind == "mse":
        y = jax.random.normal(jax.random.fold_in(key, 11), (batch, sizes[-1]), dtype)
    else:
        y = jax.random.randint(jax.random.fold_in(key, 11), (batch,), 0, sizes[-1])
    return params, x, y


def _per_example_loss(kind, z, y):
    """Written out independently of the library: ½‖z − y‖² or optax's cross-entropy."""
    if kind == "mse":
        return 0.5 * jnp.sum((z - y) ** 2)
    return optax.softmax_cross_entropy_with_integer_labels(z, y)


@functools.partial(jax.jit, static_argnames=("kind", "f"))
def _dense_jit(kind, params, x, y, f):
    flat, unravel = ravel_pytree(params)

    def outputs(w):
        return jax.vmap(lambda xb: f(unravel(w), xb))(x)  # (B, n_out)

    def losses(w):
        return jax.vmap(functools.partial(_per_example_loss, kind))(outputs(w), y)  # (B,)

    hess = jax.hessian(lambda w: jnp.mean(losses(w)))(flat)
    jac = jax.jacobian(outputs)(flat)  # (B, n_out, P)
    out_hess = jax.vmap(jax.hessian(functools.partial(_per_example_loss, kind)))(outputs(flat), y)
    ggn = jnp.einsum("bip,bij,bjq->pq", jac, out_hess, jac) / x.shape[0]
    grads = jax.jacobian(losses)(flat)  # (B, P)
    return hess, ggn, grads.T @ grads / x.shape[0]


def _dense(kind, params, x, y, f=F):
    """Dense H, GGN and empirical Fisher (P × P) of the batch-mean loss, by plain autodiff.

    Built from the per-example loss written out above and jax.hessian/jacobian over the raveled
    parameters, sharing nothing with the library but the network.
    """
    flat, unravel = ravel_pytree(params)
    return (flat, unravel, *_dense_jit(kind, params, x, y, f))


def _vectors(flat, unravel, seed, k=3):
    v = jax.random.normal(jax.random.key(seed), (k, flat.size), flat.dtype)
    return v, [unravel(row) for row in v]


def _flat(tree):
    return ravel_pytree(tree)[0]


@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
def test_products_match_dense_matrices(kind):
    params, x, y = _problem(kind)
    flat, unravel, hess, ggn, fisher = _dense(kind, params, x, y)
    loss = cv.supervised_loss(F, kind)
    vs, trees = _vectors(flat, unravel, seed=1)
    for v, tree in zip(vs, trees, strict=True):
        assert_close(_flat(cv.hvp(loss, params, (x, y), tree)), hess @ v, RTOL, what="hvp")
        assert_close(_flat(cv.ggn_vp(F, kind, params, x, y, tree)), ggn @ v, RTOL, what="ggn")
        got = _flat(cv.empirical_fisher_vp(F, kind, params, x, y, tree))
        assert_close(got, fisher @ v, RTOL, what="fisher")
    # The three matrices differ on a nonlinear network: the checks above tell them apart.
    assert np.max(np.abs(hess - ggn)) > 1e3 * RTOL * np.max(np.abs(hess))
    assert np.max(np.abs(fisher - ggn)) > 1e3 * RTOL * np.max(np.abs(ggn))


@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
def test_ggn_is_the_hessian_of_a_linear_model(kind):
    # f linear in θ: the Hessian's second-derivative-of-f term vanishes, so H = G exactly; this
    # pins the 1/B scaling and the output-space Hessian of each loss.
    params, x, y = _problem(kind, sizes=[3, 4])
    flat, unravel, hess, ggn, _ = _dense(kind, params, x, y)
    assert_close(ggn, hess, RTOL, what="dense G vs H")
    vs, trees = _vectors(flat, unravel, seed=2)
    for v, tree in zip(vs, trees, strict=True):
        assert_close(_flat(cv.ggn_vp(F, kind, params, x, y, tree)), hess @ v, RTOL)


def test_cross_entropy_soft_targets_match_integer_labels():
    params, x, labels = _problem("cross_entropy")
    onehot = jax.nn.one_hot(labels, SIZES[-1], dtype=F64)
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    for fn in (cv.ggn_vp, cv.empirical_fisher_vp):
        assert_close(
            fn(F, "cross_entropy", params, x, onehot, v),
            fn(F, "cross_entropy", params, x, labels, v),
            RTOL,
        )
    loss = cv.supervised_loss(F, "cross_entropy")
    assert_close(loss(params, (x, onehot)), loss(params, (x, labels)), RTOL)


def test_supervised_loss_values_and_hashing():
    for kind in ("mse", "cross_entropy"):
        params, x, y = _problem(kind)
        z = jax.vmap(F, (None, 0))(params, x)
        want = np.mean([_per_example_loss(kind, z[b], y[b]) for b in range(x.shape[0])])
        assert_close(cv.supervised_loss(F, kind)(params, (x, y)), want, RTOL, what=kind)
    # Equal (f, kind) give equal, equally hashed losses: jitted entries reuse their compilation.
    assert cv.supervised_loss(F, "mse") == cv.supervised_loss(F, "mse")
    assert hash(cv.supervised_loss(F, "mse")) == hash(cv.supervised_loss(F, "mse"))
    assert cv.supervised_loss(F, "mse") != cv.supervised_loss(F, "cross_entropy")


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_exact_diagonal_and_trace(chunk_size):
    params, x, y = _problem("cross_entropy")
    _, _, hess, _, _ = _dense("cross_entropy", params, x, y)
    loss = cv.supervised_loss(F, "cross_entropy")
    diag = cv.hessian_diag(loss, params, (x, y), method="exact", chunk_size=chunk_size)
    assert_close(_flat(diag.diag), np.diag(hess), RTOL, scale=float(np.max(np.abs(hess))))
    assert np.all(_flat(diag.stderr) == 0)
    tr = cv.hessian_trace(loss, params, (x, y), method="exact", chunk_size=chunk_size)
    assert_close(tr.estimate, np.trace(hess), RTOL, scale=float(np.max(np.abs(hess))))


def test_hutchinson_diagonal_within_four_standard_errors():
    params, x, y = _problem("mse")
    _, _, hess, _, _ = _dense("mse", params, x, y)
    loss = cv.supervised_loss(F, "mse")
    key = jax.random.key(3)
    est = cv.hessian_diag(loss, params, (x, y), key, method="hutchinson", num_samples=200)
    mean, stderr = _flat(est.diag), _flat(est.stderr)
    assert np.all(stderr > 0)
    assert np.all(np.abs(mean - np.diag(hess)) <= 4 * stderr)
    # Chunking changes memory only: Chan's merge gives the same mean and error.
    chunked = cv.hessian_diag(
        loss, params, (x, y), key, method="hutchinson", num_samples=200, chunk_size=30
    )
    assert_close(_flat(chunked.diag), mean, RTOL)
    assert_close(_flat(chunked.stderr), stderr, RTOL)


def test_hutchinson_standard_error_is_the_sample_standard_error():
    # With the same key the estimator draws z_s = rademacher(split(key, S)[s]); rebuild the
    # samples and check mean and standard error against numpy.
    params, x, y = _problem("mse")
    flat, _, hess, _, _ = _dense("mse", params, x, y)
    loss = cv.supervised_loss(F, "mse")
    key, n = jax.random.key(4), 50
    z = jax.vmap(lambda k: jax.random.rademacher(k, flat.shape, F64))(jax.random.split(key, n))
    samples = np.einsum("sp,pq,sq->s", z, np.asarray(hess), z)
    est = cv.hessian_trace(loss, params, (x, y), key, num_samples=n, chunk_size=7)
    assert_close(est.estimate, samples.mean(), RTOL)
    # Both sides hold the same samples up to errors e_s with max|e_s| <= RTOL max|s| (exact
    # routes). A standard deviation moves by at most the spread of the errors,
    # |sd(s + e) - sd(s)| <= sd(e) <= max|e| sqrt(n / (n - 1)), so relative to sd(s) the bound is
    # RTOL max|s| / sd(s) (times that root); Chan's merge adds only rounding on top.
    sd = samples.std(ddof=1)
    rtol = RTOL * float(np.max(np.abs(samples))) / sd * math.sqrt(n / (n - 1))
    assert_close(est.stderr, sd / math.sqrt(n), rtol)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_estimators_within_four_standard_errors(method):
    params, x, y = _problem("cross_entropy")
    _, _, hess, _, _ = _dense("cross_entropy", params, x, y)
    loss = cv.supervised_loss(F, "cross_entropy")
    for seed in range(3):
        est = cv.hessian_trace(
            loss, params, (x, y), jax.random.key(seed), method=method, num_samples=24
        )
        assert est.stderr > 0
        assert abs(est.estimate - np.trace(hess)) <= 4 * est.stderr, (seed, est)


def _quadratic_form(params, a):
    # Hessian a (symmetric) over the raveled parameters.
    w = ravel_pytree(params)[0]
    return 0.5 * w @ a @ w


def test_hutchpp_reduces_the_standard_error():
    # Eigenvalues 1/(i+1)² in a random basis: the top ones dominate Hutchinson's variance, and
    # Hutch++ takes their trace exactly, so its error falls far below Hutchinson's at equal cost.
    n = 60
    u, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(5), (n, n), F64)))
    a = jnp.asarray(u @ np.diag(1.0 / np.arange(1, n + 1) ** 2) @ u.T)
    params = {"w": jnp.ones(n, F64)}
    key = jax.random.key(6)
    plain = cv.hessian_trace(_quadratic_form, params, a, key, method="hutchinson", num_samples=60)
    pp = cv.hessian_trace(_quadratic_form, params, a, key, method="hutch++", num_samples=60)
    for est in (plain, pp):
        assert abs(est.estimate - np.trace(a)) <= 4 * est.stderr, est
    assert pp.stderr < 0.1 * plain.stderr, (pp, plain)


def test_hutchpp_is_exact_once_the_sketch_spans_the_space():
    # k = ⌊S/3⌋ >= P sketch products give Q spanning all of R^P: the sketched trace is the whole
    # trace and the deflated residual vanishes, whatever the key (chunked products too).
    params, x, y = _problem("mse")
    flat, _, hess, _, _ = _dense("mse", params, x, y)
    loss = cv.supervised_loss(F, "mse")
    for seed in range(2):
        est = cv.hessian_trace(
            loss,
            params,
            (x, y),
            jax.random.key(seed),
            method="hutch++",
            num_samples=3 * flat.size + 2,
            chunk_size=7,
        )
        assert_close(est.estimate, np.trace(hess), RTOL, scale=np.max(np.abs(hess)) * flat.size)
        assert est.stderr <= RTOL * np.max(np.abs(hess)) * flat.size, est


def test_lanczos_top_k_matches_eigh():
    params, x, y = _problem("mse")
    _, _, hess, _, _ = _dense("mse", params, x, y)
    lam, vecs = np.linalg.eigh(np.asarray(hess))
    lam, vecs = lam[::-1], vecs[:, ::-1]
    scale = float(np.max(np.abs(lam)))
    assert np.min(np.diff(-lam[:4])) > 1e-3 * scale  # top eigenvalues are simple
    loss = cv.supervised_loss(F, "mse")
    k = 3
    # num_iters = P: the Krylov space is everything, so Lanczos is exact to rounding.
    full = cv.hessian_eigs(loss, params, (x, y), jax.random.key(6), k=k, num_iters=100)
    assert_close(full.eigenvalues, lam[:k], RTOL, scale=scale)
    assert np.all(full.residuals <= RTOL * scale)
    got = jax.vmap(lambda t: ravel_pytree(t)[0])(full.eigenvectors)  # (k, P)
    # Davis-Kahan: a unit vector with residual r about λ_i is within an angle r / gap_i of the
    # eigenvector (gap_i: distance from λ_i to the rest of the spectrum). Both eigh's and
    # Lanczos's vectors are, so |overlap| = cos(θ_1 + θ_2) >= 1 - (θ_1 + θ_2)² / 2; the P-term
    # dot product of two unit vectors adds at most P ε of rounding, doubled for the vectors'
    # own norms.
    p, eps = lam.size, float(np.finfo(np.float64).eps)
    gaps = np.array([np.min(np.abs(np.delete(lam, i) - lam[i])) for i in range(k)])
    res_eigh = np.linalg.norm(np.asarray(hess) @ vecs[:, :k] - vecs[:, :k] * lam[:k], axis=0)
    angles = (np.asarray(full.residuals) + res_eigh) / gaps
    overlap = np.abs(np.sum(got * vecs[:, :k].T, axis=1))
    assert np.all(np.abs(overlap - 1) <= 0.5 * angles**2 + 2 * p * eps), (overlap, angles)
    # Fewer iterations than parameters. Kaniel-Paige-Saad: after m steps from v0 the top Ritz
    # value satisfies 0 <= λ_1 - θ_1 <= (λ_1 - λ_P) (tan φ_0 / T_{m-1}(1 + 2γ))², φ_0 the angle
    # between v0 and the top eigenvector, γ = (λ_1 - λ_2) / (λ_2 - λ_P), T the Chebyshev
    # polynomial. The start vector is rebuilt from the key as hessian_eigs draws it.
    m = 20
    part = cv.hessian_eigs(loss, params, (x, y), jax.random.key(6), k=k, num_iters=m)
    v0 = np.asarray(jax.random.normal(jax.random.split(jax.random.key(6))[0], (p,), F64))
    cos0 = abs(v0 @ vecs[:, 0]) / np.linalg.norm(v0)
    gamma = (lam[0] - lam[1]) / (lam[1] - lam[-1])
    spread = lam[0] - lam[-1]
    kps = spread * (math.sqrt(1 - cos0**2) / cos0 / math.cosh((m - 1) * math.acosh(1 + 2 * gamma)))
    kps = kps**2
    assert kps < 1e-6 * scale  # the bound itself says 20 steps converge here
    gap = lam[0] - float(part.eigenvalues[0])
    assert -RTOL * scale <= gap <= kps + RTOL * scale, (gap, kps)
    # A unit vector with Rayleigh quotient θ has ‖Hu - θu‖² <= (λ_1 - θ)(θ - λ_P) (expand u in
    # the eigenbasis), so the residual is at most sqrt(kps · spread).
    assert part.residuals[0] <= math.sqrt(kps * spread) + RTOL * scale
    assert abs(part.eigenvalues[0] - lam[0]) <= part.residuals[0] + RTOL * scale
    # Dense route, and sharpness as the top eigenvalue.
    dense = cv.hessian_eigs(loss, params, (x, y), k=k, method="dense")
    assert_close(dense.eigenvalues, lam[:k], RTOL, scale=scale)
    assert np.all(dense.residuals <= RTOL * scale)
    top = cv.sharpness(loss, params, (x, y), jax.random.key(7), num_iters=32)
    assert_close(top, lam[0], RTOL, scale=scale)


def _quadratic(params, batch):
    # Hessian diag(batch) over the raveled parameters: repeated and zero eigenvalues.
    w = ravel_pytree(params)[0]
    return 0.5 * jnp.sum(batch * w * w)


def test_lanczos_survives_invariant_subspaces():
    # diag(d) has four distinct eigenvalues among seven, so a generic start vector's Krylov
    # space is invariant after four steps (dimension 4): plain Lanczos would divide by
    # beta_3 = 0. The restart continues from a direction orthogonal to it, whose own Krylov
    # space holds the second copies of 3, 1 and 0 (dimension 3): 4 + 3 = 7 steps find all seven.
    params = {"a": jnp.ones(4, F64), "b": jnp.ones(3, F64)}
    d = jnp.array([3.0, 3.0, 1.0, 1.0, 0.0, 0.0, -2.0], F64)
    v0 = jax.random.normal(jax.random.key(7), (7,), F64)
    _, _, beta = ops.lanczos(lambda w: d * w, v0, jax.random.key(8), 7)
    assert beta[3] == 0, beta  # the breakdown, and the restart, happen where the count says
    assert np.all(np.delete(np.asarray(beta), 3) > 1e-3), beta  # and nowhere else
    res = cv.hessian_eigs(_quadratic, params, d, jax.random.key(8), k=7, num_iters=7)
    assert np.all(np.isfinite(res.eigenvalues))
    assert_close(res.eigenvalues, np.sort(d)[::-1], RTOL, scale=3.0)
    assert np.all(res.residuals <= RTOL * 3)
    # A zero Hessian makes every Krylov step vanish exactly (0/0 without the restart).
    zero = cv.hessian_eigs(_quadratic, params, jnp.zeros(7, F64), jax.random.key(8), k=2)
    assert np.all(zero.eigenvalues == 0)
    assert np.all(np.isfinite(ravel_pytree(zero.eigenvectors)[0]))


def test_spectral_density():
    params, x, y = _problem("mse")
    _, _, hess, _, _ = _dense("mse", params, x, y)
    lam = np.linalg.eigvalsh(np.asarray(hess))
    loss = cv.supervised_loss(F, "mse")
    lo, hi = lam[0] - 1, lam[-1] + 1
    grid = jnp.linspace(lo, hi, 2001, dtype=F64)
    sd = cv.spectral_density(
        loss, params, (x, y), jax.random.key(9), grid, sigma=0.05, num_probes=16, num_iters=32
    )
    assert_close(jnp.sum(sd.weights, axis=1), np.ones(16), RTOL)
    # Full Lanczos (num_iters = P) with full reorthogonalisation: T = Q H Qᵀ with Q orthogonal
    # to rounding, so every node, whatever its weight, is an eigenvalue to RTOL of the scale.
    nodes = np.asarray(sd.nodes)
    assert np.max(np.min(np.abs(nodes[..., None] - lam), axis=-1)) <= RTOL * np.max(np.abs(lam))
    # The density's Riemann sum: nodes lie in [λ_min, λ_max], 1 = 20σ inside the grid's ends,
    # so the Gaussian tails outside carry erfc(20/√2) ~ 1e-89; a sum of a Gaussian at spacing
    # h misses its integral by about 2 exp(-2π² σ²/h²) (Poisson summation; σ/h ≈ 16 here,
    # e^-5000). What is left is the weights' sum (RTOL) and the rounding of a G-term sum (G ε).
    h = float(grid[1] - grid[0])
    aliasing = 2 * math.exp(-2 * math.pi**2 * (0.05 / h) ** 2)
    tails = math.erfc(1 / (0.05 * math.sqrt(2)))
    mass = float(jnp.sum(sd.density) * h)
    eps = float(np.finfo(np.float64).eps)
    assert abs(mass - 1) <= aliasing + tails + RTOL + grid.size * eps, mass
    # Per probe, Σ τ θ = zᵀHz / zᵀz: Hutchinson for tr(H)/P, so the mean is within 4 errors.
    moments = np.sum(np.asarray(sd.weights) * np.asarray(sd.nodes), axis=1)
    stderr = moments.std(ddof=1) / math.sqrt(moments.size)
    assert abs(moments.mean() - np.trace(hess) / lam.size) <= 4 * stderr


@functools.partial(jax.jit, static_argnames=("f",))
def _ntk_reference(f, params, x1, x2):
    flat, unravel = ravel_pytree(params)

    def jac(x):  # (N, n_out, P)
        return jax.jacobian(lambda w: jax.vmap(lambda xb: f(unravel(w), xb))(x))(flat)

    return jnp.einsum("aip,bjp->abij", jac(x1), jac(x2))


def test_ntk_routes_agree_with_dense_jacobians():
    sizes = [3, 6, 5, 3]
    params, x1, _ = _problem("mse", sizes=sizes, batch=4)
    x2 = jax.random.normal(jax.random.key(12), (5, 3), F64)
    want = _ntk_reference(F, params, x1, x2)
    assert want.shape == (4, 5, 3, 3)
    routes = {
        "jacobian": cv.ntk(F, params, x1, x2, method="jacobian"),
        "ntvp": cv.ntk(F, params, x1, x2, method="ntvp"),
        "ntvp chunked": cv.ntk(F, params, x1, x2, method="ntvp", chunk_size=4),
        "mlp": cv.mlp_ntk(params, x1, x2, "tanh"),
    }
    # Chunks of x1's Jacobians: 2 divides N1 = 4; 3 does not (the last chunk is moved back).
    for chunk_size in (1, 2, 3):
        got = cv.ntk(F, params, x1, x2, method="jacobian", chunk_size=chunk_size)
        assert_close(got, routes["jacobian"], RTOL, what=f"jacobian chunk {chunk_size}")
        routes[f"jacobian chunk {chunk_size}"] = got
    for name, got in routes.items():
        assert_close(got, want, RTOL, what=name)
    # x2 = None is x1, chunked too.
    same = cv.ntk(F, params, x1, method="jacobian", chunk_size=3)
    assert_close(same, _ntk_reference(F, params, x1, x1), RTOL, what="jacobian, x2 = x1")
    # The off-diagonal output blocks are non-zero: a swapped (i, j) would be caught.
    assert np.max(np.abs(want[:, :, 0, 1] - want[:, :, 1, 0])) > 1e-3 * np.max(np.abs(want))
    v = jax.random.normal(jax.random.key(13), (5, 3), F64)
    assert_close(cv.ntk_vp(F, params, x1, x2, v), jnp.einsum("abij,bj->ai", want, v), RTOL)


def test_mlp_ntk_without_hidden_layers():
    # One layer: Θ[a, b, i, j] = δ_ij (x_a · x_b + 1); no hidden adjoint enters.
    params, x1, _ = _problem("mse", sizes=[3, 2], batch=4)
    x2 = jax.random.normal(jax.random.key(14), (5, 3), F64)
    want = _ntk_reference(F, params, x1, x2)
    assert_close(cv.mlp_ntk(params, x1, x2, "tanh"), want, RTOL)
    gram = np.asarray(x1) @ np.asarray(x2).T + 1
    assert_close(want, np.einsum("ab,ij->abij", gram, np.eye(2)), RTOL)


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus"])
def test_ntk_is_symmetric_psd(activation):
    f = functools.partial(jj.mlp_apply, activation=activation)
    params, x, _ = _problem("mse", sizes=[2, 7, 7, 2], batch=6)
    theta = cv.mlp_ntk(params, x, None, activation)
    assert_close(theta, cv.ntk(f, params, x, method="ntvp"), RTOL)
    mat = np.asarray(theta.transpose(0, 2, 1, 3).reshape(12, 12))
    assert_close(mat, mat.T, RTOL)
    assert np.min(np.linalg.eigvalsh(mat)) >= -RTOL * np.max(np.abs(mat))


def _compiled_bytes(compiled) -> int:
    """Bytes a compiled program holds beyond its arguments: XLA's temporaries and outputs."""
    stats = compiled.memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes


# (sizes, N1, N2): layers much wider than the batch, where the P terms dominate; and a
# deeper, narrower one where the activation terms and XLA's overlap of buffers matter more.
# The last two are kernel-dominated (K = N1 N2 n_out² well above P): there XLA holds one
# kernel-sized term per parameter leaf (jacobian) or per layer (mlp) at once.
MEMORY_CASES = [
    ([10, 200, 200, 3], 5, 8),
    ([4, 64, 64, 64, 2], 6, 4),
    ([4, 16, 16, 16, 2], 400, 400),
    ([5, 16, 3], 150, 100),
]


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="ntk_memory counts XLA's CPU buffer layout"
)
@pytest.mark.parametrize(("sizes", "n1", "n2"), MEMORY_CASES)
def test_ntk_memory_bounds_the_compiled_peak(sizes, n1, n2):
    # ntk_memory counts every buffer each route may hold at once, so XLA's compiled peak
    # (temporaries + output, from memory_analysis) is at most the estimate. XLA also overlaps
    # some of them (it contracts a leaf's Jacobian or consumes a layer's cotangent before the
    # next exists): on these nets the estimate is 1.0-2.4 times the peak, so it must stay within
    # a factor 3 of it. The old "ntvp" formula, c (P + N1 n_out) + K, fails the first check (it
    # was half the peak: it left out the second copy of the c parameter cotangents).
    dtype = jnp.float32  # the reviewer's setting; bytes scale with the itemsize
    params = jj.mlp_init(jax.random.key(0), sizes, dtype=dtype)
    x1 = jax.random.normal(jax.random.key(1), (n1, sizes[0]), dtype)
    x2 = jax.random.normal(jax.random.key(2), (n2, sizes[0]), dtype)
    n_params = ravel_pytree(params)[0].size
    mem = functools.partial(
        cv.ntk_memory, n1=n1, n2=n2, n_out=sizes[-1], n_params=n_params, sizes=sizes, itemsize=4
    )
    cases = [("jacobian", None), ("jacobian", 3), ("ntvp", None), ("ntvp", 1), ("ntvp", 7)]
    for method, chunk_size in cases:
        compiled = cv.ntk.lower(F, params, x1, x2, method=method, chunk_size=chunk_size).compile()
        peak, est = _compiled_bytes(compiled), mem(method, chunk_size=chunk_size)
        assert peak <= est <= 3 * peak, (method, chunk_size, peak, est)
    peak = _compiled_bytes(cv.mlp_ntk.lower(params, x1, x2, "tanh").compile())
    assert peak <= mem("mlp") <= 3 * peak, (peak, mem("mlp"))
    # Chunking bounds memory: one product (or one example) at a time needs much less.
    assert mem("ntvp", chunk_size=1) < mem("ntvp") / 4
    assert mem("jacobian", chunk_size=1) < mem("jacobian")


def test_ntk_memory_orders_the_routes():
    # Wide network, few examples: the closed form needs no P term, NTVP in chunks little.
    wide = {"n1": 8, "n2": 8, "n_out": 10, "n_params": 10**7}
    sizes = [784, 3000, 3000, 10]
    small = cv.ntk_memory("mlp", sizes=sizes, **wide)
    assert small < cv.ntk_memory("ntvp", chunk_size=1, **wide) < cv.ntk_memory("jacobian", **wide)
    # Without the widths the autodiff routes count only their P and kernel terms: Θ, a copy,
    # and (jacobian) one block per leaf, one leaf unless told (K_c = K unchunked).
    k = 8 * 8 * 10 * 10
    assert cv.ntk_memory("jacobian", **wide) == 8 * (16 * 10 * 10**7 + 3 * k)
    assert cv.ntk_memory("jacobian", n_leaves=4, **wide) == 8 * (16 * 10 * 10**7 + 6 * k)
    assert cv.ntk_memory("jacobian", chunk_size=2, n_leaves=4, **wide) == 8 * (
        10 * 10 * 10**7 + 4 * (2 * 8 * 10 * 10) + 2 * k
    )
    assert cv.ntk_memory("ntvp", chunk_size=1, **wide) == 8 * (3 * 10**7 + 16 * 10 + 2 * k)
    with pytest.raises(ValueError, match="sizes"):
        cv.ntk_memory("mlp", **wide)
    with pytest.raises(ValueError, match="method"):
        cv.ntk_memory("dense", **wide)


def test_float32_stays_float32():
    params, x, y = _problem("mse", dtype=jnp.float32)
    loss = cv.supervised_loss(F, "mse")
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    for out in (cv.hvp(loss, params, (x, y), v), cv.ggn_vp(F, "mse", params, x, y, v)):
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(out)} == {jnp.dtype(jnp.float32)}
    res = cv.hessian_eigs(loss, params, (x, y), jax.random.key(0), k=2, num_iters=10)
    assert res.eigenvalues.dtype == jnp.float32
    assert cv.ntk(F, params, x, method="ntvp").dtype == jnp.float32


def test_errors_name_the_problem():
    params, x, y = _problem("mse")
    loss = cv.supervised_loss(F, "mse")
    with pytest.raises(ValueError, match="loss_kind"):
        cv.supervised_loss(F, "hinge")
    with pytest.raises(ValueError, match="PRNG key"):
        cv.hessian_trace(loss, params, (x, y), method="hutchinson")
    with pytest.raises(ValueError, match="method"):
        cv.hessian_diag(loss, params, (x, y), method="bogus")
    with pytest.raises(ValueError, match="num_iters"):
        cv.hessian_eigs(loss, params, (x, y), jax.random.key(0), k=4, num_iters=2)
    with pytest.raises(ValueError, match="targets"):
        cv.ggn_vp(F, "mse", params, x, y[:, :1], params)
    with pytest.raises(ValueError, match="vector"):
        cv.ggn_vp(lambda p, xb: jnp.sum(F(p, xb)), "mse", params, x, y, params)
    with pytest.raises(ValueError, match="batched"):
        cv.mlp_ntk(params, x[0], None, "tanh")


def test_ntk_jacobian_route_rejects_non_vector_outputs():
    params = {"w": jnp.ones((6, 2), F64)}
    x = jnp.ones((3, 2, 3), F64)
    scalar_net = lambda p, xb: jnp.sum(p["w"] @ xb)  # noqa: E731
    for method in ("jacobian", "ntvp"):
        with pytest.raises(ValueError, match=r"must return a vector \(n_out,\)"):
            cv.ntk(scalar_net, params, x, method=method)


class _Traces:
    """Counts traces: hashed by identity, so it can be a partial's keyword (static)."""

    def __init__(self):
        self.n = 0


def _counted_net(scale, params, x, *, traces):
    traces.n += 1  # a Python side effect: runs once per trace, not per call
    return scale * F(params, x)


def test_entry_points_compile_once_for_partials_binding_arrays():
    params, x, y = _problem("mse")
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    scales = [jnp.asarray(s, F64) for s in (1.0, 2.0, 3.0, 4.0)]
    calls = {
        "ggn_vp": lambda f: cv.ggn_vp(f, "mse", params, x, y, v),
        "ntk": lambda f: cv.ntk(f, params, x),
        "ntk_ntvp": lambda f: cv.ntk(f, params, x, method="ntvp", chunk_size=3),
        "hvp": lambda f: cv.hvp(cv.supervised_loss(f, "mse"), params, (x, y), v),
        "trace": lambda f: cv.hessian_trace(
            cv.supervised_loss(f, "mse"), params, (x, y), jax.random.key(0), num_samples=4
        ),
    }
    for name, call in calls.items():
        traces = _Traces()
        results = []
        for i, scale in enumerate(scales):
            results.append(call(functools.partial(_counted_net, scale, traces=traces)))
            if i == 0:
                first = traces.n
        assert first > 0 and traces.n == first, (name, first, traces.n)
        # The bound arrays are arguments, not constants of the first compilation: a network
        # scaled by s has s times the outputs, s² times the NTK and the GGN.
        power = {"hvp": None, "trace": None}.get(name, 2)
        if power is not None:
            for scale, res in zip(scales, results, strict=True):
                assert_close(_flat(res), float(scale) ** power * _flat(results[0]), RTOL, what=name)


def test_hvp_compiles_once_for_partial_losses():
    params, x, y = _problem("mse")
    counter = []

    def loss(scale, p, batch):
        counter.append(None)
        return scale * cv.supervised_loss(F, "mse")(p, batch)

    v = jax.tree_util.tree_map(jnp.ones_like, params)
    out = [cv.hvp(functools.partial(loss, jnp.asarray(s, F64)), params, (x, y), v) for s in (1, 3)]
    first = len(counter)
    for s in (5.0, 7.0):
        cv.hvp(functools.partial(loss, jnp.asarray(s, F64)), params, (x, y), v)
    assert first >= 1 and len(counter) == first
    assert_close(_flat(out[1]), 3 * _flat(out[0]), RTOL)


def test_cross_entropy_out_of_range_labels_give_nan():
    params, x, y = _problem("cross_entropy")
    loss = cv.supervised_loss(F, "cross_entropy")
    assert np.isfinite(loss(params, (x, y)))
    for bad in (-1, SIZES[-1]):
        y_bad = y.at[2].set(bad)
        assert np.isnan(jax.jit(loss)(params, (x, y_bad))), bad
        losses = ops.example_losses("cross_entropy", jax.vmap(F, (None, 0))(params, x), y_bad)
        z = jax.vmap(F, (None, 0))(params, x)
        want = [_per_example_loss("cross_entropy", z[b], y[b]) for b in range(x.shape[0])]
        assert np.isnan(losses[2])
        keep = np.arange(x.shape[0]) != 2
        assert_close(np.asarray(losses)[keep], np.asarray(want)[keep], RTOL)


def test_integer_targets():
    params, x, _ = _problem("mse")
    n_out = SIZES[-1]
    y_int = jax.random.randint(jax.random.key(3), (x.shape[0], n_out), -3, 4)
    z = jax.vmap(F, (None, 0))(params, x)
    want = np.mean(0.5 * np.sum((np.asarray(z) - np.asarray(y_int, np.float64)) ** 2, axis=1))
    assert_close(cv.supervised_loss(F, "mse")(params, (x, y_int)), want, RTOL)
    # (B,) integers are not one-hot encoded for mse: they must have the outputs' shape.
    with pytest.raises(ValueError, match="targets must have the outputs' shape"):
        cv.supervised_loss(F, "mse")(params, (x, y_int[:, 0]))
    with pytest.raises(ValueError, match=r"shape \(B,\).*got \(7, 2\)"):
        cv.supervised_loss(F, "cross_entropy")(params, (x, y_int))


def test_spectral_density_needs_a_positive_sigma():
    params, x, y = _problem("mse")
    loss = cv.supervised_loss(F, "mse")
    grid = jnp.linspace(-1.0, 1.0, 5, dtype=F64)
    for sigma in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=f"sigma must be positive, got {sigma}"):
            cv.spectral_density(loss, params, (x, y), jax.random.key(0), grid, sigma=sigma)


def test_numpy_integers_are_accepted_for_integer_options():
    params, x, y = _problem("mse")
    loss = cv.supervised_loss(F, "mse")
    key = jax.random.key(4)
    grid = jnp.linspace(-1.0, 1.0, 5, dtype=F64)
    pairs = [
        (
            lambda n: cv.hessian_trace(
                loss, params, (x, y), key, num_samples=n(6), chunk_size=n(4)
            ),
            "trace",
        ),
        (lambda n: cv.hessian_diag(loss, params, (x, y), chunk_size=n(5)), "diag"),
        (lambda n: cv.hessian_eigs(loss, params, (x, y), key, k=n(2), num_iters=n(8)), "eigs"),
        (
            lambda n: cv.spectral_density(
                loss, params, (x, y), key, grid, sigma=0.1, num_probes=n(2), num_iters=n(4)
            ),
            "density",
        ),
        (lambda n: cv.ntk(F, params, x, chunk_size=n(3)), "ntk"),
    ]
    for call, what in pairs:
        want = call(int)
        for numpy_int in (np.int64, np.int32):
            assert_close(_flat(call(numpy_int)), _flat(want), RTOL, what=what)
    with pytest.raises(ValueError, match="num_probes must be a positive integer, got True"):
        cv.spectral_density(loss, params, (x, y), key, grid, sigma=0.1, num_probes=True)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        cv.hessian_eigs(loss, params, (x, y), key, k=np.int64(0))
