"""Checks of jaxjac.sharding on 8 CPU devices, run in a subprocess by tests/test_sharding.py.

The device count (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) must be set before
JAX starts its backend, so the parent test cannot run these itself. ``CHECKS`` is built at import
(no JAX work) so the parent can parametrize over the names; ``python -m tests._sharded_checks
OUT.json`` runs them all, with x64 and strict promotion set as in conftest.py, and writes
``{name: null | traceback}``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj
from jaxjac import closed_form
from jaxjac import sharding as sh
from tests.helpers import assert_close, exact_rtol

N_DEVICES = 8
BATCHES = (64, 61)  # divisible by the device count, and not: 8 rows per device, so chunks of 3
# make two full chunks and a remainder on each device
CHUNKS = (None, 3)
F64 = jnp.float64
RTOL = exact_rtol(F64)

CHECKS: dict[str, Callable[[], None]] = {}


def check(name: str):
    def register(fn):
        assert name not in CHECKS, name
        CHECKS[name] = fn
        return fn

    return register


def _params(sizes=(3, 6, 2), seed=0):
    return jj.mlp_init(jax.random.key(seed), list(sizes), dtype=F64)


def _xs(batch, n_in=3, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, n_in), F64)


def _cube(x):
    """A flow ``R^3 -> R^3`` singular at 0: ``log|det J| = Σ log(3 x_i²)``."""
    return x**3 + 0.5 * x[::-1] ** 3


def _assert_batch_sharded(tree, batch):
    for leaf in jax.tree_util.tree_leaves(tree):
        assert leaf.shape[0] == batch, leaf.shape
        devices = len(leaf.sharding.device_set)
        if batch % N_DEVICES == 0:
            assert devices == N_DEVICES, devices
            assert leaf.sharding.spec[0] == "batch", leaf.sharding.spec
            assert {s.data.shape[0] for s in leaf.addressable_shards} == {batch // N_DEVICES}
        else:  # documented: an uneven trimmed result comes back replicated
            assert devices == N_DEVICES and leaf.sharding.is_fully_replicated, leaf.sharding


def _assert_replicated(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        assert len(leaf.sharding.device_set) == N_DEVICES, leaf.sharding
        assert leaf.sharding.is_fully_replicated, leaf.sharding


# Each case: (how to call the sharded wrapper, how to call the plain helper); chunk c.
def _case_input_jacobian(c):
    p, net = _params(), jj.mlp_apply
    wrapped = sh.sharded(jj.batch_input_jacobian)
    return (
        lambda xs: wrapped(net, p, xs, mode="rev", chunk_size=c),
        lambda xs: jj.batch_input_jacobian(net, p, xs, mode="rev"),
    )


def _case_input_hessian(c):
    p, net = _params(), jj.mlp_apply
    wrapped = sh.sharded(jj.batch_input_hessian)
    return (
        lambda xs: wrapped(net, p, xs, chunk_size=c),
        lambda xs: jj.batch_input_hessian(net, p, xs),
    )


def _case_weight_jacobian(c):
    # Per-example: a psum of the weight cotangents over devices would multiply by up to 8.
    p, net = _params(), jj.mlp_apply
    wrapped = sh.sharded(jj.batch_weight_jacobian)
    return (
        lambda xs: wrapped(net, p, xs, chunk_size=c),
        lambda xs: jj.batch_weight_jacobian(net, p, xs),
    )


def _case_laplacian(c):
    f = functools.partial(jj.mlp_apply, _params())
    wrapped = sh.sharded(jj.batch_laplacian)
    return (
        lambda xs: wrapped(f, xs, method="loop", chunk_size=c),
        lambda xs: jj.batch_laplacian(f, xs),
    )


def _case_closed_form_laplacian(c):
    p = _params()
    wrapped = sh.sharded(closed_form.mlp_laplacian, chunk_size=c)  # chunked by the wrapper
    return (
        lambda xs: wrapped(p, xs, "tansig"),
        lambda xs: closed_form.mlp_laplacian(p, xs, "tansig"),
    )


def _case_log_abs_det(c):
    wrapped = sh.sharded(jj.batch_log_abs_det_jacobian)
    return (
        lambda xs: wrapped(_cube, xs, chunk_size=c),
        lambda xs: jj.batch_log_abs_det_jacobian(_cube, xs),
    )


CASES = {
    "input_jacobian": _case_input_jacobian,
    "input_hessian": _case_input_hessian,
    "weight_jacobian": _case_weight_jacobian,
    "laplacian": _case_laplacian,
    "closed_form_laplacian": _case_closed_form_laplacian,
    "log_abs_det": _case_log_abs_det,
}


def _map_check(case, batch, chunk):
    def run():
        sharded_fn, plain_fn = CASES[case](chunk)
        xs = _xs(batch)
        got, want = sharded_fn(xs), plain_fn(xs)
        assert_close(got, want, RTOL, what=case)
        _assert_batch_sharded(got, batch)

    return run


for _case in CASES:
    for _b in BATCHES:
        for _c in CHUNKS:
            check(f"map-{_case}-B{_b}-chunk{_c}")(_map_check(_case, _b, _c))


def _jacobians(p, xs):
    return np.asarray(jj.batch_input_jacobian(jj.mlp_apply, p, xs))


def _reduce_check(batch, chunk):
    def run():
        p, xs = _params(), _xs(batch)
        jac = _jacobians(p, xs)
        absq = sh.sharded(jj.batch_jacobian_abs_sq, reduce="sum", chunk_size=chunk)(
            jj.mlp_apply, p, xs
        )
        _assert_replicated(absq)
        assert int(absq.count) == batch, absq.count
        assert_close(absq.total, (np.abs(jac).sum(0), np.square(jac).sum(0)), RTOL, what="|J|,J²")

        gram = sh.sharded(jj.batch_jacobian_gram, reduce="sum")(
            jj.mlp_apply, p, xs, chunk_size=chunk
        )
        _assert_replicated(gram)
        assert_close(gram.total, np.einsum("bki,bkj->ij", jac, jac), RTOL, what="Σ JᵀJ")

        mom = sh.sharded(jj.batch_input_jacobian, reduce="moments", chunk_size=chunk)(
            jj.mlp_apply, p, xs
        )
        _assert_replicated(mom)
        assert int(mom.count) == batch
        mean = jac.mean(0)
        assert_close(mom.mean, mean, RTOL, what="mean")
        assert_close(mom.m2, np.square(jac - mean).sum(0), RTOL, what="M2")

    return run


for _b in BATCHES:
    for _c in CHUNKS:
        check(f"reduce-B{_b}-chunk{_c}")(_reduce_check(_b, _c))


@check("chunks-within-each-device")
def _():
    seen = []

    def rows_of(scale, xs):
        seen.append(xs.shape[0])  # runs while tracing: the rows of each call
        return xs * scale

    wrapped = sh.sharded(rows_of, chunk_size=3)
    xs = _xs(61)
    assert_close(wrapped(jnp.asarray(2.0, F64), xs), 2 * np.asarray(xs), RTOL)
    # 8 rows a device: chunks of 3 rows only, the last moved back to end at row 8 (rows 5-7).
    assert set(seen) == {3}, seen


@check("reduce-mask-drops-rows-and-nonfinite")
def _():
    p, xs = _params(), np.array(_xs(13))
    xs[4] = np.nan  # a non-finite row: masked out, it must not turn the sums into NaN
    keep = np.ones(13, bool)
    keep[[0, 4, 12]] = False
    jac = _jacobians(p, xs[keep])
    out = sh.sharded(jj.batch_jacobian_abs_sq, reduce="sum")(jj.mlp_apply, p, xs, mask=keep)
    assert int(out.count) == keep.sum()
    assert_close(out.total, (np.abs(jac).sum(0), np.square(jac).sum(0)), RTOL, what="masked")
    mom = sh.sharded(jj.batch_input_jacobian, reduce="moments")(jj.mlp_apply, p, xs, mask=keep)
    assert_close(mom.mean, jac.mean(0), RTOL, what="masked mean")
    assert_close(mom.m2, np.square(jac - jac.mean(0)).sum(0), RTOL, what="masked M2")


@check("reduce-log-abs-det-padding-finite")
def _():
    # 13 rows on 8 devices: 3 padded rows. Zero padding would be -inf (f is singular at 0).
    xs = _xs(13)
    out = sh.sharded(jj.batch_log_abs_det_jacobian, reduce="sum")(_cube, xs)
    want = float(np.sum(np.asarray(jj.batch_log_abs_det_jacobian(_cube, xs))))
    assert np.isfinite(float(out.total)), out.total
    assert_close(out.total, want, RTOL, what="Σ log|det J|")
    padded = sh._pad_rows(np.asarray(xs), 3, copy_last=True)
    np.testing.assert_array_equal(padded[13:], np.repeat(np.asarray(xs)[-1:], 3, axis=0))


@check("moments-empty-mask")
def _():
    p, xs = _params(), _xs(8)
    mom = sh.sharded(jj.batch_input_jacobian, reduce="moments")(
        jj.mlp_apply, p, xs, mask=np.zeros(8, bool)
    )
    assert int(mom.count) == 0
    assert np.all(np.asarray(mom.mean) == 0) and np.all(np.asarray(mom.m2) == 0)


@check("norms-stay-sharded")
def _():
    p, xs = _params(), _xs(16)
    norms = sh.sharded(jj.batch_jacobian_norm)(jj.mlp_apply, p, xs)
    _assert_batch_sharded(norms, 16)
    assert_close(norms, np.linalg.norm(_jacobians(p, xs).reshape(16, -1), axis=1), RTOL)


@check("devices-int-and-list")
def _():
    p, xs = _params(), _xs(12)
    want = jj.batch_input_jacobian(jj.mlp_apply, p, xs)
    for devices, used in (
        (4, set(jax.devices()[:4])),
        (jax.devices()[4:7], set(jax.devices()[4:7])),
    ):
        got = sh.sharded(jj.batch_input_jacobian, devices)(jj.mlp_apply, p, xs)
        assert got.sharding.device_set == used, got.sharding
        assert_close(got, want, RTOL)


def _scaled_sin(p, x):
    return p["scale"] * jnp.sin(x) + p["shift"]


@check("params-with-python-floats")
def _():
    xs = _xs(13)  # not divisible by the device count either
    params = {"scale": 2.0, "shift": 0.5}  # Python floats, as the unsharded helper takes them
    got = sh.sharded(jj.batch_input_jacobian, N_DEVICES)(_scaled_sin, params, xs, chunk_size=1)
    want = jax.vmap(jax.jacfwd(lambda x: 2.0 * jnp.sin(x) + 0.5))(xs)
    assert_close(got, want, RTOL)


@check("default-mesh-is-every-device")
def _():
    assert jax.device_count() == N_DEVICES, jax.devices()
    assert sh.make_mesh().shape == {"batch": N_DEVICES}


TRACES = []


def _counting_net(params, x):
    TRACES.append(1)  # runs only while tracing
    return jj.mlp_apply(params, x)


@check("compiles-once")
def _():
    xs = _xs(16)
    for seed in range(3):  # new params, a new partial and a new wrapper every time
        f = functools.partial(_counting_net, _params(seed=seed))
        sh.sharded(jj.batch_laplacian, N_DEVICES)(f, xs)
        if seed == 0:
            traces = len(TRACES)
    assert len(TRACES) == traces > 0, (len(TRACES), traces)  # traced (compiled) once
    sh.sharded(jj.batch_laplacian, N_DEVICES)(f, _xs(24))  # a new shape compiles anew
    assert len(TRACES) > traces, (len(TRACES), traces)


def _sensitivity_files(tmp, devices):
    import tempfile as _tempfile  # noqa: F401  (the folder comes from the caller)

    from jaxjac.cli import main as cli_main

    out = os.path.join(tmp, f"out{devices}")
    code = cli_main(
        [
            "sensitivity",
            "--params",
            os.path.join(tmp, "model.npz"),
            "--data",
            os.path.join(tmp, "data.npy"),
            "--out",
            out,
            "--chunk-size",
            "13",
            "--hessian",
            "--devices",
            str(devices),
            "--quiet",
        ]
    )
    assert code == 0, code
    with open(os.path.join(out, "sensitivity.csv")) as fh:
        return fh.read()


@check("sensitivity-cli-devices-8-equals-1")
def _():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jj.save_params(os.path.join(tmp, "model.npz"), _params((3, 7, 5, 2), seed=4))
        np.save(os.path.join(tmp, "data.npy"), np.asarray(_xs(41, seed=5)))  # 41 = 3·13 + 2
        one, eight = _sensitivity_files(tmp, 1), _sensitivity_files(tmp, 8)
    rows1 = [line.split(",") for line in one.splitlines()[1:]]
    rows8 = [line.split(",") for line in eight.splitlines()[1:]]
    assert len(rows1) == len(rows8) == 6 and one.splitlines()[0] == eight.splitlines()[0]
    for a, b in zip(rows1, rows8, strict=True):
        assert a[:3] == b[:3], (a, b)
        for x, y in zip(a[3:], b[3:], strict=True):
            if x != y:  # the same sums in another order: rounding only
                assert abs(float(x) - float(y)) <= exact_rtol(np.float64) * abs(float(y)), (a, b)


@check("sensitivity-library-autodiff-route-devices")
def _():
    import importlib

    module = importlib.import_module("jaxjac._pipeline")  # the chunk program of jj.sensitivity
    real, seen = module.chunk_statistics, []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        # The mesh asked for, and the devices the per-row results really live on.
        seen.append((kwargs["mesh"].size, len(out.sigma.sharding.device_set)))
        return out

    params = _params((3, 6, 2), seed=6)
    xs = np.asarray(_xs(30, seed=7))
    module.chunk_statistics = spy
    try:
        one = jj.sensitivity(_cube_net, params, xs, chunk_size=11, hessian=True)
        assert seen and set(seen) == {(1, 1)}, seen
        seen.clear()
        many = jj.sensitivity(_cube_net, params, xs, chunk_size=11, hessian=True, devices=N_DEVICES)
    finally:
        module.chunk_statistics = real
    assert len(seen) == 3 and set(seen) == {(N_DEVICES, N_DEVICES)}, seen  # 3 chunks of 11 rows
    assert one.route == many.route == "autodiff"
    for name in ("mean_abs", "dgsm"):
        a, b = getattr(one, name), getattr(many, name)
        assert np.allclose(a, b, rtol=exact_rtol(np.float64), atol=0), name


def _cube_net(params, x):
    return jj.mlp_apply(params, x, "tanh") ** 3


def main(out_path: str) -> None:
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = None
        except Exception:  # reported to the parent, one test per check
            results[name] = traceback.format_exc()
    with open(out_path, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1])
