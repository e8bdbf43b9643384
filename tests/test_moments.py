"""Running moments: Chan et al.'s merge against two-pass NumPy, on the host and on devices."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxjac import _moments


def _data(seed=0, n=37):
    rng = np.random.default_rng(seed)
    return 1e6 + rng.standard_normal((n, 3))  # a large offset: E[x²] - E[x]² would cancel


def test_merging_blocks_gives_the_moments_of_the_whole():
    x = _data()
    acc = _moments.empty((3,))
    for block in np.array_split(x, [1, 5, 6, 20]):
        acc = _moments.merge(acc, _moments.of_block(block))
    assert acc.n == x.shape[0]
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-15)
    m2 = np.sum((x - x.mean(axis=0)) ** 2, axis=0)
    np.testing.assert_allclose(acc.m2, m2, rtol=1e-9)
    se = np.std(x, axis=0, ddof=1) / np.sqrt(x.shape[0])
    np.testing.assert_allclose(_moments.std_error(acc), se, rtol=1e-9)


def test_an_empty_side_is_skipped_and_too_few_have_no_error():
    block = _moments.of_block(_data(1, 1))
    assert _moments.merge(_moments.empty((3,)), block) is block
    assert _moments.merge(block, _moments.empty((3,))) is block
    assert np.all(np.isnan(_moments.std_error(block)))


def test_jax_arrays_merge_like_numpy_ones():
    x = _data(2)
    a, b = _moments.of_block(jnp.asarray(x[:10])), _moments.of_block(jnp.asarray(x[10:]))
    a = _moments.Moments(jnp.asarray(a.n, jnp.float64), a.mean, a.m2)
    b = _moments.Moments(jnp.asarray(b.n, jnp.float64), b.mean, b.m2)
    got = jax.jit(_moments.merge)(a, b)
    want = _moments.of_block(x)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-15)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9)


def test_combining_over_a_mapped_axis_matches_the_whole():
    # One device here: the k-way merge with one part, and its weighting of counts, still runs.
    x = _data(3, 12)
    mesh = Mesh(np.array(jax.devices()[:1]), ("d",))

    def local(x):
        m = _moments.of_block(x)
        m = _moments.Moments(jnp.asarray(m.n, jnp.int32), m.mean, m.m2)
        return _moments.combine_over_axis(m, "d")

    got = jax.shard_map(local, mesh=mesh, in_specs=P("d"), out_specs=P())(jnp.asarray(x))
    assert int(got.n) == 12
    np.testing.assert_allclose(got.mean, x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(got.m2, np.sum((x - x.mean(axis=0)) ** 2, axis=0), rtol=1e-9)
