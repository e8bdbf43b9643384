"""Numerics for the whole suite, set once: float64 available, strict dtype promotion.

Strict promotion turns silent float32/float64 mixing into an error, so a test that passes
proves the dtype it claims. Individual tests never flip these flags, not even in a scoped
context: a test that needs other settings (JAX's defaults for the README's examples and
test_cross_check.py's default-user check, standard promotion for mixed float32/float64
parameters in test_optimizers.py, the multi-process sharding hosts) runs its code in a fresh
interpreter, which sets its own.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402  (after the flags: nothing may touch JAX before they are set)

from jaxjac import activations  # noqa: E402


@pytest.fixture(autouse=True)
def _activations_registered_by_a_test_stay_in_it():
    # Tests register activations (a cube, sin/cos replacements); left in the global registry
    # they change what other tests see, e.g. match_activation(z**3) found "test_cube".
    saved = dict(activations._REGISTRY)
    yield
    activations._REGISTRY.clear()
    activations._REGISTRY.update(saved)
