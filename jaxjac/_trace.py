r"""Stochastic trace estimation: Hutchinson's estimator and Hutch++, for any matrix-free operator.

Hutchinson (1989): ``tr A = E[vᵀ A v]`` for probes with ``E[v vᵀ] = I``. Rademacher probes have
variance ``2 Σ_{i≠j} S_ij²`` per probe, Gaussian ``2 ‖S‖_F²``, with ``S = (A + Aᵀ)/2``.

Hutch++ (Meyer, Musco, Musco and Woodruff 2021) spends ``k = ⌊m/3⌋`` products on a sketch
``Q = qr(A S)``, ``k`` more on ``tr(Qᵀ A Q)`` (exact), and the remaining ``g = m - 2k`` on
Hutchinson for the deflated rest ``(I - QQᵀ) A (I - QQᵀ)``. Unbiased for any square ``A``, exact
once the sketch spans the range of ``A``, and far more accurate when a few directions dominate.

Operators are given as ``matvecs: (r, n) -> (r, n)``, products with ``r`` probes as rows (the
caller vectorises or chunks them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxjac import _moments
from jaxjac._chunks import map_chunks

__all__ = ["PROBES", "chunked", "chunked_mean_stderr", "hutchpp", "mean_stderr", "probes"]

PROBES = ("rademacher", "gaussian")


def probes(key: jax.Array, shape: tuple[int, ...], dtype: Any, probe: str) -> jax.Array:
    """Random probes with ``E[v vᵀ] = I``: ``"rademacher"`` (±1) or ``"gaussian"``."""
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def mean_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample mean and ``std / sqrt(m)`` (ddof 1) over the leading axis of ``(m,) + shape``."""
    m = samples.shape[0]
    return jnp.mean(samples, axis=0), jnp.std(samples, axis=0, ddof=1) / math.sqrt(m)


def chunked_mean_stderr(
    sample: Callable[[jax.Array], Any], keys: jax.Array, chunk_size: int | None
) -> tuple[Any, Any]:
    """Mean and standard error of ``sample(key)`` over ``keys``, ``chunk_size`` keys at a time.

    The chunks' moments are merged with :func:`jaxjac._moments.merge`: memory is one chunk of
    samples, whatever the number of keys.
    """
    n = keys.shape[0]
    c = n if chunk_size is None else min(chunk_size, n)

    def chunk(ks):
        m = _moments.of_block(jax.vmap(sample)(ks))
        return _moments.Moments(jnp.asarray(ks.shape[0], m.mean.dtype), m.mean, m.m2)

    full = n // c
    acc = chunk(keys[:c])
    if full > 1:
        rest = keys[c : full * c].reshape(full - 1, c, *keys.shape[1:])
        acc = jax.lax.scan(lambda a, ks: (_moments.merge(a, chunk(ks)), None), acc, rest)[0]
    if n % c:
        acc = _moments.merge(acc, chunk(keys[full * c :]))
    return acc.mean, jnp.sqrt(acc.m2 / ((n - 1) * n))


def hutchpp(
    matvecs: Callable[[jax.Array], jax.Array],
    n: int,
    key: jax.Array,
    num_probes: int,
    dtype: Any,
    probe: str = "rademacher",
) -> tuple[jax.Array, jax.Array]:
    """Hutch++ trace of an ``(n, n)`` operator and the standard error of its Hutchinson part.

    Args:
        matvecs: ``(r, n) -> (r, n)``, the operator applied to ``r`` probes given as rows.
        n: the operator's size.
        key: PRNG key.
        num_probes: total products ``m >= 4`` (at least two residual probes).
        dtype: the probes' dtype.
        probe: ``"rademacher"`` or ``"gaussian"``.

    Returns:
        ``(estimate, stderr)``, scalars; ``stderr`` is that of the residual Hutchinson term
        given the sketch (the sketched part has no variance once ``Q`` is drawn).
    """
    k = num_probes // 3
    key_s, key_g = jax.random.split(key)
    # Householder QR: Q stays orthonormal even when A S is rank-deficient (singular A), which is
    # all the split tr A = tr(QᵀAQ) + tr((I-QQᵀ) A (I-QQᵀ)) needs. k > n gives Q of (n, n).
    q, _ = jnp.linalg.qr(matvecs(probes(key_s, (k, n), dtype, probe)).T)
    head = jnp.sum(q.T * matvecs(q.T))
    gs = probes(key_g, (num_probes - 2 * k, n), dtype, probe)
    gs = gs - (gs @ q) @ q.T
    est, se = mean_stderr(jnp.sum(gs * matvecs(gs), axis=1))
    return head + est, se


def chunked(matvec: Callable[[jax.Array], jax.Array], chunk_size: int | None) -> Callable:
    """``matvecs`` from one ``matvec: (n,) -> (n,)``: vmapped, ``chunk_size`` rows at a time."""
    return lambda rows: map_chunks(jax.vmap(matvec), rows, chunk_size)
