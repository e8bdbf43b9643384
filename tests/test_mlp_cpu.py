"""The CPU-tuned closed form (row steps, blocked contraction) against the readable reference.

Every layout the tuned path can take (row blocks, chunked front ends, joined or per-layer
contractions, triangle blocks, Laplacian row steps) is forced with tiny cache budgets and checked
against autodiff and against :mod:`jaxjac.closed_form` in float64. The fused kernel's own tests
are in ``test_hessian_kernel.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxjac as jj
from jaxjac import _mlp_cpu
from tests.helpers import assert_close, exact_rtol
from tests.test_closed_form import REQUIRED_RTOL, _autodiff, _network

F64 = jnp.float64


@pytest.mark.parametrize("n_in", [70, 130])
def test_blocked_symmetric_contraction_for_wide_inputs(n_in):
    # n_in >= 64 splits the upper triangle into row blocks (2 and 4 here, uneven sizes).
    params, xs, _ = _network(n_in, sizes=[n_in, 6, 5, 2], batch=2)
    expected = _autodiff(params, xs, "tansig")["hessian"]
    got = _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)
    assert_close(got, expected, REQUIRED_RTOL)
    assert_close(got, jnp.swapaxes(got, -1, -2), exact_rtol(F64), what="symmetry")


def _assert_every_row_overwritten(params, xs, got):
    # Started from a buffer instead of zeros (out=), every step overwrites its rows of it, the
    # steps moved back over done rows too: no NaN of the buffer may survive.
    into = jnp.full_like(got, jnp.nan)
    act = jj.get_activation("tansig")
    np.testing.assert_array_equal(_mlp_cpu.hessian(params, xs, act, out=into, fused=False), got)


def test_chunked_contraction_matches(monkeypatch):
    # A budget of two examples' joined operands (n_out n_in (7 + 6) float64 numbers each) runs
    # the joined contraction through lax.map in steps of 2 examples; 7 is not a multiple.
    params, xs, _ = _network(3, sizes=[5, 8, 7, 6, 2], batch=7)
    monkeypatch.setattr(_mlp_cpu, "CONTRACTION_BYTES", 2 * 2 * 5 * 13 * 8)
    assert _mlp_cpu.contraction_layout(2, 5, [7, 6], 8) == (True, 2)
    got = _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)
    assert_close(got, _autodiff(params, xs, "tansig")["hessian"], REQUIRED_RTOL)
    _assert_every_row_overwritten(params, xs, got)


@pytest.mark.parametrize("n_in", [5, 130])
def test_layer_by_layer_contraction_matches(monkeypatch, n_in):
    # A budget below one layer's operand contracts each deep layer on its own and accumulates
    # (with 4 triangle blocks for n_in = 130), one example a step.
    params, xs, _ = _network(n_in, sizes=[n_in, 6, 5, 4, 2], batch=3)
    monkeypatch.setattr(_mlp_cpu, "CONTRACTION_BYTES", 1)
    assert _mlp_cpu.contraction_layout(2, n_in, [5, 4], 8) == (False, 1)
    got = _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)
    assert_close(got, _autodiff(params, xs, "tansig")["hessian"], REQUIRED_RTOL)
    _assert_every_row_overwritten(params, xs, got)
    assert_close(got, jnp.swapaxes(got, -1, -2), exact_rtol(F64), what="symmetry")


def test_contraction_layout_joins_layers_while_they_fit():
    # float32, n_out = 16, n_in = 128: 8 KiB a unit, so 1024 units are 8 MiB.
    assert _mlp_cpu.contraction_layout(16, 128, [512, 512], 4) == (True, 1)
    assert _mlp_cpu.contraction_layout(16, 128, [256, 256], 4) == (True, 2)
    assert _mlp_cpu.contraction_layout(16, 128, [512, 512, 512], 4) == (False, 2)
    assert _mlp_cpu.contraction_layout(8, 32, [256, 256], 4) == (True, 16)


def test_hessian_row_steps_match(monkeypatch):
    # A budget of 3 rows' Jacobians runs the whole Hessian pipeline in steps of 3 rows; 7 is not
    # a multiple, so the last step is moved back over rows already done. Every step's front-end
    # GEMMs have 3 n_out = 6 rows, counted as wide enough here.
    params, xs, _ = _network(3, sizes=[5, 8, 7, 6, 2], batch=7)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_STEP_BYTES", 3 * 5 * 8 * 8)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_SKINNY_ROWS", 6)
    assert _mlp_cpu.hessian_layout(params, 7, 8) == (3, False)
    got = _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)
    assert_close(got, _autodiff(params, xs, "tansig")["hessian"], REQUIRED_RTOL)
    _assert_every_row_overwritten(params, xs, got)


@pytest.mark.parametrize("contraction_examples", [2, 5])
def test_hessian_front_end_chunks_match(monkeypatch, contraction_examples):
    # Steps of 1 row give the front end 2 GEMM rows, fewer than 3: it runs in chunks of 3 rows
    # instead (ceil(3 / n_out) = 2 rows for the GEMMs, 3 by the byte budget), balanced over 8
    # rows (3, 3, then 3 moved back by 1), and Jz_l is formed within the contraction's steps of
    # 2 examples (3 is not a multiple: a remainder) or of the whole chunk.
    params, xs, _ = _network(4, sizes=[5, 8, 7, 6, 2], batch=8)
    per_row = 8 * ((3 + 2 * 2) * (8 + 7 + 6) + 2 * 5 * 6 // 2)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_STEP_BYTES", 1)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_SKINNY_ROWS", 3)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_CHUNK_ROWS", 3)
    monkeypatch.setattr(_mlp_cpu, "HESSIAN_CHUNK_BYTES", 3 * per_row)
    budget = contraction_examples * 2 * 5 * (7 + 6) * 8
    monkeypatch.setattr(_mlp_cpu, "CONTRACTION_BYTES", budget)
    assert _mlp_cpu.hessian_layout(params, 8, 8) == (3, True)
    assert _mlp_cpu.contraction_layout(2, 5, [7, 6], 8) == (True, contraction_examples)
    got = _mlp_cpu.hessian(params, xs, jj.get_activation("tansig"), fused=False)
    assert_close(got, _autodiff(params, xs, "tansig")["hessian"], REQUIRED_RTOL)
    _assert_every_row_overwritten(params, xs, got)
    assert_close(got, jnp.swapaxes(got, -1, -2), exact_rtol(F64), what="symmetry")


def test_hessian_layout_chunks_only_skinny_steps():
    # float32, B = 256: the wide net's steps of 4 rows give 64-row front-end GEMMs, so it runs in
    # chunks of 32 rows (512 GEMM rows); the small net's steps of 32 rows (256) stay; a batch
    # within one step runs in one pass either way, the wide net's still forming Jz_l per step.
    wide = [{"W": np.empty((b, a), np.float32)} for a, b in [(128, 512), (512, 512), (512, 16)]]
    small = [{"W": np.empty((b, a), np.float32)} for a, b in [(32, 256), (256, 256), (256, 8)]]
    assert _mlp_cpu.hessian_layout(wide, 256, 4) == (32, True)
    assert _mlp_cpu.hessian_layout(wide, 4, 4) == (None, True)
    assert _mlp_cpu.hessian_layout(small, 32, 4) == (None, False)
    assert _mlp_cpu.hessian_layout(small, 256, 4) == (32, False)
    assert _mlp_cpu.hessian_layout(small, 300, 4) == (30, False)  # 10 even steps


def test_chunked_laplacian_matches(monkeypatch):
    # A tiny cache budget forces the forward Laplacian through chunks of one row.
    params, xs, _ = _network(8, sizes=[5, 8, 7, 2], batch=5)
    monkeypatch.setattr(_mlp_cpu, "LAPLACIAN_BYTES", 1)
    got = _mlp_cpu.laplacian(params, xs, jj.get_activation("tansig"))
    hess = _autodiff(params, xs, "tansig")["hessian"]
    assert_close(got, jnp.trace(hess, axis1=-2, axis2=-1), REQUIRED_RTOL)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_jacobian_row_steps_match_the_reference(monkeypatch, mode):
    # A tiny budget steps the Jacobian through rows of 8 (the minimum); 20 is not a multiple.
    params, xs, _ = _network(5, sizes=[4, 9, 7, 3], batch=20)
    monkeypatch.setattr(_mlp_cpu, "JACOBIAN_STEP_BYTES", 1)
    monkeypatch.setattr(_mlp_cpu, "JACOBIAN_WHOLE_BYTES", 1)
    assert _mlp_cpu.jacobian_step_rows(params, 20, 8, mode) == 8
    act = jj.get_activation("tanh")
    values, got = _mlp_cpu.value_and_jacobian(params, xs, act, mode)
    assert_close(got, jj.closed_form.mlp_jacobian(params, xs, "tanh"), exact_rtol(F64))
    assert_close(values, jj.mlp_apply(params, xs, "tanh"), exact_rtol(F64))


@pytest.mark.parametrize("sizes", [[3, 2], [3, 5, 2], [6, 7, 5, 4, 2]])
def test_tuned_hessian_matches_the_reference(sizes):
    params, xs, _ = _network(6, sizes=sizes, batch=5)
    act = jj.get_activation("gelu")
    want = jj.closed_form.mlp_hessian(params, xs, "gelu")
    for fused in (False, True):
        got = jax.jit(lambda p, x, fused=fused: _mlp_cpu.hessian(p, x, act, fused=fused))(
            params, xs
        )
        assert_close(got, want, exact_rtol(F64), what=f"fused={fused}")


def test_float64_weights_with_float32_inputs_give_a_float64_hessian():
    # The mix promotes to float64, as the network and its Jacobian do; writing float64 steps
    # into a float32 output used to fail in dynamic_update_slice.
    params, xs, _ = _network(7, sizes=[4, 6, 5, 2], batch=3)
    act = jj.get_activation("tanh")
    with jax.numpy_dtype_promotion("standard"):  # the mix is the point; strict forbids it
        for x in (xs.astype(jnp.float32), xs.astype(jnp.float16)):
            got = _mlp_cpu.hessian(params, x, act)
            assert got.dtype == F64
            want = jj.closed_form.mlp_hessian(params, x.astype(F64), "tanh")
            assert_close(got, want, exact_rtol(F64))
            hess = jj.batch_input_hessian(jj.mlp_function("tanh"), params, x)
            assert hess.dtype == F64
            assert_close(hess, want, exact_rtol(F64))
