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
    with pytest.raises(ValueError, match=r"W1 in .*m\.npz holds Python objects.*refusing") as err:
        load_params(path)
    assert "allow_pickle" not in str(err.value)


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


def _flip(path, start, stop):
    raw = bytearray(path.read_bytes())
    for i in range(start, stop):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_compressed_npz_is_a_value_error_naming_the_file(tmp_path, params):
    path = tmp_path / "m.npz"
    np.savez_compressed(path, **_arrays(params))
    # Inside W1's deflate stream (after its 30-byte local header and name): zlib.error before.
    _flip(path, 60, 70)
    with pytest.raises(
        ValueError, match=r"m\.npz: expected an \.npz archive .*corrupt member 'W1'"
    ):
        load_params(path)


def test_every_single_byte_corruption_of_an_npz_gives_a_value_error(tmp_path):
    # zlib.error, BadZipFile, EOFError, tokenize.TokenError, NotImplementedError, … all surface
    # from numpy/zipfile for some byte: each must become one ValueError (or load unharmed).
    good = tmp_path / "good.npz"
    np.savez_compressed(good, W1=np.ones((2, 2)), b1=np.ones(2))
    raw = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for offset in range(len(raw)):
        for mask in (0xFF, 0x01):
            corrupt = bytearray(raw)
            corrupt[offset] ^= mask
            bad.write_bytes(bytes(corrupt))
            try:
                load_params(bad)
            except ValueError as err:
                assert "allow_pickle" not in str(err), (offset, mask, err)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "m.npz",
            b"W1 = [1, 2]\n",
            r"expected an \.npz archive \(zip file\).*found text starting 'W1",
        ),
        ("m.npz", b"", "found an empty file"),
        ("m.npz", np.lib.format.MAGIC_PREFIX + b"\x01\x00", r"found a \.npy array \(NPY header\)"),
        (
            "m.mat",
            b"W1 = [1, 2]\n" * 20,
            r"expected a MATLAB \.mat file \(a v4 to v7 header\).*found text",
        ),
        ("m.mat", b"PK\x03\x04" + b"\x00" * 200, r"\.mat file .*found a zip archive"),
    ],
)
def test_model_file_headers_are_checked_first(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_params(tmp_path / name)
    assert "allow_pickle" not in str(err.value) and "unpickle" not in str(err.value)


def test_mat_v4_files_pass_the_header_check(tmp_path, params):
    arrays = {k: (v.reshape(-1, 1) if k[0] == "b" else v) for k, v in _arrays(params).items()}
    scipy.io.savemat(tmp_path / "v4.mat", arrays, format="4")
    _assert_same_params(load_params(tmp_path / "v4.mat"), params)


@pytest.mark.parametrize(
    ("names", "found"),
    [
        (("W0", "b0", "W1", "b1"), "found W0, b0"),  # numbered from 0: W0 was silently dropped
        (("W0", "b0"), "found W0, b0"),
        (("W01", "b01", "W2", "b2"), "found W01, b01"),
    ],
)
def test_layers_not_numbered_from_1_are_refused(tmp_path, names, found):
    arrays = {n: (np.ones((2, 2)) if n[0] == "W" else np.ones(2)) for n in names}
    path = _write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(
        ValueError, match=rf"expected layers numbered from 1 \(W1, b1, …\).*{found}$"
    ):
        load_params(path)


def test_a_huge_layer_number_is_reported_without_listing_every_gap(tmp_path):
    arrays = {"W1": np.ones((2, 2)), "b1": np.ones(2), "W99999": np.ones((2, 2))}
    path = _write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"missing W2, b2, .*, … \(199995 in all\)"):
        load_params(path)


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
        ("x,2\n", r"first row \(line 1\) mixes numbers and text"),
        ("\n\nx,2\n", r"first row \(line 3\) mixes numbers and text"),
        # Blank lines count: the bad cell is on line 6 of the file (data row 2).
        ("a,b\n\n\n1,2\n\n3,x", r"data row 2 \(line 6\), column 2 \('b'\): .*found 'x'"),
        ("a,b\n\n1,2\n\n3\n", r"data row 2 \(line 5\) has 1 cells: expected 2 like the first row"),
        ('a,b\n"1\n",2\n3,x\n', r"data row 2 \(line 4\)"),  # a quoted cell spans lines 2-3
        ("a,a,\n1,2,3\n", r"line 1: .*found 'a' in columns 1 and 2; an empty name in column 3$"),
        ("a,,b\n1,2,3\n", r"line 1: expected a distinct, non-empty name .*empty name in column 2$"),
        ("x,y,x,y\n1,2,3,4\n", r"found 'x' in columns 1 and 3; 'y' in columns 2 and 4$"),
        ("a,b\n1,2\n3," + "9" * 140_000 + "\n", r"line 3: expected cells of at most 131072 char"),
        ("a,b\n", "found only a header"),
        ("", "found an empty file"),
    ],
)
def test_bad_csv_cells_are_named(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_data(tmp_path / "d.csv")


def test_non_utf8_csv_names_the_file_line_and_byte(tmp_path):
    # Past the first decoded block, so the line is not where the decoder stopped.
    text = "a,b\n" + "1,2\n" * 5000 + "café,2\n"
    (tmp_path / "d.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"d\.csv: line 5002: expected UTF-8 text, found byte 0xe9"
    ):
        load_data(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"1,2\n3,4\n", r"expected a \.npy file \(NPY header\).*found text starting '1,2 3,4'"),
        (b"", "found an empty file"),
        (b"PK\x03\x04" + b"\x00" * 40, r"found a zip archive \(such as \.npz\)"),
        (b"\x80\x04\x95" + b"\x00" * 20, "found a Python pickle"),
        (b"\x00\x01\x02\xff" * 4, r"found binary data starting b'\\x00\\x01"),
    ],
)
def test_npy_header_is_checked_first(tmp_path, content, message):
    (tmp_path / "x.npy").write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_data(tmp_path / "x.npy")
    assert "allow_pickle" not in str(err.value)
    assert "Python objects" not in str(err.value)  # it is not an object array: it is no .npy


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


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["Dense_0", "Dense_2", "Dense_3"],
            "expected Dense_0, Dense_1, Dense_2 in order (linen numbers its Dense layers from 0 "
            "without gaps); found 'Dense_0', 'Dense_2', 'Dense_3' (missing Dense_1)",
        ),
        (
            ["Dense_1", "Dense_2", "Dense_3"],
            "expected Dense_0, Dense_1, Dense_2 in order (linen numbers its Dense layers from 0 "
            "without gaps); found 'Dense_1', 'Dense_2', 'Dense_3' (missing Dense_0)",
        ),
        (
            ["Dense_0", "Dense_1", "head"],
            "expected names that give the layer order, Dense_0, Dense_1, … (one prefix, "
            "numbered in the order the layers apply); found 'Dense_0', 'Dense_1', 'head', which "
            "mix numbered and unnumbered names",
        ),
        (
            ["Dense_0", "Dense_1", "Output_0"],
            "found 'Dense_0', 'Dense_1', 'Output_0', which mix the prefixes 'Dense_', 'Output_'",
        ),
    ],
)
def test_flax_layer_names_without_an_order_name_the_order_expected(params, names, message):
    # Shapes chain in every case: only the names can tell that a layer is missing or misplaced.
    variables = _flax_layout(params, names)
    with pytest.raises(ValueError) as err:
        from_flax_dense_params(variables)
    assert message in str(err.value)
    assert str(err.value).startswith("Flax layers: expected ")


def test_flax_layer_names_that_do_give_an_order(params):
    # nn.Sequential's layers_0, layers_2, …: its activations take the odd numbers.
    _assert_same_params(
        from_flax_dense_params(_flax_layout(params, ["layers_0", "layers_2", "layers_4"])), params
    )
    # No numbers at all: no order to go by, so layer_order must name it.
    variables = _flax_layout(params, ["hidden", "middle", "out"])
    with pytest.raises(ValueError, match=r"found 'hidden', 'middle', 'out', which carry no number"):
        from_flax_dense_params(variables)
    converted = from_flax_dense_params(variables, layer_order=["hidden", "middle", "out"])
    _assert_same_params(converted, params)
    # One layer needs no order.
    only = _flax_layout(params[:1], ["proj"])
    _assert_same_params(from_flax_dense_params(only), params[:1])


def test_flax_names_without_numbers_re_sorted_by_a_tree_operation_are_refused():
    # Dense(3, name="proj") then Dense(3, name="head"): jax.tree and optax operations return the
    # dict with sorted keys, ['head', 'proj']. The square layers chain either way, so only the
    # names could tell, and insertion order would silently swap the layers.
    params = jj.mlp_init(jax.random.key(3), [3, 3, 3], dtype=jnp.float64)
    applied = _flax_layout(params, ["proj", "head"])
    re_sorted = {"params": dict(sorted(applied["params"].items()))}
    assert list(re_sorted["params"]) == ["head", "proj"]
    with pytest.raises(ValueError) as err:
        from_flax_dense_params(re_sorted)
    message = str(err.value)
    assert message.startswith("Flax layers: expected names that give the layer order")
    assert "found 'head', 'proj', which carry no number" in message
    assert "layer_order=[...]" in message
    _assert_same_params(from_flax_dense_params(re_sorted, layer_order=["proj", "head"]), params)


def test_flax_layer_order_names_the_order_of_any_names(params):
    # Stored out of order, and with names that give none: layer_order says it.
    variables = _flax_layout(params, ["Dense_0", "Dense_1", "head"])
    variables["params"] = dict(reversed(variables["params"].items()))
    converted = from_flax_dense_params(variables, layer_order=["Dense_0", "Dense_1", "head"])
    _assert_same_params(converted, params)
    with pytest.raises(ValueError, match=r"layer_order must name every Flax layer once: expected"):
        from_flax_dense_params(variables, layer_order=["Dense_0", "head"])
    with pytest.raises(ValueError, match=r"got 'Dense_0', 'Dense_0', 'head'"):
        from_flax_dense_params(variables, layer_order=["Dense_0", "Dense_0", "head"])


def test_flax_single_layer_without_layer_names_is_refused(params):
    layer = _flax_layout(params[:1], ["Dense_0"])["params"]["Dense_0"]
    with pytest.raises(ValueError) as err:
        from_flax_dense_params({"params": layer})
    assert "one entry per layer, Dense_0, Dense_1, …" in str(err.value)
    assert "found one layer's entries ['bias', 'kernel']" in str(err.value)


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


def test_real_flax_linen_named_layers_after_an_optax_update_need_layer_order():
    import flax.linen as flax_nn
    import optax

    class Net(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x):
            x = flax_nn.tanh(flax_nn.Dense(3, name="proj", param_dtype=jnp.float64)(x))
            return flax_nn.Dense(3, name="head", param_dtype=jnp.float64)(x)

    xs = jnp.asarray(np.random.default_rng(3).normal(size=(5, 3)))
    variables = Net().init(jax.random.key(0), xs[0])
    zero = jax.tree_util.tree_map(jnp.zeros_like, variables)
    updated = optax.apply_updates(variables, zero)
    assert list(updated["params"]) == ["head", "proj"]  # re-sorted: not the order they apply
    with pytest.raises(ValueError, match="which carry no number"):
        from_flax_dense_params(updated)
    converted = from_flax_dense_params(updated, layer_order=["proj", "head"])
    assert_close(
        jj.mlp_apply(converted, xs, "tanh"), Net().apply(updated, xs), exact_rtol(jnp.float64)
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
