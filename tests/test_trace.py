"""Hutchinson and Hutch++ on explicit matrices: unbiased, exact where they must be."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxjac import _trace

F64 = jnp.float64


def _matrix(n=12, seed=0):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return jnp.asarray(q @ np.diag(np.geomspace(100.0, 0.01, n)) @ q.T, F64)


def test_hutchpp_is_exact_once_the_sketch_spans_the_space():
    a = _matrix()
    est, _ = _trace.hutchpp(lambda v: v @ a.T, 12, jax.random.key(0), 3 * 12 + 2, F64)
    np.testing.assert_allclose(est, jnp.trace(a), rtol=1e-12)


def test_hutchpp_estimates_are_unbiased_and_beat_hutchinson_on_a_decaying_spectrum():
    a = _matrix()
    keys = jax.random.split(jax.random.key(1), 400)
    pp = jax.vmap(lambda k: _trace.hutchpp(lambda v: v @ a.T, 12, k, 9, F64)[0])(keys)
    plain = jax.vmap(
        lambda k: jnp.mean(
            jnp.sum((v := _trace.probes(k, (9, 12), F64, "rademacher")) * (v @ a.T), 1)
        )
    )(keys)
    truth = float(jnp.trace(a))
    assert abs(float(jnp.mean(pp)) - truth) < 4 * float(jnp.std(pp)) / 20  # unbiased
    assert float(jnp.std(pp)) < 0.5 * float(jnp.std(plain))


def test_chunked_mean_stderr_does_not_depend_on_the_chunk_size():
    keys = jax.random.split(jax.random.key(2), 10)

    def sample(k):
        return jax.random.normal(k, (3,), F64)

    whole = _trace.chunked_mean_stderr(sample, keys, None)
    samples = jax.vmap(sample)(keys)
    np.testing.assert_allclose(whole[0], samples.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(whole[1], samples.std(axis=0, ddof=1) / np.sqrt(10), rtol=1e-12)
    for chunk in (1, 3, 4, 10):
        got = _trace.chunked_mean_stderr(sample, keys, chunk)
        np.testing.assert_allclose(got[0], whole[0], rtol=1e-13)
        np.testing.assert_allclose(got[1], whole[1], rtol=1e-12)
