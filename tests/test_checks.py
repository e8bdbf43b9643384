"""Option checks: each message names the option, what it must be and what it got."""

import numpy as np
import pytest

from jaxjac._checks import check_choice, check_differentiable, is_count, positive_int


def test_positive_int_accepts_integers_only():
    assert positive_int("n", 3) == 3 and type(positive_int("n", np.int64(3))) is int
    assert positive_int("n", None, allow_none=True) is None
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"n must be a positive integer, got"):
            positive_int("n", bad)
    with pytest.raises(ValueError, match=r"n must be an integer >= 4 or None, got 3"):
        positive_int("n", 3, allow_none=True, minimum=4)
    assert is_count(np.int32(1)) and not is_count(True) and not is_count(1.0)


def test_choices_and_dtypes():
    check_choice("mode", "fwd", ("fwd", "rev"))
    with pytest.raises(ValueError, match=r"mode must be one of \('fwd', 'rev'\), got 'up'"):
        check_choice("mode", "up", ("fwd", "rev"))
    with pytest.raises(ValueError, match=r"got \[\]"):
        check_choice("mode", [], ("fwd",))  # unhashable: refused, not a TypeError
    check_differentiable("x", np.float32)
    with pytest.raises(TypeError, match=r"x must be a floating array .* got dtype int32"):
        check_differentiable("x", np.dtype(np.int32))
