import jax.numpy as jnp
import numpy as np

from jaxjac._chunks import for_each_chunk, map_chunks


def test_for_each_chunk_moves_the_last_chunk_back():
    # 7 rows in chunks of 3: starts 0, 3 and 4 (moved back from 6), so rows 4 and 5 twice.
    def body(start, visits):
        return visits.at[start + jnp.arange(3)].add(1)

    visits = for_each_chunk(7, 3, body, jnp.zeros(7, jnp.int32))
    np.testing.assert_array_equal(visits, [1, 1, 1, 1, 2, 2, 1])


def test_map_chunks_matches_the_whole_batch():
    xs = jnp.arange(14.0).reshape(7, 2)
    got = map_chunks(lambda b: (b**2, b.sum(axis=1)), xs, 3)
    np.testing.assert_array_equal(got[0], xs**2)
    np.testing.assert_array_equal(got[1], xs.sum(axis=1))


def test_map_chunks_writes_every_row_of_out():
    # Chunks written into a NaN buffer instead of zeros: a row left unwritten would keep a NaN.
    xs = jnp.arange(14.0).reshape(7, 2)
    out = (jnp.full((7, 2), jnp.nan), jnp.full(7, jnp.nan))
    got = map_chunks(lambda b: (b**2, b.sum(axis=1)), xs, 3, out=out)
    np.testing.assert_array_equal(got[0], xs**2)
    np.testing.assert_array_equal(got[1], xs.sum(axis=1))
