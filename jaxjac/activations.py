"""Elementwise activations with exact closed-form first and second derivatives.

Every activation is an :class:`Activation` with three elementwise functions of the
pre-activation ``z`` (any shape, output of the same shape and dtype):

* ``f(z)``: the value,
* ``df(z)``: the first derivative ``f'(z)``,
* ``d2f(z)``: the second derivative ``f''(z)``.

``f`` and ``df`` carry :func:`jax.custom_jvp` rules built from ``df`` and ``d2f``, so autodiff
through a network uses the same exact derivatives as the closed form, stays finite where the
literal formula overflows (``exp(100)`` is ``inf`` in float32), and agrees with the closed form
at kinks (``relu'(0) = 0``). The derivatives are tested against autodiff of the literal formulas
and against finite differences in ``tests/test_activations.py``.

NaN convention: a NaN input gives NaN in ``f``, ``df`` and ``d2f`` alike, also for activations
whose derivative is piecewise constant, so a NaN in ``x`` shows up in every derivative of a
network instead of silently vanishing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

__all__ = [
    "Activation",
    "get_activation",
    "list_activations",
    "register_activation",
    "registry_generation",
]

ElementwiseFn = Callable[[jax.Array], jax.Array]


class Activation(NamedTuple):
    """An elementwise activation and its exact derivatives.

    Attributes:
        name: registry name.
        f: value, elementwise, ``(...) -> (...)``.
        df: first derivative, elementwise, ``(...) -> (...)``.
        d2f: second derivative, elementwise, ``(...) -> (...)``.
        formula: human-readable definition, for tables and docs.
    """

    name: str
    f: ElementwiseFn
    df: ElementwiseFn
    d2f: ElementwiseFn
    formula: str = ""


_REGISTRY: dict[str, Activation] = {}
_GENERATION = 0  # bumped when a name is re-registered: see registry_generation


def _keep_nan(z: jax.Array, value: jax.Array) -> jax.Array:
    # Piecewise-constant derivatives would turn NaN into 0 or 1; keep the NaN visible.
    return jnp.where(jnp.isnan(z), z, value)


def _with_derivatives(name: str, f_raw, df_raw, d2f_raw, formula: str) -> Activation:
    """Wrap raw formulas so that autodiff of ``f`` and ``df`` uses ``df`` and ``d2f``."""

    @jax.custom_jvp
    def df(z):
        return df_raw(z)

    @df.defjvp
    def _df_jvp(primals, tangents):
        (z,), (t,) = primals, tangents
        return df_raw(z), d2f_raw(z) * t

    @jax.custom_jvp
    def f(z):
        return f_raw(z)

    @f.defjvp
    def _f_jvp(primals, tangents):
        (z,), (t,) = primals, tangents
        return f_raw(z), df(z) * t

    f.__name__ = name
    return Activation(name=name, f=f, df=df, d2f=d2f_raw, formula=formula)


def register_activation(
    name: str,
    f: ElementwiseFn,
    df: ElementwiseFn | None = None,
    d2f: ElementwiseFn | None = None,
    *,
    formula: str = "",
    overwrite: bool = False,
) -> Activation:
    """Register an elementwise activation under ``name``.

    Args:
        name: the registry key (case-insensitive).
        f: the elementwise value, ``(...) -> (...)``.
        df: its exact first derivative; derived by forward-mode autodiff of ``f`` when omitted.
        d2f: its exact second derivative; derived by forward-mode autodiff of ``df`` when omitted.
        formula: a human-readable definition.
        overwrite: allow replacing an existing name (built-ins included). Programs compiled
            with the old definition are keyed on the name, so replacing one clears JAX's
            compilation caches and jaxjac's plans: every jitted function, yours included,
            compiles again on its next call, and none runs the old definition.

    Returns:
        The registered :class:`Activation`.

    Raises:
        ValueError: if ``name`` is taken and ``overwrite`` is false.
    """
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"activation {name!r} is already registered; pass overwrite=True")

    def _elementwise_derivative(g):
        # Valid because g is elementwise: the JVP with a ones tangent is g' evaluated pointwise.
        return lambda z: jax.jvp(g, (z,), (jnp.ones_like(z),))[1]

    df = df if df is not None else _elementwise_derivative(f)
    d2f = d2f if d2f is not None else _elementwise_derivative(df)
    act = _with_derivatives(key, f, df, d2f, formula)
    replaced = key in _REGISTRY
    _REGISTRY[key] = act
    if replaced:
        _forget_compiled()
    return act


def _forget_compiled() -> None:
    """Drop every compiled program, and date every plan made before: some hold the old one."""
    global _GENERATION
    jax.clear_caches()
    _GENERATION += 1


def registry_generation() -> int:
    """A number that changes whenever a registered name gets a new definition.

    Caches of anything derived from an activation found by name (jaxjac's route plans) include
    it in their keys, so a replaced activation is never served from them.
    """
    return _GENERATION


def list_activations() -> list[str]:
    """Return the registered activation names, sorted."""
    return sorted(_REGISTRY)


def get_activation(name: str | Activation) -> Activation:
    """Look up an activation by name (an :class:`Activation` passes through unchanged).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name or an Activation, got {type(name).__name__}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        known = ", ".join(list_activations())
        raise ValueError(f"unknown activation {name!r}; expected one of: {known}") from None


# --- built-ins -------------------------------------------------------------------------------


def _tansig(z):
    # MATLAB's definition, written as MATLAB writes it. For z < -44 (float32) exp(-2z) is inf
    # and the value is exactly -1; autodiff of this expression would give inf/inf, which is why
    # the derivative comes from the identity tansig' = 1 - tansig² instead.
    return 2.0 / (1.0 + jnp.exp(-2.0 * z)) - 1.0


def _tansig_df(z):
    t = _tansig(z)
    return 1.0 - t * t


def _tansig_d2f(z):
    t = _tansig(z)
    return -2.0 * t * (1.0 - t * t)


def _tanh_df(z):
    t = jnp.tanh(z)
    return 1.0 - t * t


def _tanh_d2f(z):
    t = jnp.tanh(z)
    return -2.0 * t * (1.0 - t * t)


def _sigmoid_df(z):
    # s(1 - s) from lax.logistic, which is accurate for all z; e^{-z}/(1+e^{-z})² overflows.
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s)


def _sigmoid_d2f(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _softplus(z):
    # log(1 + e^z) = max(z, 0) + log1p(e^{-|z|}): no overflow, no cancellation.
    return jnp.maximum(z, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(z)))


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_pdf(z):
    return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _gelu(z):
    return z * ndtr(z)


def _gelu_df(z):
    return ndtr(z) + z * _normal_pdf(z)


def _gelu_d2f(z):
    return (2.0 - z * z) * _normal_pdf(z)


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu_tanh_parts(z):
    u = _GELU_C * (z + _GELU_A * z**3)
    du = _GELU_C * (1.0 + 3.0 * _GELU_A * z * z)
    d2u = _GELU_C * 6.0 * _GELU_A * z
    t = jnp.tanh(u)
    return t, 1.0 - t * t, du, d2u


def _gelu_tanh(z):
    return 0.5 * z * (1.0 + jnp.tanh(_GELU_C * (z + _GELU_A * z**3)))


def _gelu_tanh_df(z):
    t, sech2, du, _ = _gelu_tanh_parts(z)
    return 0.5 * (1.0 + t) + 0.5 * z * sech2 * du


def _gelu_tanh_d2f(z):
    t, sech2, du, d2u = _gelu_tanh_parts(z)
    return sech2 * du - z * t * sech2 * du * du + 0.5 * z * sech2 * d2u


def _silu(z):
    return z * jax.nn.sigmoid(z)


def _silu_df(z):
    s = jax.nn.sigmoid(z)
    return s + z * s * (1.0 - s)


def _silu_d2f(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))


def _radbas_d2f(z):
    return (4.0 * z * z - 2.0) * jnp.exp(-z * z)


def _builtin(name, f, df, d2f, formula, aliases=()):
    act = _with_derivatives(name, f, df, d2f, formula)
    _REGISTRY[name] = act
    for alias in aliases:
        _REGISTRY[alias] = act._replace(name=alias)


_builtin(
    "tansig",
    _tansig,
    _tansig_df,
    _tansig_d2f,
    "2/(1+exp(-2z)) - 1 (MATLAB; equals tanh); f' = 1 - f², f'' = -2 f (1 - f²)",
)
_builtin("tanh", jnp.tanh, _tanh_df, _tanh_d2f, "tanh(z); f' = 1 - f², f'' = -2 f (1 - f²)")
_builtin(
    "logsig",
    jax.nn.sigmoid,
    _sigmoid_df,
    _sigmoid_d2f,
    "1/(1+exp(-z)) (MATLAB logsig); f' = f (1 - f), f'' = f (1 - f)(1 - 2f)",
    aliases=("sigmoid",),
)
_builtin(
    "relu",
    lambda z: jnp.maximum(z, 0.0),
    lambda z: _keep_nan(z, jnp.where(z > 0, 1.0, 0.0).astype(z.dtype)),
    lambda z: _keep_nan(z, jnp.zeros_like(z)),
    "max(z, 0); f' = [z > 0] (0 at z = 0), f'' = 0",
    aliases=("poslin",),
)
_builtin(
    "softplus",
    _softplus,
    jax.nn.sigmoid,
    _sigmoid_df,
    "log(1 + exp(z)); f' = sigmoid(z), f'' = sigmoid(z)(1 - sigmoid(z))",
)
_builtin(
    "gelu",
    _gelu,
    _gelu_df,
    _gelu_d2f,
    "exact GELU z Φ(z) (erf form); f' = Φ + z φ, f'' = (2 - z²) φ",
)
_builtin(
    "gelu_tanh",
    _gelu_tanh,
    _gelu_tanh_df,
    _gelu_tanh_d2f,
    "tanh-approximate GELU 0.5 z (1 + tanh(√(2/π)(z + 0.044715 z³)))",
)
_builtin(
    "silu",
    _silu,
    _silu_df,
    _silu_d2f,
    "z sigmoid(z) (swish); f' = s + z s (1 - s)",
    aliases=("swish",),
)
_builtin("sin", jnp.sin, jnp.cos, lambda z: -jnp.sin(z), "sin(z); f' = cos, f'' = -sin")
_builtin(
    "radbas",
    lambda z: jnp.exp(-z * z),
    lambda z: -2.0 * z * jnp.exp(-z * z),
    _radbas_d2f,
    "exp(-z²) (MATLAB radbas)",
)
_builtin(
    "purelin",
    lambda z: z,
    lambda z: _keep_nan(z, jnp.ones_like(z)),
    lambda z: _keep_nan(z, jnp.zeros_like(z)),
    "z (MATLAB purelin); f' = 1, f'' = 0",
    aliases=("identity", "linear"),
)
