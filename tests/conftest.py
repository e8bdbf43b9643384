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
