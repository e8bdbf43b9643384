"""The one jit-caching wrapper: compiled once per function and shapes, partials keyed on options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxjac._jit import fn_key, jit_entry, split_partial

F64 = jnp.float64


def _counting(traces):
    @jit_entry("power")
    def entry(f, params, x, power=1):
        traces.append(x.shape)  # runs only while JAX traces
        return f(params, x) ** power

    return entry


def _net(params, x, *, scale=1.0):
    return scale * jnp.tanh(params["W"] @ x)


def test_compiles_once_per_function_options_and_shapes():
    traces = []
    entry = _counting(traces)
    params = {"W": jnp.ones((2, 3), F64)}
    x = jnp.arange(3.0, dtype=F64)
    want = np.tanh(np.ones((2, 3)) @ np.arange(3.0))
    np.testing.assert_allclose(entry(_net, params, x), want, rtol=1e-15)
    entry(_net, {"W": 2 * params["W"]}, x + 1)  # new values: the same program
    assert len(traces) == 1
    np.testing.assert_allclose(entry(_net, params, x, power=2), want**2, rtol=1e-15)
    entry(_net, params, x, 2)  # the static option given positionally: the same key
    assert len(traces) == 2
    p32 = {"W": jnp.ones((2, 3), jnp.float32)}
    entry(_net, p32, jnp.ones(3, jnp.float32))  # a new dtype compiles anew
    assert len(traces) == 3


def test_a_partial_binding_arrays_is_compiled_once_per_function_and_options():
    traces = []
    entry = _counting(traces)

    def g(bound, params, x):
        return x.sum() * bound["W"].sum()

    x = jnp.ones(3, F64)
    for w in (1.0, 2.0, 3.0):  # partial(g, arrays): the arrays are traced, not baked in
        got = entry(functools.partial(g, {"W": w * x}), None, x)
        np.testing.assert_allclose(got, 3 * 3 * w, rtol=1e-15)
    assert len(traces) == 1


def test_the_function_may_be_passed_by_keyword():
    entry = _counting([])
    params = {"W": jnp.eye(3, dtype=F64)}
    x = jnp.ones(3, F64)
    np.testing.assert_array_equal(entry(f=_net, params=params, x=x, power=3), jnp.tanh(x) ** 3)


def test_unhashable_functions_are_refused_by_name():
    entry = _counting([])

    class Unhashable:
        __hash__ = None

        def __call__(self, params, x):
            return x

    with pytest.raises(TypeError, match=r"f must be hashable.*Unhashable"):
        entry(Unhashable(), None, jnp.ones(2))


def test_split_partial_and_keys():
    params = {"W": jnp.ones((2, 2))}
    f = functools.partial(_net, params, scale=2.0)
    head, bound = split_partial(f)
    assert head.func is _net and head.keywords == (("scale", 2.0),)
    assert bound == (params,)
    assert fn_key(f) == fn_key(functools.partial(_net, {"W": jnp.zeros((2, 2))}, scale=2.0))
    assert fn_key(f) != fn_key(functools.partial(_net, {"W": jnp.zeros((3, 2))}, scale=2.0))
    assert split_partial(functools.partial(_net, "not an array")) is None
    assert split_partial(_net) is None
    assert fn_key(_net) is _net
    assert jax.tree_util.tree_leaves(bound)[0] is params["W"]
