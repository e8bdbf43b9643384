"""MLP initialisation, evaluation and validation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from tests.helpers import assert_close, exact_rtol


def test_init_layout_dtype_and_scale():
    params = jj.mlp_init(jax.random.key(0), [400, 300, 2], dtype=jnp.float64)
    assert [(p["W"].shape, p["b"].shape) for p in params] == [
        ((300, 400), (300,)),
        ((2, 300), (2,)),
    ]
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
    # LeCun normal: std 1/sqrt(fan_in). 120k samples give the sample std to ±0.4 % (3 sigma).
    std = float(jnp.std(params[0]["W"])) * np.sqrt(400)
    assert abs(std - 1.0) < 3 * np.sqrt(1 / (2 * 120_000)) * 3
    assert float(jnp.max(jnp.abs(params[0]["b"]))) == 0.0


def test_init_is_a_pure_function_of_the_key():
    a = jj.mlp_init(jax.random.key(7), [3, 4, 2])
    b = jj.mlp_init(jax.random.key(7), [3, 4, 2])
    c = jj.mlp_init(jax.random.key(8), [3, 4, 2])
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, a, b))
    assert not jnp.array_equal(a[0]["W"], c[0]["W"])
    assert a[0]["W"].dtype == jnp.float32


@pytest.mark.parametrize("sizes", [[3], [], [3, 0, 2]])
def test_init_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes must be"):
        jj.mlp_init(jax.random.key(0), sizes)


@pytest.mark.parametrize("key", [0, np.int64(3), 1.5])
def test_init_rejects_a_seed_in_place_of_a_key(key):
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key such as jax.random.key\(0\)"):
        jj.mlp_init(key, [2, 2])


def test_init_accepts_legacy_uint32_keys():
    params = jj.mlp_init(jax.random.PRNGKey(0), [3, 2])
    assert params[0]["W"].shape == (2, 3)


def test_init_rejects_integer_dtype():
    with pytest.raises(ValueError, match="floating"):
        jj.mlp_init(jax.random.key(0), [2, 2], dtype=jnp.int32)


def test_apply_matches_the_formula_and_batches():
    params = jj.mlp_init(jax.random.key(1), [3, 5, 4, 2], dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(2), (6, 3), jnp.float64)
    w1, b1, w2, b2, w3, b3 = (params[i][k] for i in range(3) for k in ("W", "b"))
    expected = np.stack(
        [w3 @ np.tanh(w2 @ np.tanh(w1 @ xi + b1) + b2) + b3 for xi in np.asarray(x)]
    )
    assert_close(jj.mlp_apply(params, x, "tansig"), expected, exact_rtol(jnp.float64))
    assert jj.mlp_apply(params, x[0]).shape == (2,)
    assert_close(jj.mlp_apply(params, x[0]), expected[0], exact_rtol(jnp.float64))


def test_input_width_mismatch_names_both_sizes():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2])
    with pytest.raises(ValueError, match=r"\(3,\) or \(batch, 3\).*got shape \(5,\)"):
        jj.mlp_apply(params, jnp.ones(5))
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 3\)"):
        jj.mlp_apply(params, jnp.ones((2, 2, 3)))


def test_mismatched_layers_are_rejected_with_the_layer_index():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2])
    params[1]["W"] = jnp.ones((2, 5))
    with pytest.raises(ValueError, match="layer 1: W has 5 inputs but layer 0 has 4 outputs"):
        jj.mlp_apply(params, jnp.ones(3))
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2])
    params[0]["b"] = jnp.ones(3)
    with pytest.raises(ValueError, match=r"layer 0: b must have shape \(4,\)"):
        jj.validate_mlp_params(params)
    with pytest.raises(ValueError, match="layer 1: expected a dict with keys 'W' and 'b'"):
        jj.validate_mlp_params([{"W": jnp.ones((2, 2)), "b": jnp.ones(2)}, {"W": jnp.ones((2, 2))}])
    with pytest.raises(ValueError, match="non-empty list"):
        jj.validate_mlp_params([])


def test_sizes():
    assert jj.mlp_sizes(jj.mlp_init(jax.random.key(0), [3, 7, 5, 2])) == [3, 7, 5, 2]


def test_nan_input_propagates_without_raising():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=jnp.float64)
    out = jj.mlp_apply(params, jnp.array([[jnp.nan, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    assert bool(jnp.all(jnp.isnan(out[0]))) and bool(jnp.all(jnp.isfinite(out[1])))


@pytest.mark.parametrize("sizes", [[0, 4, 2], [3, 0, 2], [3, 4, 0]])
def test_zero_sizes_are_refused_by_name(sizes):
    params = [{"W": np.zeros((b, a)), "b": np.zeros(b)} for a, b in itertools.pairwise(sizes)]
    with pytest.raises(ValueError, match=r"layer \d: W has shape \(\d, \d\); every layer needs"):
        jj.validate_mlp_params(params)
