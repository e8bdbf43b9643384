"""The fused CPU kernel of the Hessian's layer sum against independent routes.

Oracles: the layer sum written out in NumPy float64 (no JAX, no kernel), XLA's own contraction
(``_mlp_cpu.contract``, the route the kernel replaced), and the whole closed-form Hessian
without the kernel and by ``jax.hessian``. Shapes are chosen to hit every edge of the kernel's
tiling: inputs not a multiple of 4 (row panels), 8 and 16 (vector lanes in float64 and float32)
or 32 (column groups), units past one 512-unit panel, one output, one example. Every build of
the kernel this CPU runs (the baseline and the wider x86-64 levels) is checked on its own, and
the choice between them with the wide ones reported missing.
"""

import ctypes
import functools
import json
import os
import platform
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxjac as jj
from jaxjac import _hessian_kernel, _mlp_cpu
from tests.helpers import assert_close, exact_rtol

F32, F64 = jnp.float32, jnp.float64


def _operands(seed, n_in, widths, n_out, batch, dtype):
    rng = np.random.default_rng(seed)
    gs = [rng.standard_normal((h, batch, n_in)) for h in widths]
    cs = [rng.standard_normal((batch, n_out, h)) for h in widths]
    packed = rng.standard_normal((batch, n_out, n_in * (n_in + 1) // 2))
    return [jnp.asarray(a, dtype) for a in gs], [jnp.asarray(a, dtype) for a in cs], packed


def _numpy_layer_sum(gs, cs, packed):
    """``base + Σ_l Σ_i c[b,k,i] g[i,b,:] g[i,b,:]ᵀ`` in float64, one example at a time."""
    gs = [np.asarray(g, np.float64) for g in gs]
    cs = [np.asarray(c, np.float64) for c in cs]
    batch, n_out, _ = packed.shape
    n_in = gs[0].shape[-1]
    iu, ju = np.triu_indices(n_in)
    out = np.zeros((batch, n_out, n_in, n_in))
    for b in range(batch):
        for k in range(n_out):
            base = np.zeros((n_in, n_in))
            base[iu, ju] = packed[b, k]
            base[ju, iu] = packed[b, k]
            out[b, k] = base + sum(
                (g[:, b].T * c[b, k]) @ g[:, b] for g, c in zip(gs, cs, strict=True)
            )
    return out


def _fused(gs, cs, packed):
    return jax.jit(_hessian_kernel.layer_sum)(gs, cs, packed)


def _lowered_text(gs, cs, packed):
    return jax.jit(_hessian_kernel.layer_sum).lower(gs, cs, packed).as_text()


def _scale(gs, cs, packed):
    # Entries are sums of Σ h products of order one: errors relative to the largest entry.
    return float(np.max(np.abs(_numpy_layer_sum(gs, cs, packed))))


def test_the_kernel_is_built_and_called():
    # pip install compiles it (setup.py); without it the Hessian silently takes XLA's path.
    assert _hessian_kernel.available(), "the fused kernel did not build: is g++ installed?"
    gs, cs, packed = _operands(0, 5, [7], 2, 3, F64)
    assert "jaxjac_hessian_layer_sum" in _lowered_text(gs, cs, jnp.asarray(packed, F64))


def test_the_environment_can_switch_it_off():
    # For comparisons, and for a build copied to a CPU without the instructions it was built for.
    code = (
        "import jax, jax.numpy as jnp, jaxjac as jj\n"
        "from jaxjac import _hessian_kernel\n"
        "p = jj.mlp_init(jax.random.key(0), [3, 4, 4, 2]); x = jnp.ones((2, 3))\n"
        "f = jj.mlp_function('tansig')\n"
        "text = jax.jit(lambda p, x: jj.batch_input_hessian(f, p, x)).lower(p, x).as_text()\n"
        "print(_hessian_kernel.available(), 'jaxjac_hessian_layer_sum' in text)\n"
    )
    env = {**os.environ, "JAXJAC_FUSED_HESSIAN": "0"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False"]


SHAPES = [
    # (n_in, widths, n_out, batch)
    (1, [3], 1, 1),
    (2, [5, 4], 2, 2),
    (3, [1], 3, 1),
    (5, [7, 3], 2, 3),
    (8, [9], 1, 2),
    (16, [20, 11], 2, 2),
    (17, [30], 3, 2),
    (31, [40, 9], 1, 3),
    (32, [64], 2, 2),
    (33, [600, 7], 2, 3),  # 600 units: two panels of the first layer
    (47, [100], 1, 2),
    (48, [33, 33], 2, 1),
    (64, [70], 1, 2),
    (65, [513], 2, 1),  # one unit past a panel
    (130, [50, 20], 2, 1),
]


@pytest.mark.parametrize(("n_in", "widths", "n_out", "batch"), SHAPES)
def test_matches_numpy_float64(n_in, widths, n_out, batch):
    gs, cs, packed = _operands(n_in, n_in, widths, n_out, batch, F64)
    want = _numpy_layer_sum(gs, cs, packed)
    got = _fused(gs, cs, jnp.asarray(packed, F64))
    assert got.shape == (batch, n_out, n_in, n_in) and got.dtype == F64
    assert_close(got, want, exact_rtol(F64), what="kernel vs NumPy")
    # Symmetric exactly: both halves are written from the same accumulator.
    np.testing.assert_array_equal(np.asarray(got), np.swapaxes(np.asarray(got), -1, -2))


@pytest.mark.parametrize(("n_in", "widths", "n_out", "batch"), SHAPES)
def test_float32_within_dtype_tolerance(n_in, widths, n_out, batch):
    gs, cs, packed = _operands(n_in + 1, n_in, widths, n_out, batch, F32)
    want = _numpy_layer_sum(gs, cs, packed)  # float64 sums of the same float32 operands
    got = _fused(gs, cs, jnp.asarray(packed, F32))
    assert got.dtype == F32
    assert_close(got, want, exact_rtol(F32), what="float32 kernel vs float64 NumPy")


@pytest.mark.parametrize(("n_in", "widths"), [(32, [256, 256]), (128, [512, 512, 512])])
def test_matches_xlas_contraction_at_the_benchmark_shapes(n_in, widths):
    # The small and wide nets' deep layers, as closed_form's XLA route lays them out.
    gs, cs, packed = _operands(7, n_in, widths, 3, 2, F64)
    packed = jnp.asarray(packed, F64)
    zts = [jnp.transpose(g, (1, 2, 0)) for g in gs]  # (B, n_in, h)
    want = _mlp_cpu.contract(zts, cs, packed[:, :, _hessian_kernel.packed_index(n_in)])
    assert_close(_fused(gs, cs, packed), want, exact_rtol(F64), what="kernel vs _contract")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n_in=st.integers(1, 70),
    widths=st.lists(st.integers(1, 80), min_size=1, max_size=3),
    n_out=st.integers(1, 4),
    batch=st.integers(1, 4),
    dtype=st.sampled_from([F32, F64]),
)
def test_random_shapes_property(n_in, widths, n_out, batch, dtype):
    gs, cs, packed = _operands(n_in * 7 + batch, n_in, widths, n_out, batch, dtype)
    got = _fused(gs, cs, jnp.asarray(packed, dtype))
    assert_close(got, _numpy_layer_sum(gs, cs, packed), exact_rtol(dtype))


def test_non_finite_values_propagate_like_the_reference():
    # A NaN or inf in one unit of one example reaches exactly the entries that unit touches.
    gs, cs, packed = _operands(3, 9, [12, 5], 2, 3, F64)
    gs[0] = gs[0].at[4, 1, 2].set(jnp.nan)
    cs[1] = cs[1].at[2, 0, 3].set(jnp.inf)
    packed = jnp.asarray(packed, F64)
    got = np.asarray(_fused(gs, cs, packed))
    want = np.asarray(_hessian_kernel.reference_layer_sum(gs, cs, packed))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[1]).any() and np.isinf(got[2]).any() and np.isfinite(got[0]).all()
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], exact_rtol(F64))


def test_derivatives_go_through_the_reference():
    # The custom call has no derivative of its own: its JVP is the einsum reference's, so a
    # loss of the Hessian is differentiable (reverse and forward) and agrees with the reference.
    gs, cs, packed = _operands(5, 6, [9, 4], 2, 2, F64)
    packed = jnp.asarray(packed, F64)

    def loss(fn, gs, cs, packed):
        hess = fn(gs, cs, packed)
        return jnp.sum(jnp.sin(hess))

    fused = functools.partial(loss, _hessian_kernel.layer_sum)
    ref = functools.partial(loss, _hessian_kernel.reference_layer_sum)
    grads = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(gs, cs, packed)
    assert_close(grads, jax.grad(ref, argnums=(0, 1, 2))(gs, cs, packed), exact_rtol(F64))
    tangents = jax.tree_util.tree_map(jnp.ones_like, (gs, cs, packed))
    _, fwd = jax.jvp(fused, (gs, cs, packed), tangents)
    _, fwd_ref = jax.jvp(ref, (gs, cs, packed), tangents)
    assert_close(fwd, fwd_ref, exact_rtol(F64))


def test_vmap_over_an_outer_axis():
    gs, cs, packed = _operands(9, 7, [11], 2, 2, F64)
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), (gs, cs, packed))
    got = jax.jit(jax.vmap(_hessian_kernel.layer_sum))(*stacked)
    for i in range(2):
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
        assert_close(got[i], _numpy_layer_sum(*[jax.device_get(a) for a in one]), 1e-12)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_other_dtypes_take_the_reference(dtype):
    gs, cs, packed = _operands(2, 4, [6], 1, 2, dtype)
    packed = jnp.asarray(packed, dtype)
    assert "jaxjac_hessian_layer_sum" not in _lowered_text(gs, cs, packed)
    got = _hessian_kernel.layer_sum(gs, cs, packed)
    assert got.dtype == dtype
    want = _numpy_layer_sum(gs, cs, np.asarray(packed, np.float64))
    assert_close(np.asarray(got, np.float64), want, 20 * float(jnp.finfo(dtype).eps))


def test_shape_mismatches_are_refused():
    gs, cs, packed = _operands(1, 4, [6, 3], 2, 2, F64)
    packed = jnp.asarray(packed, F64)
    with pytest.raises(ValueError, match=r"expected G_l \(h, 2, 4\) and c_l \(2, 2, h\)"):
        _hessian_kernel.layer_sum(gs, [cs[0], cs[0]], packed)
    with pytest.raises(ValueError, match="as many G_l as c_l"):
        _hessian_kernel.layer_sum(gs, cs[:1], packed)
    with pytest.raises(ValueError, match=r"n_in \(n_in \+ 1\) / 2 = 10 entries, got 9"):
        _hessian_kernel.layer_sum(gs, cs, packed[:, :, :9])


# --- the builds of the kernel and the choice between them ---------------------------------

X86_64 = platform.machine().lower() in ("x86_64", "amd64")
BASELINE = _hessian_kernel._VARIANTS[-1]
V4, V3 = (v for v in _hessian_kernel._VARIANTS if v.level is not None)  # widest first
# What each x86-64 level adds that the kernel's builds may use, as Linux names the CPU's flags.
LEVEL_FLAGS = {
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe", "abm"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def _expected_builds():
    # setup.py: the baseline everywhere, the wider levels on x86-64 (GCC 12 and later).
    return [V4, V3, BASELINE] if X86_64 else [BASELINE]


def _runs_here(variant):
    return variant.level is None or _hessian_kernel._cpu_supports(variant.level)


@pytest.fixture
def fresh_choice():
    """The kernel's build chosen anew inside the test, and again (unpatched) after it."""
    _hessian_kernel._chosen.cache_clear()
    jax.clear_caches()  # traces that named the previous build's target
    yield
    _hessian_kernel._chosen.cache_clear()
    jax.clear_caches()


def test_the_builds_for_this_architecture_are_installed():
    missing = [v.module for v in _expected_builds() if not _hessian_kernel._installed(v)]
    assert not missing, f"setup.py did not build {missing}: is g++ 12 or later installed?"


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux lists the CPU's flags")
def test_the_cpu_probe_agrees_with_the_cpus_flags():
    # An independent oracle for __builtin_cpu_supports: the flags the Linux kernel reports.
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    for level, needs in LEVEL_FLAGS.items():
        want = (
            X86_64
            and needs <= flags
            and (level != "x86-64-v4" or LEVEL_FLAGS["x86-64-v3"] <= flags)
        )
        assert _hessian_kernel._cpu_supports(level) == want, (level, sorted(needs - flags))
    assert not _hessian_kernel._cpu_supports("x86-64-v9")


def test_the_widest_build_the_cpu_runs_is_chosen():
    want = next(v for v in _expected_builds() if _runs_here(v))
    assert _hessian_kernel._chosen() == want
    gs, cs, packed = _operands(0, 5, [7], 2, 3, F64)
    text = _lowered_text(gs, cs, jnp.asarray(packed, F64))
    assert f'"{want.target}"' in text or f"@{want.target}" in text, text


def _variant_layer_sum(variant, gs, cs, packed):
    target = _hessian_kernel._register(variant)
    return jax.jit(functools.partial(_hessian_kernel._fused, target=target))(gs, cs, packed)


def test_builds_the_cpu_cannot_run_are_never_chosen():
    chosen = _hessian_kernel._chosen()
    for variant in _expected_builds():
        if not _runs_here(variant):
            assert chosen != variant, variant.module


@pytest.mark.parametrize(
    "variant", [v for v in _expected_builds() if _runs_here(v)], ids=lambda v: v.level or "base"
)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_every_build_the_cpu_runs_matches_the_reference(variant, dtype):
    # Each build has its own vector width (16, 32 or 64 bytes): every edge of the tiling again.
    for n_in, widths, n_out, batch in SHAPES:
        gs, cs, packed = _operands(n_in, n_in, widths, n_out, batch, dtype)
        got = _variant_layer_sum(variant, gs, cs, jnp.asarray(packed, dtype))
        assert got.dtype == dtype
        if dtype == F64:
            want = _hessian_kernel.reference_layer_sum(gs, cs, jnp.asarray(packed, F64))
            assert_close(got, want, 1e-12, what=f"{variant.module} vs the einsum reference")
        else:  # float64 sums of the same float32 operands
            assert_close(got, _numpy_layer_sum(gs, cs, packed), exact_rtol(F32))


@pytest.mark.parametrize("missing", ["the widest", "every wide"])
def test_the_choice_with_wide_builds_reported_missing(monkeypatch, fresh_choice, missing):
    probe = _hessian_kernel._cpu_supports
    if missing == "the widest":  # the widest build the CPU runs is reported unavailable
        widest = next(v for v in _expected_builds() if _runs_here(v))
        monkeypatch.setattr(
            _hessian_kernel, "_cpu_supports", lambda lv: lv != widest.level and probe(lv)
        )
        narrower = [v for v in _expected_builds() if v.level != widest.level and _runs_here(v)]
        want = narrower[0] if narrower else BASELINE
    else:
        monkeypatch.setattr(_hessian_kernel, "_cpu_supports", lambda level: False)
        want = BASELINE
    assert _hessian_kernel.available()  # a warning would fail the test (filterwarnings = error)
    assert _hessian_kernel._chosen() == want
    gs, cs, packed = _operands(11, 19, [40, 9], 3, 2, F64)
    packed = jnp.asarray(packed, F64)
    text = _lowered_text(gs, cs, packed)
    assert f"@{want.target}(" in text or f'"{want.target}"' in text, text
    assert not any(v.target in text for v in (V3, V4) if v != want), text
    want_sum = _hessian_kernel.reference_layer_sum(gs, cs, packed)
    assert_close(_fused(gs, cs, packed), want_sum, 1e-12, what=f"{want.module} chosen")


def _assert_the_reference_is_taken():
    gs, cs, packed = _operands(12, 6, [8], 2, 2, F64)
    packed = jnp.asarray(packed, F64)
    assert "jaxjac_hessian_layer_sum" not in _lowered_text(gs, cs, packed)
    want = _hessian_kernel.reference_layer_sum(gs, cs, packed)
    np.testing.assert_array_equal(np.asarray(_fused(gs, cs, packed)), np.asarray(want))


def _assert_warns_once(match):
    with pytest.warns(_hessian_kernel.FusedKernelWarning, match=match) as record:
        assert not _hessian_kernel.available()
    assert len(record) == 1
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert not _hessian_kernel.available()
        _assert_the_reference_is_taken()
    assert not again, [str(w.message) for w in again]


@pytest.mark.skipif(not X86_64, reason="the wide builds are x86-64's")
def test_no_build_the_cpu_runs_warns_once_and_takes_the_reference(monkeypatch, fresh_choice):
    # An install with only wide builds (the baseline's compile failed) on a CPU without them.
    monkeypatch.setattr(_hessian_kernel, "_VARIANTS", (V4, V3))
    monkeypatch.setattr(_hessian_kernel, "_cpu_supports", lambda level: False)
    _assert_warns_once(r"needs an x86-64-v4 CPU.*needs an x86-64-v3 CPU")


def test_no_build_that_loads_warns_once_and_takes_the_reference(monkeypatch, fresh_choice):
    def refuse(variant):
        raise OSError(f"cannot open {variant.module}")

    monkeypatch.setattr(_hessian_kernel, "_library", refuse)
    _assert_warns_once(r"_hessian_contract did not load: cannot open")


def test_no_build_installed_says_so_once_and_takes_the_reference(monkeypatch, fresh_choice):
    # No compiler at install time (an sdist built without one): XLA's route, said once.
    monkeypatch.setattr(_hessian_kernel, "_installed", lambda variant: False)
    _assert_warns_once(r"kernel is not installed \(this jaxjac was built without a C\+\+.*XLA's")


# --- scratch: a cap, and the path without it --------------------------------------------------

SCRATCH_CODE = """
import ctypes, json
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxjac import _hessian_kernel as hk
rng = np.random.default_rng(0)
out = {"limit": hk._scratch_limit(), "cost": hk.cost(33, 2, [600, 7], 3, 8)[0], "err": {}}
for dtype in ("float64", "float32"):
    gs = [jnp.asarray(rng.standard_normal((h, 3, 33)), dtype) for h in (600, 7)]
    cs = [jnp.asarray(rng.standard_normal((3, 2, h)), dtype) for h in (600, 7)]
    packed = jnp.asarray(rng.standard_normal((3, 2, 33 * 34 // 2)), dtype)
    got = np.asarray(jax.jit(hk.layer_sum)(gs, cs, packed), np.float64)
    up = lambda a: jnp.asarray(a, jnp.float64)
    want = np.asarray(hk.reference_layer_sum([up(g) for g in gs], [up(c) for c in cs], up(packed)))
    out["err"][dtype] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    out[dtype + " symmetric"] = bool((got == np.swapaxes(got, -1, -2)).all())
library = hk._library(hk._chosen())
library.JaxjacDirectItems.restype = ctypes.c_int64
out["direct"] = library.JaxjacDirectItems()
print(json.dumps(out))
"""


def _scratch_run(limit):
    env = {**os.environ, "JAXJAC_KERNEL_SCRATCH_BYTES": limit}
    code = [sys.executable, "-c", SCRATCH_CODE]
    run = subprocess.run(code, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_a_scratch_cap_below_the_kernels_buffers_takes_the_path_without_scratch():
    capped = _scratch_run("1024")
    assert capped["limit"] == 1024 and capped["cost"] == 0
    assert capped["direct"] > 0, "the cap did not reach the kernel"
    assert capped["err"]["float64"] <= 1e-12 and capped["err"]["float32"] <= exact_rtol(F32)
    assert capped["float64 symmetric"] and capped["float32 symmetric"]


def _direct_items():
    counter = _hessian_kernel._library(_hessian_kernel._chosen()).JaxjacDirectItems
    counter.restype = ctypes.c_int64
    return counter()


@pytest.fixture
def scratch_cap(monkeypatch):
    """Sets ``JAXJAC_KERNEL_SCRATCH_BYTES`` anew (it is read once) for the traces that follow."""

    def set_cap(limit):
        monkeypatch.setenv("JAXJAC_KERNEL_SCRATCH_BYTES", str(limit))
        _hessian_kernel._scratch_limit.cache_clear()
        jax.clear_caches()  # the cap is an attribute of the traced call

    yield set_cap
    monkeypatch.undo()
    _hessian_kernel._scratch_limit.cache_clear()
    jax.clear_caches()


@pytest.mark.parametrize("dtype", [F64, F32])
def test_the_scratch_cap_is_exactly_the_scratch_cost_states(scratch_cap, dtype):
    # cost() and the kernel must agree on a worker's buffers: the planner budgets by the one, the
    # kernel chooses its path by the other.
    n_in, widths, n_out, batch = 33, [600, 7], 2, 3
    gs, cs, packed = _operands(4, n_in, widths, n_out, batch, dtype)
    packed = jnp.asarray(packed, dtype)
    scratch, _ = _hessian_kernel.cost(n_in, n_out, widths, batch, jnp.dtype(dtype).itemsize)
    worker = scratch // (os.cpu_count() or 1)
    want = _numpy_layer_sum(gs, cs, np.asarray(packed, np.float64))
    for limit, direct in [(worker, False), (worker - 1, True)]:
        scratch_cap(limit)
        assert _hessian_kernel.cost(n_in, n_out, widths, batch, jnp.dtype(dtype).itemsize)[0] == (
            0 if direct else scratch
        )
        before = _direct_items()
        got = _fused(gs, cs, packed)
        assert (_direct_items() > before) == direct, (limit, worker)
        assert_close(got, want, exact_rtol(dtype), what=f"scratch cap {limit}")


def test_a_malformed_scratch_cap_is_refused(monkeypatch):
    monkeypatch.setenv("JAXJAC_KERNEL_SCRATCH_BYTES", "1e6")
    _hessian_kernel._scratch_limit.cache_clear()
    try:
        with pytest.raises(ValueError, match="a number of bytes, got '1e6'"):
            _hessian_kernel._scratch_limit()
    finally:
        monkeypatch.undo()
        _hessian_kernel._scratch_limit.cache_clear()
    assert _hessian_kernel._scratch_limit() == -1


# --- the whole Hessian, with and without the kernel --------------------------------------


def _net(sizes, dtype, batch=5, seed=0):
    params = jj.mlp_init(jax.random.key(seed), sizes, dtype=dtype)
    xs = jax.random.normal(jax.random.key(seed + 1), (batch, sizes[0]), dtype)
    return params, xs


HESSIAN_NETS = [
    [6, 9, 9, 3],
    [33, 20, 600, 2],  # a layer of two panels, inputs past one column group
    [17, 40, 30, 25, 4],
    [32, 256, 256, 256, 8],  # the small benchmark net
]


@pytest.mark.parametrize("sizes", HESSIAN_NETS)
def test_fused_hessian_matches_xla_route_and_autodiff(sizes):
    params, xs = _net(sizes, F64)
    act = jj.get_activation("tansig")
    fused = jax.jit(lambda p, x: _mlp_cpu.hessian(p, x, act, fused=True))(params, xs)
    xla = jax.jit(lambda p, x: _mlp_cpu.hessian(p, x, act, fused=False))(params, xs)
    net = functools.partial(jj.mlp_apply, params, activation="tansig")
    scale = float(jnp.max(jnp.abs(xla)))
    assert_close(fused, xla, exact_rtol(F64), what="fused vs XLA route")
    assert_close(fused, jax.vmap(jax.hessian(net))(xs), exact_rtol(F64), scale=scale)


@pytest.mark.parametrize("sizes", [[33, 20, 600, 2], [32, 256, 256, 256, 8]])
def test_fused_hessian_float32(sizes):
    params, xs = _net(sizes, F32)
    params64 = jax.tree_util.tree_map(lambda a: a.astype(F64), params)
    act = jj.get_activation("tansig")
    got = jax.jit(lambda p, x: _mlp_cpu.hessian(p, x, act, fused=True))(params, xs)
    want = _mlp_cpu.hessian(params64, xs.astype(F64), act, fused=False)
    assert got.dtype == F32
    assert_close(got, want, exact_rtol(F32))


def test_fused_hessian_into_a_donated_buffer_overwrites_everything():
    # out= buffers are never read: a NaN-filled one must give the fresh result bit for bit.
    params, xs = _net([17, 40, 30, 25, 4], F64, batch=37)
    act = jj.get_activation("tansig")
    run = jax.jit(lambda p, x, o: _mlp_cpu.hessian(p, x, act, out=o, fused=True))
    fresh = _mlp_cpu.hessian(params, xs, act, fused=True)
    buf = jnp.full(fresh.shape, jnp.nan, F64)
    np.testing.assert_array_equal(np.asarray(run(params, xs, buf)), np.asarray(fresh))


def test_gradient_of_a_hessian_loss_with_and_without_the_kernel():
    # Physics-informed losses differentiate the Hessian with respect to the weights.
    params, xs = _net([5, 12, 12, 2], F64)
    act = jj.get_activation("tansig")

    def loss(p, fused):
        hess = _mlp_cpu.hessian(p, xs, act, fused=fused)
        return jnp.sum(jnp.trace(hess, axis1=-2, axis2=-1) ** 2)

    with_kernel = jax.jit(jax.grad(functools.partial(loss, fused=True)))(params)
    without = jax.grad(functools.partial(loss, fused=False))(params)
    assert_close(with_kernel, without, exact_rtol(F64))


def test_the_public_helpers_use_the_kernel_on_the_cpu():
    params, xs = _net([6, 9, 9, 3], F64)
    f = jj.mlp_function("tansig")
    lowered = jax.jit(lambda p, x: jj.batch_input_hessian(f, p, x)).lower(params, xs)
    assert "jaxjac_hessian_layer_sum" in lowered.as_text()
    # The readable reference never calls it: it is the cross-check.
    reference = jax.jit(lambda p, x: jj.closed_form.mlp_hessian(p, x)).lower(params, xs)
    assert "jaxjac_hessian_layer_sum" not in reference.as_text()
    text = str(jj.explain("input_hessian", jj.mlp_function("tansig"), params, xs))
    assert "fused CPU kernel" in text
