"""The test helpers themselves: a tolerance helper that passes anything would hide bugs."""

import numpy as np
import pytest

from tests.helpers import (
    assert_close,
    central_jacobian,
    exact_rtol,
    fd_rtol,
    rel_err,
    run_code_blocks,
)


def test_tolerances_scale_with_dtype():
    assert exact_rtol(np.float64) == pytest.approx(1000 * 2.220446049250313e-16)
    assert fd_rtol(np.float64) < 1e-8
    assert exact_rtol(np.float32) > 1e6 * exact_rtol(np.float64) / 1e3


def test_rel_err_is_normwise_and_detects_differences():
    b = np.array([1.0, 2.0, 4.0])
    assert rel_err(b, b) == 0.0
    assert rel_err(b + np.array([0.0, 0.0, 0.4]), b) == pytest.approx(0.1)
    assert rel_err(np.zeros(2), np.zeros(2)) == 0.0
    assert rel_err(np.array([1e-3]), np.zeros(1), scale=1.0) == pytest.approx(1e-3)


def test_assert_close_fails_on_a_real_difference():
    with pytest.raises(AssertionError):
        assert_close(np.ones(3), np.ones(3) * (1 + 1e-6), rtol=exact_rtol(np.float64))
    with pytest.raises(AssertionError, match="shapes"):
        assert_close(np.ones(3), np.ones((3, 1)), rtol=1.0)


def test_central_jacobian_is_accurate():
    a = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
    jac = central_jacobian(lambda x: np.sin(a @ x), np.array([0.3, -0.7]))
    exact = np.cos(a @ np.array([0.3, -0.7]))[:, None] * a
    assert rel_err(jac, exact) < fd_rtol(np.float64)


def test_run_code_blocks_fails_on_a_block_that_stops_early(tmp_path):
    out = run_code_blocks([("a", "print('hi')"), ("b", "x = 1")], tmp_path)
    assert out.startswith("hi\n")
    with pytest.raises(AssertionError, match=r"\['0'\]"):  # exit 0, but block b never ran
        run_code_blocks([("a", "pass"), ("b", "raise SystemExit(0)")], tmp_path)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_code_blocks([("a", "1 / 0")], tmp_path)
