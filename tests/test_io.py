"""Reading models and data safely; Flax and Equinox converters."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

import jaxjac as jj
from jaxjac.io import (
    Dataset,
    from_equinox_mlp,
    from_flax_dense_params,
    load_data,
    load_params,
    match_activation,
    save_params,
)
from tests.helpers import assert_close, exact_rtol


@pytest.fixture(scope="module")
def params():
    return jj.mlp_init(jax.random.key(7), [3, 5, 4, 2], dtype=jnp.float64)


def _arrays(params):
    out = {}
    for i, layer in enumerate(params, start=1):
        out[f"W{i}"], out[f"b{i}"] = np.asarray(layer["W"]), np.asarray(layer["b"])
    return out


def _assert_same_params(loaded, params):
    assert len(loaded) == len(params)
    for got, want in zip(loaded, params, strict=True):
        np.testing.assert_array_equal(got["W"], want["W"])
        np.testing.assert_array_equal(got["b"], want["b"])
        assert got["W"].dtype == np.float64


# --- models -----------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path, params):
    save_params(tmp_path / "m.npz", params)
    _assert_same_params(load_params(tmp_path / "m.npz"), params)


def test_mat_file_with_matlab_column_biases(tmp_path, params):
    # As MATLAB writes them: biases are (out, 1) columns.
    arrays = {k: (v.reshape(-1, 1) if k[0] == "b" else v) for k, v in _arrays(params).items()}
    scipy.io.savemat(tmp_path / "net.mat", arrays)
    _assert_same_params(load_params(tmp_path / "net.mat"), params)
    save_params(tmp_path / "again.mat", params)
    _assert_same_params(load_params(tmp_path / "again.mat"), params)


def test_float32_files_load_exactly_as_float64(tmp_path, params):
    np.savez(tmp_path / "m.npz", **{k: v.astype(np.float32) for k, v in _arrays(params).items()})
    loaded = load_params(tmp_path / "m.npz")
    assert loaded[0]["W"].dtype == np.float64
    np.testing.assert_array_equal(loaded[0]["W"], np.asarray(params[0]["W"], np.float32))


def _write_npz(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("b2"), r"expected W1, b1, …, W3, b3 .*missing b2"),
        (lambda a: (a.pop("W2"), a.pop("b2")), "missing W2, b2"),
        (lambda a: a.update(W2=np.ones((4, 6))), r"W2 .*expected 5 columns to match W1"),
        (lambda a: a.update(b1=np.ones(4)), r"b1 .*expected 5 entries to match W1"),
        (lambda a: a.update(W1=np.ones((5, 3, 1))), r"W1 .*expected a matrix \(out, in\)"),
        (lambda a: a.update(b3=np.array([1.0, np.nan])), "b3 .*expected finite numbers"),
        (lambda a: a.update(W1=np.full((5, 3), "x")), "W1 .*expected a real numeric array"),
        (lambda a: a.clear() or a.update(weights=np.ones(3)), r"found \['weights'\]"),
    ],
)
def test_missing_or_inconsistent_layers_are_named(tmp_path, params, edit, message):
    arrays = _arrays(params)
    edit(arrays)
    path = _write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=message):
        load_params(path)


def test_object_arrays_in_a_model_are_refused(tmp_path, params):
    arrays = _arrays(params)
    arrays["W1"] = np.array([{"evil": 1}], dtype=object)
    path = _write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"W1 holds Python objects.*refusing to unpickle"):
        load_params(path)


def test_unreadable_and_missing_model_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"expected an .npz archive"):
        load_params(tmp_path / "junk.npz")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file, just some bytes" * 10)
    with pytest.raises(ValueError, match=r"expected a MATLAB .mat file"):
        load_params(tmp_path / "junk.mat")
    (tmp_path / "m.txt").write_text("W1")
    with pytest.raises(ValueError, match=r"ending in .npz or .mat, found '.txt'"):
        load_params(tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError, match="found nothing at"):
        load_params(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="found a directory"):
        load_params(tmp_path)


# --- data -------------------------------------------------------------------------------------


def test_npy_data_is_memory_mapped(tmp_path):
    xs = np.random.default_rng(0).normal(size=(10, 3))
    np.save(tmp_path / "x.npy", xs)
    data = load_data(tmp_path / "x.npy")
    assert isinstance(data, Dataset)
    assert isinstance(data.values, np.memmap)
    assert data.feature_names is None
    np.testing.assert_array_equal(data.values, xs)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([{"a": 1}, None], dtype=object), "found Python objects"),
        (np.ones(4), r"expected a 2-D array \(N, n_in\), found shape \(4,\)"),
        (np.array([["a", "b"]]), "expected a real numeric array"),
        (np.ones((2, 2), np.complex128), "expected a real numeric array"),
        (np.ones((0, 3)), "at least one data row"),
    ],
)
def test_bad_npy_data_is_refused(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array, allow_pickle=True)  # writing objects is the attack
    with pytest.raises(ValueError, match=message):
        load_data(tmp_path / "x.npy")


def test_csv_with_header_gives_feature_names(tmp_path):
    (tmp_path / "d.csv").write_text("\ufeffspeed, load ,temp\n1,2,3\n\n4.5,-5e-1,nan\n")
    data = load_data(tmp_path / "d.csv")
    assert data.feature_names == ("speed", "load", "temp")
    np.testing.assert_array_equal(data.values[0], [1.0, 2.0, 3.0])
    assert data.values.shape == (2, 3)
    assert np.isnan(data.values[1, 2])  # read as is: the pipeline decides


def test_csv_without_header(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n3,4\n")
    data = load_data(tmp_path / "d.csv")
    assert data.feature_names is None
    np.testing.assert_array_equal(data.values, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3,oops\n", r"data row 2 \(line 3\), column 2 \('b'\): .*found 'oops'"),
        ("1,2\n3,\n", r"data row 2 \(line 2\), column 2: expected a number, found ''"),
        ("1,2\n3,4,5\n", "data row 2 .*has 3 cells: expected 2"),
        ("x,2\n", "row 1 mixes numbers and text"),
        ("a,b\n", "found only a header"),
        ("", "found an empty file"),
    ],
)
def test_bad_csv_cells_are_named(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_data(tmp_path / "d.csv")


def test_unknown_and_missing_data_files(tmp_path):
    (tmp_path / "d.txt").write_text("1,2")
    with pytest.raises(ValueError, match=r"ending in .npy or .csv"):
        load_data(tmp_path / "d.txt")
    with pytest.raises(FileNotFoundError, match="data file: expected an existing file"):
        load_data(tmp_path / "none.csv")


# --- converters: the documented layouts, built by hand ------------------------------------------


def _flax_layout(params, names):
    """Flax nn.Dense stores kernel (in, out) and bias (out,)."""
    return {
        "params": {
            name: {"kernel": np.asarray(layer["W"]).T, "bias": np.asarray(layer["b"])}
            for name, layer in zip(names, params, strict=True)
        }
    }


def test_flax_layout_converts_in_numeric_name_order(params):
    # Stored in an order where string sorting would be wrong ("Dense_10" < "Dense_2").
    big = jj.mlp_init(jax.random.key(1), [2] * 12, dtype=jnp.float64)
    names = [f"Dense_{i}" for i in range(11)]
    variables = _flax_layout(big, names)
    shuffled = {"params": dict(sorted(variables["params"].items()))}
    _assert_same_params(from_flax_dense_params(shuffled), big)
    _assert_same_params(from_flax_dense_params(_flax_layout(params, names[:3])["params"]), params)


def test_flax_layout_without_bias_and_with_a_foreign_layer(params):
    variables = _flax_layout(params, ["Dense_0", "Dense_1", "Dense_2"])
    del variables["params"]["Dense_1"]["bias"]
    converted = from_flax_dense_params(variables)
    np.testing.assert_array_equal(converted[1]["b"], np.zeros(4))
    variables["params"]["LayerNorm_3"] = {"scale": np.ones(2), "bias": np.zeros(2)}
    with pytest.raises(ValueError, match="'LayerNorm_3': expected a dense layer"):
        from_flax_dense_params(variables)
    bad = _flax_layout(params, ["Dense_0", "Dense_1", "Dense_2"])
    bad["params"]["Dense_1"]["kernel"] = np.ones((3, 4))
    with pytest.raises(ValueError, match="W2 in Flax model: expected 5 columns"):
        from_flax_dense_params(bad)


def test_equinox_layout_converts(params):
    layers = tuple(types.SimpleNamespace(weight=layer["W"], bias=layer["b"]) for layer in params)
    mlp = types.SimpleNamespace(
        layers=layers, in_size=3, out_size=2, activation=jnp.tanh, final_activation=lambda x: x
    )
    _assert_same_params(from_equinox_mlp(mlp), params)
    with pytest.raises(ValueError, match="final_activation is the identity"):
        from_equinox_mlp(types.SimpleNamespace(**{**vars(mlp), "final_activation": jnp.tanh}))
    with pytest.raises(ValueError, match="'scalar'"):
        from_equinox_mlp(types.SimpleNamespace(**{**vars(mlp), "in_size": "scalar"}))
    with pytest.raises(ValueError, match=r"expected an equinox.nn.MLP"):
        from_equinox_mlp(object())


def test_match_activation():
    assert match_activation(jnp.tanh) == "tansig"
    assert match_activation(jax.nn.relu) == "relu"
    assert match_activation(jax.nn.sigmoid) == "logsig"
    assert match_activation(jax.nn.gelu) == "gelu_tanh"
    assert match_activation(lambda z: z**3) is None
    assert match_activation(lambda z: "not a function of arrays" + 1) is None


# --- converters against the real libraries (optional extras) ----------------------------------


def test_real_flax_linen_module_matches_mlp_apply():
    import flax.linen as flax_nn

    class Net(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            x = flax_nn.tanh(flax_nn.Dense(6, param_dtype=jnp.float64)(x))
            x = flax_nn.tanh(flax_nn.Dense(4, param_dtype=jnp.float64)(x))
            return flax_nn.Dense(2, param_dtype=jnp.float64)(x)

    xs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
    variables = Net().init(jax.random.key(0), xs[0])
    converted = from_flax_dense_params(variables)
    assert [layer["W"].shape for layer in converted] == [(6, 3), (4, 6), (2, 4)]
    assert_close(
        jj.mlp_apply(converted, xs, "tanh"), Net().apply(variables, xs), exact_rtol(jnp.float64)
    )


def test_real_flax_nnx_sequential_matches_mlp_apply():
    from flax import nnx

    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0), param_dtype=jnp.float64),
        jax.nn.relu,
        nnx.Linear(4, 2, rngs=nnx.Rngs(1), param_dtype=jnp.float64),
    )
    converted = from_flax_dense_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))
    assert_close(jj.mlp_apply(converted, xs, "relu"), model(xs), exact_rtol(jnp.float64))


def test_real_equinox_mlp_matches_mlp_apply():
    import equinox as eqx

    mlp = eqx.nn.MLP(3, 2, 5, 2, activation=jax.nn.softplus, key=jax.random.key(2))
    mlp = jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jnp.float64) if eqx.is_inexact_array(leaf) else leaf, mlp
    )
    converted = from_equinox_mlp(mlp)
    assert match_activation(mlp.activation) == "softplus"
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)))
    assert_close(
        jj.mlp_apply(converted, xs, "softplus"), jax.vmap(mlp)(xs), exact_rtol(jnp.float64)
    )
    no_bias = eqx.nn.MLP(3, 2, 5, 1, use_bias=False, use_final_bias=False, key=jax.random.key(3))
    assert all(np.all(layer["b"] == 0) for layer in from_equinox_mlp(no_bias))
