"""jaxjac: exact, batched, jit-compiled derivatives of neural networks in JAX.

Networks are pure functions ``f(params, x)`` over parameter pytrees; every helper takes one.

* Networks (``nets``, ``activations``): :func:`mlp_init`, :func:`mlp_apply`,
  :func:`get_activation` (``.f``, ``.df``, ``.d2f``), :func:`register_activation`.
* One route resolver (``routes``): every batched helper, and :func:`input_jacobian`,
  :func:`input_hessian`, :func:`weight_jacobian` for one example, take the closed form for
  jaxjac's MLP and autodiff otherwise, chunked to a memory budget: :func:`batch_input_jacobian`,
  :func:`batch_input_hessian`, :func:`batch_weight_jacobian`, the ``batch_*`` calculus helpers
  and the Jacobian reductions; :func:`explain` says what runs and why.
* Autodiff for one example (``derivatives``): :func:`weight_hessian`, the ``*_jvp`` /
  ``*_vjp`` / ``*_hvp`` products.
* Closed forms for MLPs (``closed_form``) and the check of every route against the others:
  :func:`cross_check`.
* Change of variables (``calculus``): :func:`jacobian_det`, :func:`log_abs_det_jacobian`,
  :func:`divergence`, :func:`laplacian`, their ``batch_*`` forms, and the Hutchinson and
  Hutch++ trace estimators.
* Curvature (``curvature``, ``optimizers``): Hessian traces, diagonals, eigenvalues, spectral
  densities, GGN and Fisher products, the NTK, a Gauss-Newton optax transformation.
* Sensitivity analysis (``sensitivity``, ``measures``, ``plots``): :func:`sensitivity` over a
  whole data set, streamed, resumable; the measures as an init/update/finalize accumulator any
  loop can drive; :func:`plot_sensitivity`, :func:`plot_interactions`; structured errors
  (``errors``).
* Files (``io``): :func:`load_params`, :func:`save_params`, :func:`load_data`, Flax and
  Equinox converters. Many devices (``sharding``): :func:`make_mesh`, :func:`sharded`.
"""

from importlib.metadata import PackageNotFoundError, version

from jaxjac import (
    closed_form,
    curvature,
    errors,
    io,
    measures,
    optimizers,
    planner,
    plots,
    routes,
    sharding,
)
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
from jaxjac.curvature import (
    HessianDiag,
    HessianEigs,
    HessianTrace,
    SpectralDensity,
    empirical_fisher_vp,
    ggn_vp,
    hessian_diag,
    hessian_eigs,
    hessian_trace,
    mlp_ntk,
    ntk,
    ntk_memory,
    ntk_vp,
    sharpness,
    spectral_density,
    supervised_loss,
)
from jaxjac.derivatives import (
    input_hvp,
    input_jvp,
    input_vjp,
    weight_hessian,
    weight_hessian_matrix,
    weight_hvp,
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
from jaxjac.optimizers import (
    GaussNewtonState,
    SharpnessState,
    gauss_newton,
    scale_by_gauss_newton,
    track_sharpness,
)
from jaxjac.plots import plot_interactions, plot_sensitivity
from jaxjac.routes import (
    Plan,
    batch_input_hessian,
    batch_input_jacobian,
    batch_jacobian_abs_sq,
    batch_jacobian_gram,
    batch_jacobian_norm,
    batch_weight_jacobian,
    explain,
    input_hessian,
    input_jacobian,
    weight_jacobian,
)
from jaxjac.sensitivity import LipschitzSummary, SensitivityReport, mlp_function, sensitivity
from jaxjac.sharding import (
    BatchMoments,
    BatchSum,
    global_batch,
    host_slice,
    initialize_from_env,
    make_mesh,
    sharded,
)

try:
    __version__ = version("jaxjac")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "Activation",
    "BatchMoments",
    "BatchSum",
    "CrossCheckReport",
    "GaussNewtonState",
    "HessianDiag",
    "HessianEigs",
    "HessianTrace",
    "LipschitzSummary",
    "Plan",
    "SensitivityReport",
    "SharpnessState",
    "SpectralDensity",
    "TraceEstimate",
    "batch_divergence",
    "batch_input_hessian",
    "batch_input_jacobian",
    "batch_jacobian_abs_sq",
    "batch_jacobian_det",
    "batch_jacobian_gram",
    "batch_jacobian_norm",
    "batch_laplacian",
    "batch_log_abs_det_jacobian",
    "batch_slogdet_jacobian",
    "batch_weight_jacobian",
    "closed_form",
    "cross_check",
    "curvature",
    "divergence",
    "empirical_fisher_vp",
    "errors",
    "explain",
    "from_equinox_mlp",
    "from_flax_dense_params",
    "gauss_newton",
    "get_activation",
    "ggn_vp",
    "global_batch",
    "hessian_diag",
    "hessian_eigs",
    "hessian_trace",
    "host_slice",
    "hutchinson_divergence",
    "hutchinson_laplacian",
    "hutchpp_divergence",
    "hutchpp_laplacian",
    "initialize_from_env",
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
    "make_mesh",
    "match_activation",
    "measures",
    "mlp_apply",
    "mlp_function",
    "mlp_init",
    "mlp_ntk",
    "mlp_sizes",
    "ntk",
    "ntk_memory",
    "ntk_vp",
    "optimizers",
    "planner",
    "plot_interactions",
    "plot_sensitivity",
    "plots",
    "register_activation",
    "routes",
    "save_params",
    "scale_by_gauss_newton",
    "sensitivity",
    "sharded",
    "sharding",
    "sharpness",
    "slogdet_jacobian",
    "spectral_density",
    "supervised_loss",
    "track_sharpness",
    "validate_mlp_params",
    "weight_hessian",
    "weight_hessian_matrix",
    "weight_hvp",
    "weight_jacobian",
    "weight_jvp",
    "weight_vjp",
]
