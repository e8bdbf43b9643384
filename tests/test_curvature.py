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
    assert_close(est.stderr, samples.std(ddof=1) / math.sqrt(n), 1e4 * RTOL)


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
    got = jax.vmap(lambda t: ravel_pytree(t)[0])(full.eigenvectors)  # (k, P)
    np.testing.assert_allclose(np.abs(np.sum(got * vecs[:, :k].T, axis=1)), 1, rtol=1e-10)
    assert np.all(full.residuals <= RTOL * scale)
    # Fewer iterations than parameters: the top Ritz value has converged to within its residual.
    part = cv.hessian_eigs(loss, params, (x, y), jax.random.key(6), k=k, num_iters=20)
    assert part.residuals[0] < 1e-6 * scale
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
    # A start vector spans an invariant subspace of dimension 3 (three distinct eigenvalues):
    # plain Lanczos would divide by beta = 0. The restart keeps every eigenvalue genuine.
    params = {"a": jnp.ones(4, F64), "b": jnp.ones(3, F64)}
    d = jnp.array([3.0, 3.0, 1.0, 1.0, 0.0, 0.0, -2.0], F64)
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
    # Full Lanczos: every node carrying weight is an eigenvalue.
    heavy = np.asarray(sd.nodes)[np.asarray(sd.weights) > 1e-8]
    assert np.max(np.min(np.abs(heavy[:, None] - lam[None]), axis=1)) <= 1e3 * RTOL * np.max(
        np.abs(lam)
    )
    mass = float(jnp.sum(sd.density) * (grid[1] - grid[0]))
    assert abs(mass - 1) < 1e-6
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
    for name, got in routes.items():
        assert_close(got, want, RTOL, what=name)
    # The off-diagonal output blocks are non-zero: a swapped (i, j) would be caught.
    assert np.max(np.abs(want[:, :, 0, 1] - want[:, :, 1, 0])) > 1e-3 * np.max(np.abs(want))
    v = jax.random.normal(jax.random.key(13), (5, 3), F64)
    assert_close(cv.ntk_vp(F, params, x1, x2, v), jnp.einsum("abij,bj->ai", want, v), RTOL)


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus"])
def test_ntk_is_symmetric_psd(activation):
    f = functools.partial(jj.mlp_apply, activation=activation)
    params, x, _ = _problem("mse", sizes=[2, 7, 7, 2], batch=6)
    theta = cv.mlp_ntk(params, x, None, activation)
    assert_close(theta, cv.ntk(f, params, x, method="ntvp"), RTOL)
    mat = np.asarray(theta.transpose(0, 2, 1, 3).reshape(12, 12))
    assert_close(mat, mat.T, RTOL)
    assert np.min(np.linalg.eigvalsh(mat)) >= -RTOL * np.max(np.abs(mat))


def test_ntk_memory():
    params, x, _ = _problem("mse", sizes=[3, 6, 2], batch=4)
    n_params = ravel_pytree(params)[0].size
    jac = jj.batch_weight_jacobian(F, params, x)
    got = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(jac)) * 2  # x1 and x2
    got += cv.ntk(F, params, x).nbytes
    mem = functools.partial(cv.ntk_memory, n1=4, n2=4, n_out=2, n_params=n_params)
    assert mem("jacobian") == got
    # Wide network, few examples: the closed form needs no P term, NTVP in chunks little.
    wide = {"n1": 8, "n2": 8, "n_out": 10, "n_params": 10**7}
    sizes = [784, 3000, 3000, 10]
    small = cv.ntk_memory("mlp", sizes=sizes, **wide)
    assert small < cv.ntk_memory("ntvp", chunk_size=1, **wide) < cv.ntk_memory("jacobian", **wide)
    with pytest.raises(ValueError, match="sizes"):
        cv.ntk_memory("mlp", **wide)


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
