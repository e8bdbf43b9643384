"""Tests of jaxjac.sharding.

The sharded checks need 8 devices, a flag read when JAX starts, so they run in one subprocess
(``tests/_sharded_checks.py``) and each check is one test here. The multi-host test starts two
processes on 127.0.0.1 that join with ``jax.distributed`` (gloo collectives on CPU). The rest
runs in this process, on its single device.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from jaxjac import sharding as sh
from tests import _sharded_checks
from tests.helpers import assert_close, exact_rtol

ROOT = Path(__file__).resolve().parent.parent
F64 = jnp.float64


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXJAC_", "XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def check_results(tmp_path_factory) -> dict[str, str | None]:
    out = tmp_path_factory.mktemp("sharded") / "results.json"
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, "-m", "tests._sharded_checks", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(_sharded_checks.CHECKS))
def test_on_eight_devices(check_results, name):
    assert name in check_results, f"{name} did not run"
    assert check_results[name] is None, check_results[name]


def test_every_helper_is_checked_divisible_and_not_chunked_and_not():
    names = set(_sharded_checks.CHECKS)
    batches, n = _sharded_checks.BATCHES, _sharded_checks.N_DEVICES
    for case in _sharded_checks.CASES:
        for batch in batches:
            for chunk in _sharded_checks.CHUNKS:
                assert f"map-{case}-B{batch}-chunk{chunk}" in names
    assert any(b % n == 0 for b in batches) and any(b % n for b in batches)
    chunks = [c for c in _sharded_checks.CHUNKS if c is not None]
    assert chunks and all(min(batches) // n > c for c in chunks)  # chunking really happens


# --- two processes on loopback -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback(tmp_path):
    n_rows, chunk = 9, 2  # host slices of 4 and 5 rows: a partial and an empty chunk
    data = np.asarray(jax.random.normal(jax.random.key(3), (n_rows, 3), F64))
    np.save(tmp_path / "data.npy", data)
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAXJAC_COORDINATOR=f"127.0.0.1:{port}",
            JAXJAC_NUM_PROCESSES="2",
            JAXJAC_PROCESS_ID=str(pid),
        )
        cmd = [sys.executable, "-m", "tests._sharded_multihost"]
        cmd += [str(tmp_path / "data.npy"), str(tmp_path / f"out{pid}.json"), str(chunk)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]

    params = jj.mlp_init(jax.random.key(0), [3, 6, 2], dtype=F64)
    jac = np.asarray(jj.batch_input_jacobian(jj.mlp_apply, params, data))
    slices = [sh.host_slice(n_rows, i, 2) for i in range(2)]
    order = [  # the global batch holds host 0's chunk, then host 1's, step after step
        row
        for start in range(0, 5, chunk)
        for s in slices
        for row in range(s.start, s.stop)[start : start + chunk]
    ]
    for pid in range(2):
        got = json.loads((tmp_path / f"out{pid}.json").read_text())
        assert got["process_index"] == pid and got["process_count"] == 2
        assert got["device_count"] == 4 and got["local_device_count"] == 2
        assert got["rows_read"] == slices[pid].stop - slices[pid].start
        assert got["count"] == n_rows
        rtol = exact_rtol(F64)
        assert_close(np.array(got["abs"]), np.abs(jac).sum(0), rtol, what="Σ|J|")
        assert_close(np.array(got["sq"]), np.square(jac).sum(0), rtol, what="ΣJ²")
        norms = np.linalg.norm(jac.reshape(n_rows, -1), axis=1)[order]
        assert_close(np.array(got["norms"]), norms, rtol, what="norms")


# --- in this process ---------------------------------------------------------------------------


def test_single_device_mesh_matches_helper():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
    got = sh.sharded(jj.batch_input_jacobian, 1)(jj.mlp_apply, params, xs, chunk_size=2)
    assert_close(got, jj.batch_input_jacobian(jj.mlp_apply, params, xs), exact_rtol(F64))
    mom = sh.sharded(jj.batch_input_jacobian, reduce="moments")(jj.mlp_apply, params, xs)
    assert int(mom.count) == 5
    assert_close(mom.mean, jnp.mean(got, axis=0), exact_rtol(F64))


@pytest.mark.parametrize(("n_rows", "count"), [(0, 1), (1, 3), (9, 2), (10, 4), (1000, 7)])
def test_host_slice_tiles_the_rows(n_rows, count):
    slices = [sh.host_slice(n_rows, i, count) for i in range(count)]
    rows = [r for s in slices for r in range(n_rows)[s]]
    assert rows == list(range(n_rows))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) == -(-n_rows // count)


def test_host_slice_defaults_to_this_process():
    assert sh.host_slice(7) == slice(0, 7)
    with pytest.raises(ValueError, match="index"):
        sh.host_slice(7, 2, 2)


def test_initialize_from_env(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert sh.initialize_from_env({}) is False
    env = {
        "JAXJAC_COORDINATOR": "10.0.0.1:1234",
        "JAXJAC_NUM_PROCESSES": "4",
        "JAXJAC_PROCESS_ID": "3",
    }
    assert sh.initialize_from_env(env, initialization_timeout=7) is True
    assert calls == [
        {
            "coordinator_address": "10.0.0.1:1234",
            "num_processes": 4,
            "process_id": 3,
            "initialization_timeout": 7,
        }
    ]
    with pytest.raises(ValueError, match="missing"):
        sh.initialize_from_env({"JAXJAC_COORDINATOR": "h:1"})
    with pytest.raises(ValueError, match="process id"):
        sh.initialize_from_env({**env, "JAXJAC_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="integers"):
        sh.initialize_from_env({**env, "JAXJAC_NUM_PROCESSES": "two"})
    assert len(calls) == 1


def test_global_batch_pads_and_masks_on_one_host():
    rows = np.arange(6.0).reshape(3, 2)
    xs, mask = sh.global_batch(rows, 5)
    np.testing.assert_array_equal(np.asarray(xs), np.concatenate([rows, rows[[-1, -1]]]))
    np.testing.assert_array_equal(np.asarray(mask), [True, True, True, False, False])
    xs, mask = sh.global_batch(rows[:0], 2)
    assert xs.shape == (2, 2) and not np.asarray(mask).any()
    with pytest.raises(ValueError, match="exceed"):
        sh.global_batch(rows, 2)


def test_pad_rows_copies_the_last_row():
    a = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(sh._pad_rows(a, 2, copy_last=True)[3:], [[4.0, 5.0]] * 2)
    np.testing.assert_array_equal(
        sh._pad_rows(jnp.asarray(a), 1, copy_last=False)[3:], [[0.0, 0.0]]
    )
    assert sh._pad_rows(a, 0, copy_last=True) is a


def test_make_mesh_options():
    assert sh.make_mesh().shape == {"batch": jax.device_count()}
    assert sh.make_mesh(1, axis_name="rows").axis_names == ("rows",)
    assert sh.make_mesh(jax.devices()).devices.size == jax.device_count()
    mesh = sh.make_mesh()
    assert sh.make_mesh(mesh) is mesh
    with pytest.raises(ValueError, match="available"):
        sh.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="axes"):
        sh.make_mesh(mesh, axis_name="other")
    with pytest.raises(ValueError, match="empty"):
        sh.make_mesh([])


def test_sharded_rejects_bad_arguments():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    xs = jnp.ones((4, 3), F64)
    with pytest.raises(ValueError, match="reduce"):
        sh.sharded(jj.batch_input_jacobian, reduce="max")
    with pytest.raises(ValueError, match="chunk_size"):
        sh.sharded(jj.batch_input_jacobian, chunk_size=0)
    with pytest.raises(ValueError, match="batch_arg"):
        sh.sharded(lambda params, rows: rows)
    with pytest.raises(ValueError, match="non-empty"):
        sh.sharded(jj.batch_input_jacobian)(jj.mlp_apply, params, xs[:0])
    with pytest.raises(ValueError, match="mask"):
        sh.sharded(jj.batch_input_jacobian, reduce="sum")(
            jj.mlp_apply, params, xs, mask=np.ones(3, bool)
        )
    with pytest.raises(TypeError, match="hashable"):
        sh.sharded(jj.batch_input_jacobian)(jj.mlp_apply, params, xs, mode=["rev"])
    rows = sh.sharded(lambda scale, rows: rows * scale, batch_arg="rows")(jnp.asarray(2.0), xs)
    np.testing.assert_array_equal(np.asarray(rows), 2 * np.asarray(xs))


def test_statistics_helpers_match_the_jacobian():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 2], dtype=F64)
    xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
    jac = np.asarray(jj.batch_input_jacobian(jj.mlp_apply, params, xs))
    rtol = exact_rtol(F64)
    assert_close(
        jj.batch_jacobian_gram(jj.mlp_apply, params, xs), np.einsum("bki,bkj->bij", jac, jac), rtol
    )
    assert_close(
        jj.batch_jacobian_abs_sq(jj.mlp_apply, params, xs, chunk_size=2),
        (np.abs(jac), np.square(jac)),
        rtol,
    )
    assert_close(
        jj.batch_jacobian_norm(jj.mlp_apply, params, xs),
        np.linalg.norm(jac.reshape(5, -1), axis=1),
        rtol,
    )


def test_sharded_accepts_a_partial_with_bound_params():
    params = jj.mlp_init(jax.random.key(0), [3, 4, 3], dtype=F64)
    f = functools.partial(jj.mlp_apply, params)
    xs = jax.random.normal(jax.random.key(1), (4, 3), F64)
    got = sh.sharded(jj.batch_log_abs_det_jacobian)(f, xs)
    assert_close(got, jj.batch_log_abs_det_jacobian(f, xs), exact_rtol(F64))


def test_reduce_rows_inside_shard_map_leaves_masked_rows_out():
    mesh = sh.make_mesh(1)
    values = np.arange(12.0).reshape(6, 2)
    values[2] = np.nan  # masked out: must not leak into the sums
    mask = np.array([True, True, False, True, False, True])

    def local(v, m):
        return sh.reduce_rows(v, m, "sum", "batch"), sh.reduce_rows({"v": v}, m, "moments", "batch")

    rows = jax.sharding.PartitionSpec("batch")
    total, mom = jax.shard_map(
        local, mesh=mesh, in_specs=(rows, rows), out_specs=jax.sharding.PartitionSpec()
    )(jnp.asarray(values), jnp.asarray(mask))
    kept = values[mask]
    assert int(total.count) == int(mom.count) == 4
    assert_close(total.total, kept.sum(0), exact_rtol(F64))
    assert_close(mom.mean["v"], kept.mean(0), exact_rtol(F64))
    assert_close(mom.m2["v"], np.square(kept - kept.mean(0)).sum(0), exact_rtol(F64))
    with pytest.raises(ValueError, match="kind"):
        sh.reduce_rows(values, mask, "max", "batch")
