r"""Running moments: count, mean and ``M2 = Σ (x - mean)²``, merged with Chan et al.'s update.

One algorithm serves the host's float64 accumulators (the sensitivity pipeline), the chunked
loops on a device (curvature's stochastic estimators) and the reduction over devices (sharding):

    n = n_a + n_b,   δ = mean_b - mean_a,
    mean = mean_a + δ n_b / n,   M2 = M2_a + M2_b + δ² n_a n_b / n

(Chan, Golub and LeVeque 1979; Welford's algorithm merged pairwise). Each block's own moments
are taken in two passes, so the variance never suffers the cancellation of ``E[x²] - E[x]²``.
The functions use only arithmetic on their arguments, so they work on NumPy arrays and on JAX
arrays alike, traced or not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Moments", "combine_over_axis", "empty", "merge", "of_block", "std_error"]


class Moments(NamedTuple):
    """Count, mean and sum of squared deviations ``M2`` of a stream of equally shaped arrays.

    Attributes:
        n: the count (a Python int on the host, an array on a device).
        mean: the mean, the shape of one element of the stream.
        m2: ``Σ (x - mean)²``, same shape; the sample variance is ``m2 / (n - 1)``.
    """

    n: Any
    mean: Any
    m2: Any


def empty(shape: tuple[int, ...]) -> Moments:
    """The moments of nothing, in float64 on the host."""
    return Moments(0, np.zeros(shape), np.zeros(shape))


def of_block(x: Any, axis: int = 0) -> Moments:
    """Moments of a block over ``axis``, in two passes (NumPy or JAX arrays)."""
    lib = jnp if isinstance(x, jax.Array) else np
    mean = lib.mean(x, axis=axis)
    m2 = lib.sum(lib.square(x - lib.expand_dims(mean, axis)), axis=axis)
    return Moments(x.shape[axis], mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise update; an empty side (a Python count of 0) is skipped."""
    if isinstance(a.n, int) and a.n == 0:
        return b
    if isinstance(b.n, int) and b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * (b.n / n), a.m2 + b.m2 + delta * delta * (a.n * b.n / n))


def combine_over_axis(m: Moments, axis_name: str) -> Moments:
    """Merge every device's moments over the mapped axis ``axis_name`` (inside ``shard_map``).

    The k-way form of :func:`merge`: ``M2 = Σ_d [M2_d + n_d (mean_d - mean)²]``, every term
    non-negative. A device with ``n_d = 0`` (its ``mean_d`` must then be finite, e.g. zero)
    weighs nothing. ``m.n`` is an integer array; the result's ``n`` is too.
    """
    count = jax.lax.psum(m.n, axis_name)
    n_d, n = m.n.astype(m.mean.dtype), count.astype(m.mean.dtype)
    mean = jax.lax.psum(m.mean * n_d, axis_name) / jnp.maximum(n, 1)
    m2 = jax.lax.psum(m.m2 + n_d * jnp.square(m.mean - mean), axis_name)
    return Moments(count, mean, m2)


def std_error(m: Moments) -> Any:
    """Standard error of the mean, ``sqrt(M2 / ((n - 1) n))``; NaN for fewer than two."""
    if isinstance(m.n, int):
        if m.n < 2:
            return np.full_like(m.mean, np.nan)
        return np.sqrt(m.m2 / ((m.n - 1) * m.n))
    return jnp.sqrt(m.m2 / ((m.n - 1) * m.n))
