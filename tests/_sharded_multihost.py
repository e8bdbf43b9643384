"""One host of a two-process run of jaxjac.sharding on 127.0.0.1, started by test_sharding.py.

The parent sets ``JAXJAC_COORDINATOR`` (``127.0.0.1:PORT``), ``JAXJAC_NUM_PROCESSES=2``,
``JAXJAC_PROCESS_ID`` and two CPU devices per process, and runs
``python -m tests._sharded_multihost DATA.npy OUT.json CHUNK``. This process reads only its own
rows of ``DATA.npy`` (:func:`jaxjac.sharding.host_slice`), streams them in chunks of ``CHUNK``
rows as the launch recipe does, and writes the replicated sums and the gathered per-example
norms it sees, for the parent to compare with a single-process computation.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import jaxjac as jj
from jaxjac import sharding as sh


def main(data_path: str, out_path: str, chunk: int) -> None:
    assert sh.initialize_from_env(initialization_timeout=60)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    params = jj.mlp_init(jax.random.key(0), [3, 6, 2], dtype=jnp.float64)

    data = np.load(data_path, mmap_mode="r")
    n_rows = data.shape[0]
    mine = np.asarray(data[sh.host_slice(n_rows)])  # only this host's rows are read
    mesh = sh.make_mesh()  # every device of both processes
    stats = sh.sharded(jj.batch_jacobian_abs_sq, mesh, reduce="sum")
    norms_of = sh.sharded(jj.batch_jacobian_norm, mesh)

    count, total_abs, total_sq, norms = 0, 0.0, 0.0, []
    per_host = -(-n_rows // jax.process_count())  # the largest slice: same steps on every host
    for start in range(0, per_host, chunk):
        xs, mask = sh.global_batch(mine[start : start + chunk], chunk, mesh)
        out = stats(jj.mlp_apply, params, xs, mask=mask)
        count += int(out.count)
        total_abs = total_abs + np.asarray(out.total[0], np.float64)
        total_sq = total_sq + np.asarray(out.total[1], np.float64)
        gathered = multihost_utils.process_allgather(norms_of(jj.mlp_apply, params, xs), tiled=True)
        keep = multihost_utils.process_allgather(mask, tiled=True)
        norms.append(np.asarray(gathered)[np.asarray(keep)])

    result = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "rows_read": int(mine.shape[0]),
        "count": count,
        "abs": np.asarray(total_abs).tolist(),
        "sq": np.asarray(total_sq).tolist(),
        "norms": np.concatenate(norms).tolist(),
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
