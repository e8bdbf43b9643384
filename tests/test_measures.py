"""The measures accumulator driven by hand (init, update, finalize), and the structured errors.

Tolerances: as in test_sensitivity.py, merged chunks differ from the one-shot NumPy statistics
by rounding only (``STREAM_RTOL = 1e-12`` in float64).
"""

import io
import math

import numpy as np
import pytest

from jaxjac import measures
from jaxjac.errors import (
    CheckpointError,
    CheckpointMismatchError,
    NoFiniteRowsError,
    NonFiniteDerivativeError,
    NonFiniteInputError,
)
from tests.helpers import assert_close

STREAM_RTOL = 1e-12


def _model(xs):
    """Values ``(B, 2)``, Jacobians ``(B, 2, 3)`` and Hessians ``(B, 2, 3, 3)`` by hand."""
    x0, x1, x2 = xs.T
    values = np.stack([np.sin(x0) * x1, x0**2 + x1 * x2], axis=1)
    zero = np.zeros_like(x0)
    jac = np.stack(
        [
            np.stack([np.cos(x0) * x1, np.sin(x0), zero], axis=1),
            np.stack([2 * x0, x2, x1], axis=1),
        ],
        axis=1,
    )
    hess = np.zeros((xs.shape[0], 2, 3, 3))
    hess[:, 0, 0, 0] = -np.sin(x0) * x1
    hess[:, 0, 0, 1] = hess[:, 0, 1, 0] = np.cos(x0)
    hess[:, 1, 0, 0] = 2.0
    hess[:, 1, 1, 2] = hess[:, 1, 2, 1] = 1.0
    return values, jac, hess


@pytest.fixture(scope="module")
def data():
    xs = np.random.default_rng(7).normal(size=(200, 3))
    return xs, *_model(xs)


def _run(data, chunk_size, reservoir_size=100_000):
    xs, values, jac, hess = data
    state = measures.init(2, 3, hessian=True, reservoir_size=reservoir_size)
    for lo in range(0, xs.shape[0], chunk_size):
        part = slice(lo, lo + chunk_size)
        state = measures.update(state, measures.chunk(values[part], jac[part], hess[part]))
    options = measures.report_options(2, 3, feature_names=["a", "b", "c"], bounds=[-1.0, 1.0])
    return measures.finalize(state, options)


@pytest.mark.parametrize("chunk_size", [1, 13, 200])
def test_a_loop_of_ones_own_gives_the_one_shot_statistics(data, chunk_size):
    xs, values, jac, hess = data
    report = _run(data, chunk_size)
    n = xs.shape[0]
    assert (report.n_samples, report.n_dropped, report.route) == (n, 0, "autodiff")
    assert report.feature_names == ("a", "b", "c") and report.output_names == ("y1", "y2")
    assert_close(report.mean, jac.mean(0), STREAM_RTOL, what="mean")
    assert_close(report.dgsm, (jac**2).mean(0), STREAM_RTOL, what="dgsm")
    se = (jac**2).std(0, ddof=1) / math.sqrt(n)
    assert_close(report.dgsm_se, se, STREAM_RTOL, what="dgsm_se")
    assert_close(report.interactions, np.abs(hess).mean(0), STREAM_RTOL, what="interactions")
    assert_close(report.output_var, values.var(0, ddof=1), STREAM_RTOL, what="output_var")
    upper = (4 / math.pi**2) * (jac**2).mean(0) / values.var(0, ddof=1)[:, None]
    assert_close(report.sobol_upper, upper, STREAM_RTOL, what="sobol_upper")
    sigma = np.linalg.norm(jac, ord=2, axis=(1, 2))
    assert report.lipschitz.max == pytest.approx(sigma.max(), rel=1e-13)
    assert report.lipschitz.argmax_index == int(np.argmax(sigma))  # rows counted by update
    assert report.lipschitz.exact and report.lipschitz.sample_size == n
    assert_close(
        np.asarray(report.lipschitz.quantiles), np.quantile(sigma, [0.5, 0.9, 0.99]), 1e-12
    )


def test_the_reservoir_sample_does_not_depend_on_the_chunking(data):
    one, many = _run(data, 200, reservoir_size=30), _run(data, 7, reservoir_size=30)
    assert (one.lipschitz.exact, one.lipschitz.sample_size) == (False, 30)
    assert one.lipschitz.quantiles == many.lipschitz.quantiles


def test_the_state_saves_and_loads_as_arrays(data):
    _, values, jac, hess = data
    like = measures.init(2, 3, hessian=True)
    state = measures.update(like, measures.chunk(values[:50], jac[:50], hess[:50]))
    buffer = io.BytesIO()
    np.savez(buffer, **measures.state_arrays(state))
    buffer.seek(0)
    with np.load(buffer) as archive:
        loaded = measures.state_from_arrays({k: archive[k] for k in archive.files}, like)
    more = measures.chunk(values[50:], jac[50:], hess[50:])
    a = measures.finalize(measures.update(state, more))
    b = measures.finalize(measures.update(loaded, more))
    np.testing.assert_array_equal(a.dgsm, b.dgsm)
    np.testing.assert_array_equal(a.interactions_se, b.interactions_se)
    assert a.lipschitz == b.lipschitz
    with pytest.raises(ValueError, match="expected shape"):
        measures.state_from_arrays(measures.state_arrays(state), measures.init(2, 4, hessian=True))


def test_mismatched_chunks_states_and_options_are_refused(data):
    _, values, jac, hess = data
    with pytest.raises(ValueError, match="without abs_hess"):
        measures.update(measures.init(2, 3), measures.chunk(values, jac, hess))
    with pytest.raises(ValueError, match="at least one update"):
        measures.finalize(measures.init(2, 3))
    with pytest.raises(ValueError, match="expected hess of shape"):
        measures.chunk(values, jac, hess[:, :1])
    with pytest.raises(ValueError, match=r"values \(B, n_out\) and jac"):
        measures.chunk(values[:, :1], jac)
    with pytest.raises(ValueError, match="reservoir_size must be a positive integer"):
        measures.init(2, 3, reservoir_size=0)
    with pytest.raises(ValueError, match="output_names must have 2"):
        measures.report_options(2, 3, output_names=["u"])
    state = measures.update(measures.init(2, 3), measures.chunk(values, jac))
    with pytest.raises(ValueError, match="options for 2 outputs and 3 features"):
        measures.finalize(state, measures.report_options(2, 4))


def test_the_summary_lines_are_public(data):
    report = _run(data, 50)
    (first, second) = report.summary_lines(outputs=2, features=1)
    best = report.feature_names[int(np.argmax(report.dgsm[0]))]
    assert first.startswith(f"  y1: DGSM {best} ") and second.startswith("  y2: DGSM ")
    assert report.summary_lines(outputs=1) == [report.summary().splitlines()[1]]
    line = report.lipschitz_line("row 3", mean=False)
    assert line.startswith(
        f"  largest singular value of J: max {report.lipschitz.max:.4g} (row 3), q0.5"
    )
    assert "mean" not in line
    assert report.lipschitz_line() == report.summary().splitlines()[-1]


def test_errors_carry_the_facts_apart_from_the_advice():
    err = NonFiniteInputError(4, [1, 2], [np.nan, np.inf], ["a", "b", "c"])
    assert isinstance(err, ValueError)
    assert (err.row, err.columns, err.names) == (4, (1, 2), ("a", "b", "c"))
    assert err.facts == (
        "data row 5 (1-based) has a non-finite value in column 2 ('b') = nan, 3 ('c') = inf "
        "(columns 1-based): expected finite numbers"
    )
    assert str(err) == err.facts + "; pass drop_nonfinite=True to skip such rows"
    mismatch = CheckpointMismatchError("ckpt", ["data", "model parameters"])
    assert isinstance(mismatch, CheckpointError) and mismatch.differences == (
        "data",
        "model parameters",
    )
    assert "(data, model parameters differ)" in mismatch.facts
    assert str(mismatch).endswith("; start over with resume=False, or remove the checkpoint folder")
    assert NonFiniteDerivativeError(2).row == 2 and "data row 3" in str(NonFiniteDerivativeError(2))
    assert NoFiniteRowsError(3).n_rows == 3 and str(NoFiniteRowsError(3)).startswith("no example")
