"""jaxjac: exact, batched, jit-compiled derivatives of neural networks in JAX."""

from importlib.metadata import PackageNotFoundError, version

from jaxjac import closed_form, io, plots
from jaxjac.activations import Activation, get_activation, list_activations, register_activation
from jaxjac.calculus import (
    TraceEstimate,
    batch_divergence,
    batch_jacobian_det,
    batch_laplacian,
    batch_log_abs_det_jacobian,
    batch_slogdet_jacobian,
    divergence,
    hutchinson_divergence,
    hutchinson_laplacian,
    hutchpp_divergence,
    hutchpp_laplacian,
    jacobian_det,
    laplacian,
    log_abs_det_jacobian,
    slogdet_jacobian,
)
from jaxjac.cross_check import CrossCheckReport, cross_check
from jaxjac.derivatives import (
    batch_input_hessian,
    batch_input_jacobian,
    batch_weight_jacobian,
    input_hessian,
    input_hvp,
    input_jacobian,
    input_jvp,
    input_vjp,
    weight_hessian,
    weight_hessian_matrix,
    weight_hvp,
    weight_jacobian,
    weight_jvp,
    weight_vjp,
)
from jaxjac.io import (
    from_equinox_mlp,
    from_flax_dense_params,
    load_data,
    load_params,
    match_activation,
    save_params,
)
from jaxjac.nets import mlp_apply, mlp_init, mlp_sizes, validate_mlp_params
from jaxjac.plots import plot_interactions, plot_sensitivity
from jaxjac.sensitivity import LipschitzSummary, SensitivityReport, mlp_function, sensitivity

try:
    __version__ = version("jaxjac")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "Activation",
    "CrossCheckReport",
    "LipschitzSummary",
    "SensitivityReport",
    "TraceEstimate",
    "batch_divergence",
    "batch_input_hessian",
    "batch_input_jacobian",
    "batch_jacobian_det",
    "batch_laplacian",
    "batch_log_abs_det_jacobian",
    "batch_slogdet_jacobian",
    "batch_weight_jacobian",
    "closed_form",
    "cross_check",
    "divergence",
    "from_equinox_mlp",
    "from_flax_dense_params",
    "get_activation",
    "hutchinson_divergence",
    "hutchinson_laplacian",
    "hutchpp_divergence",
    "hutchpp_laplacian",
    "input_hessian",
    "input_hvp",
    "input_jacobian",
    "input_jvp",
    "input_vjp",
    "io",
    "jacobian_det",
    "laplacian",
    "list_activations",
    "load_data",
    "load_params",
    "log_abs_det_jacobian",
    "match_activation",
    "mlp_apply",
    "mlp_function",
    "mlp_init",
    "mlp_sizes",
    "plot_interactions",
    "plot_sensitivity",
    "plots",
    "register_activation",
    "save_params",
    "sensitivity",
    "slogdet_jacobian",
    "validate_mlp_params",
    "weight_hessian",
    "weight_hessian_matrix",
    "weight_hvp",
    "weight_jacobian",
    "weight_jvp",
    "weight_vjp",
]
