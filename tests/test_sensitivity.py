"""Sensitivity pipeline: analytic Ishigami values, closed form, streaming, resume, reports.

Tolerances: statistics merged chunk by chunk (Chan's update) differ from the one-shot numpy
computation only by rounding, a few ε per merge level; ``STREAM_RTOL = 1e-12`` (≈ 4500 ε in
float64, normwise) leaves room for a few hundred chunks and still fails any wrong merge
(errors of order 1/N). A resumed run with the same chunk size repeats the same operations, so it
is compared bit for bit.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from jaxjac.errors import CheckpointMismatchError, NonFiniteInputError
from jaxjac.sensitivity import (
    CHECKPOINT_JSON,
    CHECKPOINT_NPZ,
    SensitivityReport,
    mlp_function,
    sensitivity,
)
from tests.helpers import assert_close, exact_rtol

STREAM_RTOL = 1e-12
A, B = 7.0, 0.1
ARRAYS = ("mean", "mean_abs", "mean_abs_se", "dgsm", "dgsm_se", "output_mean", "output_var")


def ishigami(params, x):
    del params
    return jnp.sin(x[0]) + A * jnp.sin(x[1]) ** 2 + B * x[2] ** 4 * jnp.sin(x[0])


def ishigami_grad(xs: np.ndarray) -> np.ndarray:
    x1, x2, x3 = xs.T
    return np.stack(
        [
            np.cos(x1) * (1 + B * x3**4),
            2 * A * np.sin(x2) * np.cos(x2),
            4 * B * x3**3 * np.sin(x1),
        ],
        axis=1,
    )


@pytest.fixture(scope="module")
def ishigami_run():
    xs = np.random.default_rng(20240501).uniform(-np.pi, np.pi, (100_000, 3))
    report = sensitivity(ishigami, None, xs, chunk_size=50_000, bounds=[-np.pi, np.pi])
    return xs, report


def test_ishigami_dgsm_matches_the_analytic_values_within_three_standard_errors(ishigami_run):
    _, report = ishigami_run
    pi = math.pi
    nu = np.array(
        [0.5 * (1 + 2 * B * pi**4 / 5 + B**2 * pi**8 / 9), A**2 / 2, 8 * B**2 * pi**6 / 7]
    )
    z = (report.dgsm[0] - nu) / report.dgsm_se[0]
    assert np.all(np.abs(z) < 3), z
    assert np.all(report.dgsm_se[0] < 0.01 * nu)  # the test has power: the error bars are small
    assert report.n_samples == 100_000
    assert report.route == "autodiff"


def test_ishigami_matches_the_analytic_gradient_on_the_same_samples(ishigami_run):
    xs, report = ishigami_run
    g = ishigami_grad(xs)
    n = xs.shape[0]
    assert_close(report.dgsm[0], np.mean(g**2, axis=0), 1e-10, what="dgsm")
    assert_close(report.mean_abs[0], np.mean(np.abs(g), axis=0), 1e-10, what="mean_abs")
    assert_close(report.mean[0], np.mean(g, axis=0), 1e-10, scale=1.0, what="mean")
    se = np.std(g**2, axis=0, ddof=1) / math.sqrt(n)
    assert_close(report.dgsm_se[0], se, 1e-10, what="dgsm_se")
    lip = np.linalg.norm(g, axis=1)  # one output: σ_max(J) is the gradient norm
    assert lip.max() == pytest.approx(report.lipschitz.max, rel=1e-12)
    assert report.lipschitz.argmax_index == int(np.argmax(lip))
    assert report.lipschitz.exact
    assert_close(np.asarray(report.lipschitz.quantiles), np.quantile(lip, [0.5, 0.9, 0.99]), 1e-12)


def test_ishigami_sobol_bound_is_c_nu_over_var_and_bounds_the_total_indices(ishigami_run):
    xs, report = ishigami_run
    pi = math.pi
    f = np.sin(xs[:, 0]) + A * np.sin(xs[:, 1]) ** 2 + B * xs[:, 2] ** 4 * np.sin(xs[:, 0])
    assert_close(report.output_var, np.array([np.var(f, ddof=1)]), 1e-10, what="Var f")
    var_exact = A**2 / 8 + B * pi**4 / 5 + B**2 * pi**8 / 18 + 0.5
    assert report.output_var[0] == pytest.approx(var_exact, rel=0.02)
    c = (2 * pi) ** 2 / pi**2  # uniform on [-π, π]: C = (b - a)²/π² = 4
    np.testing.assert_allclose(report.bound_constants, [c] * 3, rtol=1e-15)
    assert_close(report.sobol_upper[0], c * report.dgsm[0] / report.output_var[0], 1e-14)
    total_indices = np.array([0.5576, 0.4424, 0.2437])  # Ishigami a = 7, b = 0.1 (literature)
    assert np.all(report.sobol_upper[0] >= total_indices)


@pytest.fixture(scope="module")
def tansig_case():
    params = jj.mlp_init(jax.random.key(3), [4, 16, 8, 3], dtype=jnp.float64)
    xs = np.random.default_rng(3).normal(size=(600, 4))
    return params, xs


def _reference(params, xs):
    """One-shot numpy statistics from the closed-form Jacobian and Hessian of every row."""
    jac = np.asarray(jj.closed_form.mlp_jacobian(params, xs))
    hess = np.asarray(jj.closed_form.mlp_hessian(params, xs))
    values = np.asarray(jj.mlp_apply(params, xs))
    n = xs.shape[0]
    return {
        "mean": jac.mean(0),
        "mean_abs": np.abs(jac).mean(0),
        "mean_abs_se": np.abs(jac).std(0, ddof=1) / math.sqrt(n),
        "dgsm": (jac**2).mean(0),
        "dgsm_se": (jac**2).std(0, ddof=1) / math.sqrt(n),
        "output_mean": values.mean(0),
        "output_var": values.var(0, ddof=1),
        "interactions": np.abs(hess).mean(0),
        "interactions_se": np.abs(hess).std(0, ddof=1) / math.sqrt(n),
        "sigma": np.linalg.norm(jac, ord=2, axis=(1, 2)),
    }


def test_tansig_dgsm_equals_the_mean_of_squared_closed_form_jacobian_entries(tansig_case):
    params, xs = tansig_case
    report = sensitivity(jj.mlp_apply, params, xs, hessian=True)
    ref = _reference(params, xs)
    assert report.route == "closed_form"
    assert report.dgsm.shape == (3, 4)
    for name in (*ARRAYS, "interactions", "interactions_se"):
        assert_close(getattr(report, name), ref[name], STREAM_RTOL, what=name)
    assert report.lipschitz.max == pytest.approx(ref["sigma"].max(), rel=1e-13)
    assert report.lipschitz.argmax_index == int(np.argmax(ref["sigma"]))


def test_closed_form_and_autodiff_routes_agree(tansig_case):
    params, xs = tansig_case
    f = mlp_function("tansig")
    closed = sensitivity(f, params, xs, hessian=True, route="closed_form")
    auto = sensitivity(f, params, xs, hessian=True, route="autodiff")
    assert (closed.route, auto.route) == ("closed_form", "autodiff")
    for name in (*ARRAYS, "interactions"):
        assert_close(getattr(closed, name), getattr(auto, name), exact_rtol(jnp.float64), what=name)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 599, 600, 10_000])
def test_streaming_equals_the_one_shot_computation(tansig_case, chunk_size):
    params, xs = tansig_case
    report = sensitivity(jj.mlp_apply, params, xs, chunk_size=chunk_size, hessian=True)
    ref = _reference(params, xs)
    for name in (*ARRAYS, "interactions", "interactions_se"):
        assert_close(getattr(report, name), ref[name], STREAM_RTOL, what=f"{name} @ {chunk_size}")
    assert report.lipschitz.argmax_index == int(np.argmax(ref["sigma"]))
    assert_close(
        np.asarray(report.lipschitz.quantiles), np.quantile(ref["sigma"], [0.5, 0.9, 0.99]), 1e-12
    )


def test_a_shorter_last_chunk_is_padded_so_f_compiles_once():
    traces = []

    def cubic(params, x):
        traces.append(1)  # runs only while tracing
        return jnp.stack([x[0] ** 3 * params, x[1] * x[0]])

    xs = np.random.default_rng(0).normal(size=(12, 2))
    sensitivity(cubic, jnp.float64(2.0), xs[:8], chunk_size=4)
    after_first = len(traces)
    assert after_first > 0
    sensitivity(cubic, jnp.float64(2.0), xs[:10], chunk_size=4)  # chunks of 4, 4 and 2
    assert len(traces) == after_first


def test_memory_mapped_data_streams_to_the_same_result(tmp_path, tansig_case):
    params, xs = tansig_case
    np.save(tmp_path / "xs.npy", xs)
    mapped = np.load(tmp_path / "xs.npy", mmap_mode="r", allow_pickle=False)
    a = sensitivity(jj.mlp_apply, params, mapped, chunk_size=100)
    b = sensitivity(jj.mlp_apply, params, xs, chunk_size=100)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


class _Interrupt(Exception):
    pass


def _interrupt_after(n_chunks):
    seen = []

    def on_chunk(rows_done, total):
        seen.append(rows_done)
        if len(seen) == n_chunks:
            raise _Interrupt

    return on_chunk


def test_an_interrupted_run_resumes_without_recomputing_and_gives_identical_numbers(
    tmp_path, tansig_case
):
    params, xs = tansig_case
    full = sensitivity(jj.mlp_apply, params, xs, chunk_size=50, hessian=True)
    with pytest.raises(_Interrupt):
        sensitivity(
            jj.mlp_apply,
            params,
            xs,
            chunk_size=50,
            hessian=True,
            checkpoint=tmp_path,
            on_chunk=_interrupt_after(3),
        )
    assert (tmp_path / CHECKPOINT_NPZ).exists()
    assert json.loads((tmp_path / CHECKPOINT_JSON).read_text())["fingerprint"]["data_shape"] == [
        600,
        4,
    ]
    seen = []
    resumed = sensitivity(
        jj.mlp_apply,
        params,
        xs,
        chunk_size=50,
        hessian=True,
        checkpoint=tmp_path,
        resume=True,
        on_chunk=lambda done, total: seen.append(done),
    )
    assert seen[0] == 200  # chunks 1-3 came from the checkpoint
    assert len(seen) == 9
    for name in (*ARRAYS, "interactions", "interactions_se"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name), err_msg=name)
    assert resumed.lipschitz == full.lipschitz
    assert not (tmp_path / CHECKPOINT_NPZ).exists()  # removed after success


def test_resuming_with_another_chunk_size_agrees_to_rounding(tmp_path, tansig_case):
    params, xs = tansig_case
    full = sensitivity(jj.mlp_apply, params, xs)
    seen = []
    with pytest.raises(_Interrupt):
        sensitivity(
            jj.mlp_apply,
            params,
            xs,
            chunk_size=64,
            checkpoint=tmp_path / "new" / "folder",
            on_chunk=_interrupt_after(2),
        )
    resumed = sensitivity(
        jj.mlp_apply,
        params,
        xs,
        chunk_size=100,
        checkpoint=tmp_path / "new" / "folder",
        resume=True,
        on_chunk=lambda done, total: seen.append(done),
    )
    assert seen[:2] == [228, 328]  # 128 rows from the checkpoint, then chunks of 100
    for name in ARRAYS:
        assert_close(getattr(resumed, name), getattr(full, name), STREAM_RTOL, what=name)


@pytest.mark.parametrize("change", ["data", "params", "hessian", "fingerprint"])
def test_a_checkpoint_made_for_other_inputs_is_refused(tmp_path, tansig_case, change):
    params, xs = tansig_case
    with pytest.raises(_Interrupt):
        sensitivity(
            jj.mlp_apply,
            params,
            xs,
            chunk_size=100,
            checkpoint=tmp_path,
            fingerprint={"data_size": 1},
            on_chunk=_interrupt_after(1),
        )
    kwargs = {"hessian": False, "fingerprint": {"data_size": 1}}
    if change == "data":
        xs = xs.copy()
        xs[-1, 0] += 1.0
    elif change == "params":
        params = [dict(layer) for layer in params]
        params[0]["b"] = params[0]["b"] + 0.5
    elif change == "hessian":
        kwargs["hessian"] = True
    else:
        kwargs["fingerprint"] = {"data_size": 2}
    with pytest.raises(ValueError, match="different inputs") as err:
        sensitivity(
            jj.mlp_apply, params, xs, chunk_size=100, checkpoint=tmp_path, resume=True, **kwargs
        )
    # Python words: the CLI's --resume is its business.
    assert isinstance(err.value, CheckpointMismatchError)  # the facts, for other front ends
    assert err.value.differences and err.value.path == tmp_path
    message = str(err.value)
    assert message.endswith("; start over with resume=False, or remove the checkpoint folder")
    assert "--" not in message


def test_resume_without_a_checkpoint_starts_from_the_first_row(tmp_path, tansig_case):
    params, xs = tansig_case
    seen = []
    sensitivity(
        jj.mlp_apply,
        params,
        xs,
        chunk_size=300,
        checkpoint=tmp_path,
        resume=True,
        on_chunk=lambda done, total: seen.append(done),
    )
    assert seen == [300, 600]


def test_a_non_finite_row_is_named_or_dropped_and_counted(tansig_case):
    params, xs = tansig_case
    bad = xs.copy()
    bad[[4, 250], [1, 3]] = [np.nan, np.inf]
    with pytest.raises(ValueError, match=r"data row 5 \(1-based\).*column 2 \('x2'\) = nan"):
        sensitivity(jj.mlp_apply, params, bad, chunk_size=100)
    named = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"column 2 \('b'\) = nan") as err:
        sensitivity(jj.mlp_apply, params, bad, feature_names=named)
    assert str(err.value).endswith("; pass drop_nonfinite=True to skip such rows")
    assert isinstance(err.value, NonFiniteInputError)
    assert (err.value.row, err.value.columns, err.value.names) == (4, (1,), tuple(named))
    assert "--" not in str(err.value)  # Python words: the CLI's option is its business
    dropped = sensitivity(jj.mlp_apply, params, bad, chunk_size=100, drop_nonfinite=True)
    clean = sensitivity(jj.mlp_apply, params, np.delete(xs, [4, 250], axis=0))
    assert (dropped.n_dropped, dropped.n_samples) == (2, 598)
    for name in ARRAYS:
        assert_close(getattr(dropped, name), getattr(clean, name), STREAM_RTOL, what=name)
    with pytest.raises(ValueError, match="no example left"):
        sensitivity(jj.mlp_apply, params, np.full((3, 4), np.nan), drop_nonfinite=True)


def test_non_finite_derivatives_at_finite_inputs_name_the_row():
    def log_model(params, x):
        return jnp.log(x) * params

    xs = np.array([[1.0, 2.0], [3.0, 4.0], [-1.0, 2.0]])
    with pytest.raises(ValueError, match="not finite at data row 3"):
        sensitivity(log_model, jnp.float64(1.0), xs, chunk_size=2)


def test_the_reservoir_is_a_uniform_sample_independent_of_chunking(tansig_case):
    params, xs = tansig_case
    sigma = _reference(params, xs)["sigma"]
    reports = [
        sensitivity(jj.mlp_apply, params, xs, chunk_size=c, reservoir_size=40) for c in (7, 600)
    ]
    for report in reports:
        lip = report.lipschitz
        assert (lip.exact, lip.sample_size) == (False, 40)
        assert lip.max == pytest.approx(sigma.max(), rel=1e-13)  # the maximum stays exact
        # a sample of 40 of 600: its median lies well inside the 10%-90% range of all values
        lo, hi = np.quantile(sigma, [0.1, 0.9])
        assert lo < lip.quantiles[0] < hi
    assert_close(
        np.asarray(reports[0].lipschitz.quantiles),
        np.asarray(reports[1].lipschitz.quantiles),
        STREAM_RTOL,
    )


def test_report_converts_to_rows_structured_array_csv_and_json(tansig_case):
    params, xs = tansig_case
    report = sensitivity(
        jj.mlp_apply,
        params,
        xs[:50],
        feature_names=["a", "b", "c", "d"],
        output_names=["u", "v", "w"],
        variances=[1.0, 2.0, 3.0, 4.0],
    )
    assert isinstance(report, SensitivityReport)
    rows = report.rows()
    assert len(rows) == 12
    assert (rows[5]["output"], rows[5]["feature"]) == ("v", "b")
    assert rows[5]["dgsm"] == report.dgsm[1, 1]
    assert sorted(r["rank"] for r in rows if r["output"] == "w") == [1, 2, 3, 4]
    best = max((r for r in rows if r["output"] == "u"), key=lambda r: r["dgsm"])
    assert best["rank"] == 1
    table = report.to_structured()
    assert table.shape == (12,)
    np.testing.assert_array_equal(table["dgsm"], report.dgsm.ravel())
    np.testing.assert_array_equal(table["sobol_upper"], report.sobol_upper.ravel())
    lines = report.to_csv().splitlines()
    assert lines[0] == "output,feature,rank,mean,mean_abs,mean_abs_se,dgsm,dgsm_se,sobol_upper"
    assert float(lines[6].split(",")[6]) == report.dgsm[1, 1]  # 17 digits: exact round trip
    text = str(report)  # the readable summary: top DGSMs per output, then σ_max
    assert text.splitlines()[0].startswith("sensitivity of 3 output(s) to 4 feature(s) over 50")
    best_u = report.feature_names[int(np.argmax(report.dgsm[0]))]
    assert text.splitlines()[1].startswith(f"  u: DGSM {best_u} ")
    assert f"(xs[{report.lipschitz.argmax_index}])" in text
    data = json.loads(report.to_json())
    assert data["dgsm"] == report.dgsm.tolist()
    assert data["interactions"] is None
    assert data["lipschitz"]["argmax_index"] == report.lipschitz.argmax_index
    np.testing.assert_allclose(report.bound_constants, [1.0, 2.0, 3.0, 4.0])


def test_json_writes_nan_as_null():
    def constant_output(params, x):
        return jnp.stack([x[0] * params, jnp.zeros((), x.dtype) * x[1]])

    xs = np.random.default_rng(1).normal(size=(20, 2))
    report = sensitivity(constant_output, jnp.float64(1.0), xs, bounds=[0.0, 1.0])
    assert np.isnan(report.sobol_upper[1]).all()  # Var f_2 = 0: no bound
    data = json.loads(report.to_json())
    assert data["sobol_upper"][1] == [None, None]
    assert data["sobol_upper"][0][0] is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bounds": [0.0, 1.0], "variances": 1.0}, "not both"),
        ({"bounds": [1.0, 0.0]}, "a < b"),
        ({"variances": [1.0, -1.0, 1.0, 1.0]}, "positive"),
        ({"feature_names": ["a"]}, "feature_names must have 4"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"quantiles": [1.5]}, r"quantiles must lie in \[0, 1\]"),
        ({"resume": True}, "needs a checkpoint"),
        ({"route": "fast"}, "route must be"),
    ],
)
def test_bad_options_are_refused(tansig_case, kwargs, message):
    params, xs = tansig_case
    with pytest.raises(ValueError, match=message):
        sensitivity(jj.mlp_apply, params, xs[:10], **kwargs)


def test_bad_models_and_data_are_refused():
    def matrix_valued(params, x):
        return jnp.outer(x, x)

    xs = np.ones((3, 2))
    with pytest.raises(ValueError, match="scalar or a vector"):
        sensitivity(matrix_valued, None, xs)
    with pytest.raises(ValueError, match="needs f to be jaxjac's MLP"):
        sensitivity(ishigami, None, np.ones((3, 3)), route="closed_form")
    with pytest.raises(ValueError, match=r"shape \(N, n_in\)"):
        sensitivity(ishigami, None, np.ones(3))
    with pytest.raises(ValueError, match="real numbers"):
        sensitivity(ishigami, None, np.array([["a", "b", "c"]]))


def test_data_of_the_wrong_width_for_an_mlp_names_the_data_shape():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=jnp.float64)
    with pytest.raises(ValueError) as err:
        sensitivity(mlp_function("tanh"), params, np.ones((5, 2)))
    assert str(err.value) == (
        "xs must have shape (N, 3) to match W_1 of shape (4, 3); got shape (5, 2)"
    )
    with pytest.raises(ValueError, match=r"\(N, 3\).*got shape \(5, 2\)"):  # autodiff alike
        sensitivity(mlp_function("tanh"), params, np.ones((5, 2)), route="autodiff")


def test_a_model_failing_on_a_row_names_the_row_and_data_shapes():
    def three_inputs(params, x):
        return x @ jnp.ones((3,), x.dtype)

    with pytest.raises(ValueError) as err:
        sensitivity(three_inputs, None, np.ones((5, 2)))
    message = str(err.value)
    assert message.startswith("f(params, x) failed on a row of shape (2,) of xs of shape (5, 2): ")
    assert "TypeError" in message and "dot_general" in message  # then the model's own message
    assert isinstance(err.value.__cause__, TypeError)


def test_dtype_casts_the_floating_params_too():
    # float32 params, float64 data: without the cast they meet in float32 or, with strict
    # promotion, fail; cast, the run is the one on params cast to float64 by hand.
    params32 = jj.mlp_init(jax.random.key(4), [3, 6, 2], dtype=jnp.float32)
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params32)
    xs = np.random.default_rng(4).normal(size=(40, 3))
    f = mlp_function("tanh")
    cast = sensitivity(f, params32, xs, hessian=True, dtype=jnp.float64)
    by_hand = sensitivity(f, params64, xs, hessian=True)
    for name in (*ARRAYS, "interactions", "interactions_se"):
        assert_close(getattr(cast, name), getattr(by_hand, name), 1e-13, what=name)

    # A model computing on its params alone: uncast, w * w would be rounded to float32 (~1e-8),
    # whatever the promotion rules (standard here, so that the uncast run would get that far).
    def squared_weights(params, x):
        return jnp.sin(x @ (params["w"] * params["w"]))

    w32 = {"w": np.array([0.3, -1.7, 2.9], np.float32)}
    with jax.numpy_dtype_promotion("standard"):
        cast = sensitivity(squared_weights, w32, xs, hessian=True, dtype=jnp.float64)
    w64 = {"w": w32["w"].astype(np.float64)}
    by_hand = sensitivity(squared_weights, w64, xs, hessian=True)
    for name in (*ARRAYS, "interactions"):
        assert_close(getattr(cast, name), getattr(by_hand, name), 1e-13, what=name)

    # A non-floating leaf is left alone: an integer index stays one (a float index would fail).
    def picked_cube(params, x):
        return x[params["index"]] ** 3 * params["scale"]

    mixed = {"scale": np.float32(2.0), "index": np.int32(1)}
    report = sensitivity(picked_cube, mixed, xs, dtype=jnp.float64)
    expected = np.zeros(3)
    expected[1] = np.mean(6.0 * xs[:, 1] ** 2)
    assert_close(report.mean[0], expected, 1e-13, what="mean")


def test_mlp_function_is_cached_and_recognised():
    assert mlp_function("tansig") is mlp_function("TANSIG".lower())
    assert mlp_function("tanh") is not mlp_function("tansig")
    params = jj.mlp_init(jax.random.key(0), [2, 3, 1], dtype=jnp.float64)
    xs = np.random.default_rng(0).normal(size=(5, 2))
    assert sensitivity(mlp_function("relu"), params, xs).route == "closed_form"


def test_no_progress_output_when_stderr_is_not_a_terminal(capsys, tansig_case):
    params, xs = tansig_case
    sensitivity(jj.mlp_apply, params, xs, chunk_size=200, progress=True)
    assert capsys.readouterr().err == ""
