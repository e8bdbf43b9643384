"""Numerics for the whole suite, set once: float64 available, strict dtype promotion.

Strict promotion turns silent float32/float64 mixing into an error, so a test that passes
proves the dtype it claims. Individual tests never flip these flags.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
