"""Chunked evaluation of batched functions: a sequential loop over blocks of rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["map_chunks"]


def map_chunks(fn: Callable[[jax.Array], Any], xs: jax.Array, chunk_size: int | None) -> Any:
    """``fn`` on ``xs`` whole, or on consecutive chunks of rows (and one remainder), stacked.

    ``fn`` takes a batch ``(rows,) + x.shape`` and returns leaves with the rows first. Unlike
    ``lax.map(..., batch_size=)``, which vmaps a function of one example, this calls a batched
    function on ``(chunk_size,) + x.shape`` blocks, so code written for batches (the closed
    form's tall GEMMs) keeps its shape. Peak memory follows ``chunk_size``; results are those of
    one call on the whole batch.
    """
    batch = xs.shape[0]
    if chunk_size is None or chunk_size >= batch:
        return fn(xs)
    n_full = batch // chunk_size
    head = xs[: n_full * chunk_size].reshape(n_full, chunk_size, *xs.shape[1:])
    out = jax.lax.map(fn, head)
    out = jax.tree_util.tree_map(lambda a: a.reshape(n_full * chunk_size, *a.shape[2:]), out)
    if n_full * chunk_size < batch:
        tail = fn(xs[n_full * chunk_size :])
        out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, tail)
    return out
