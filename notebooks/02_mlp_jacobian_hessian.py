# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The Jacobian and Hessian of a tansig network, in closed form
#
# A multilayer perceptron with hidden activation $\sigma$:
# $$
# a_0 = x,\qquad z_l = W_l a_{l-1} + b_l,\qquad a_l = \sigma(z_l)\quad(l = 1,\dots,n-1),\qquad
# A(x) = W_n a_{n-1} + b_n .
# $$
# In jaxjac the parameters are a list of dicts `{"W": (out, in), "b": (out,)}`
# (`jj.mlp_init`), the network is `jj.mlp_apply(params, x, activation)`, and the closed forms
# live in `jj.closed_form`. This notebook derives the Jacobian and Hessian layer by layer,
# implements the formulas in a few lines of NumPy-style JAX, and checks them against the library,
# automatic differentiation and finite differences.

# %%
import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

jax.config.update("jax_enable_x64", True)  # float64: finite differences as an accurate oracle

import matplotlib.pyplot as plt

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.0, 3.6)})

# %% [markdown]
# ## tansig, and a formula that circulates
#
# MATLAB's `tansig` is
# $$\operatorname{tansig}(x) = \frac{2}{1 + e^{-2x}} - 1 = \tanh(x),$$
# with $\sigma' = 1 - \sigma^2$ and $\sigma'' = -2\sigma(1 - \sigma^2)$. A formula often quoted for
# it, $\frac{1}{1 + e^{-2x}} - 1$, is **wrong**: it is $\operatorname{logsig}(2x) - 1$, whose
# range is $(-1, 0)$, not $(-1, 1)$, and it is not odd. jaxjac's registry carries the activation
# with its exact derivatives:

# %%
tansig = jj.get_activation("tansig")
print(tansig.formula)

z = jnp.linspace(-4, 4, 401)
wrong = 1 / (1 + jnp.exp(-2 * z)) - 1
t = jnp.tanh(z)
print("max |tansig - tanh|          =", float(jnp.max(jnp.abs(tansig.f(z) - t))))
print("max |tansig' - (1 - tanh^2)| =", float(jnp.max(jnp.abs(tansig.df(z) - (1 - t**2)))))
print(f"wrong formula: range on [-4, 4] = [{float(wrong.min()):.4f}, {float(wrong.max()):.4f}]")

fig, ax = plt.subplots(figsize=(6.0, 3.2))
ax.plot(z, tansig.f(z), label="tansig = 2/(1+exp(-2x)) - 1 = tanh")
ax.plot(z, tansig.df(z), "--", label="tansig'")
ax.plot(z, tansig.d2f(z), ":", label="tansig''")
ax.plot(z, wrong, color="tab:red", label="wrong: 1/(1+exp(-2x)) - 1")
ax.axhline(0, color="0.6", lw=0.5)
ax.set(xlabel="x", ylim=(-1.1, 1.1))
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# ## The Jacobian, layer by layer
#
# Each step of the forward pass is one of the identities of notebook 01: $z_l = W_l a_{l-1} + b_l$
# has Jacobian $W_l$ in $a_{l-1}$, and $a_l = \sigma(z_l)$ has Jacobian
# $\operatorname{diag}(\sigma'(z_l))$. The chain rule multiplies them:
# $$
# J = \frac{\partial A}{\partial x} = W_n\,\operatorname{diag}(\sigma'(z_{n-1}))\,W_{n-1}\cdots
# \operatorname{diag}(\sigma'(z_1))\,W_1 \qquad (n_\text{out}\times n_\text{in}).
# $$
# The product can be accumulated from the right (carrying $n_\text{in}$ columns, forward mode) or
# from the left ($n_\text{out}$ rows, reverse mode); `jj.closed_form.mlp_jacobian` picks the
# cheaper order (`jj.closed_form.jacobian_cost`). Below the formula is written out directly and
# compared with the library's closed form and with autodiff (`jj.input_jacobian`).

# %%
sizes = [6, 16, 16, 2]
params = jj.mlp_init(jax.random.key(0), sizes, dtype=jnp.float64)
x = jax.random.normal(jax.random.key(1), (sizes[0],), jnp.float64)
sigma = jj.get_activation("tansig")


def forward(params, x):
    # Pre-activations z_l of the hidden layers, and the output.
    zs, a = [], x
    for layer in params[:-1]:
        z = layer["W"] @ a + layer["b"]
        zs.append(z)
        a = sigma.f(z)
    return zs, params[-1]["W"] @ a + params[-1]["b"]


def jacobian_by_hand(params, x):
    zs, _ = forward(params, x)
    J = params[0]["W"]
    for layer, z in zip(params[1:], zs, strict=True):
        J = layer["W"] @ (sigma.df(z)[:, None] * J)  # W_{l+1} diag(sigma'(z_l)) J
    return J


net = jj.mlp_function("tansig")  # f(params, x) = mlp_apply(params, x, "tansig"), one cached object
J_hand = jacobian_by_hand(params, x)
J_closed = jj.closed_form.mlp_jacobian(params, x, "tansig")
J_auto = jj.input_jacobian(net, params, x)
print("J shape:", J_hand.shape, "   cost (multiply-adds):", jj.closed_form.jacobian_cost(sizes))
print("max |hand - closed form| =", float(jnp.max(jnp.abs(J_hand - J_closed))))
print("max |hand - autodiff|    =", float(jnp.max(jnp.abs(J_hand - J_auto))))
np.testing.assert_allclose(J_hand, J_auto, rtol=1e-12, atol=1e-14)


# %% [markdown]
# ## Deriving the Hessian
#
# Fix an output $k$. Write $\delta_{l,k} = \partial A_k/\partial a_l$ (a row vector, the *adjoint*
# of layer $l$) and $Jz_l = \partial z_l/\partial x$ (the pre-activation Jacobian). They obey
# $$
# \delta_{n-1,k} = W_n[k,:],\qquad \delta_{l-1,k} = (\delta_{l,k}\odot\sigma'(z_l))\,W_l ;
# \qquad Jz_1 = W_1,\qquad Jz_l = W_l\,\operatorname{diag}(\sigma'(z_{l-1}))\,Jz_{l-1}.
# $$
#
# Two rules for how a Hessian passes through one step of the network suffice. Let $F$ be a
# scalar function of the step's output (here: the rest of the network, up to $A_k$).
#
# 1. **Affine step** $z = Wa + b$: $\;\nabla_a F = W^\top\nabla_z F$ and
#    $\nabla^2_a F = W^\top\,(\nabla^2_z F)\,W$: an affine map adds no curvature of its own.
# 2. **Elementwise step** $a = \sigma(z)$, $D = \operatorname{diag}(\sigma'(z))$: $\;\nabla_z F =
#    D\,\nabla_a F$ and, by the product rule on $\partial F/\partial z_j = \sigma'(z_j)\,\partial
#    F/\partial a_j$,
#    $$\nabla^2_z F = D\,(\nabla^2_a F)\,D
#    + \operatorname{diag}\bigl(\sigma''(z)\odot\nabla_a F\bigr).$$
#    The second term is the only place curvature enters.
#
# Start at the top: $A_k = W_n[k]\,a_{n-1} + b_{n,k}$ is affine, so $\nabla^2_{a_{n-1}}A_k = 0$,
# and $\nabla_{a_l}A_k = \delta_{l,k}^\top$ by definition. Walk down, applying rule 2 at every
# activation and rule 1 at every linear layer ($D_l = \operatorname{diag}(\sigma'(z_l))$,
# $S_l = \operatorname{diag}(\sigma''(z_l)\odot\delta_{l,k})$):
# $$
# H_k = W_1^\top\Bigl[S_1 + D_1W_2^\top\Bigl[S_2
#   + D_2W_3^\top\bigl[\cdots\bigr]W_3D_2\Bigr]W_2D_1\Bigr]W_1 .
# $$
# Multiplying out, $S_l$ is sandwiched between $W_lD_{l-1}W_{l-1}\cdots D_1W_1 = Jz_l$ and its
# transpose. Hence
# $$
# \boxed{\;H_k = \frac{\partial^2 A_k}{\partial x\,\partial x^\top}
# = \sum_{l=1}^{n-1} Jz_l^\top\,\operatorname{diag}\bigl(\sigma''(z_l)\odot\delta_{l,k}\bigr)\,Jz_l\;}
# $$
# every hidden unit contributes its curvature $\sigma''$ once, weighted by how strongly the output
# sees it ($\delta_{l,k,j}$) and projected onto the input through $Jz_l$.
#
# Each term is a symmetric $n_\text{in}\times n_\text{in}$ matrix; a linear network
# ($\sigma''\equiv 0$) has $H = 0$, as it must.
#
# *Check on one hidden layer* ($n = 2$): $A_k = W_2[k]\,\sigma(W_1x + b_1) + b_{2,k}$, so
# $\nabla A_k = W_1^\top(\sigma'(z_1)\odot W_2[k]^\top)$ and
# $H_k = W_1^\top\operatorname{diag}(\sigma''(z_1)\odot W_2[k])\,W_1$: the formula with
# $\delta_{1,k} = W_2[k]$ and $Jz_1 = W_1$.


# %%
def hessian_by_hand(params, x):
    zs, out = forward(params, x)
    n_hidden = len(zs)
    # Adjoints delta_l (n_out, h_l), from the top hidden layer down.
    deltas = [None] * n_hidden
    deltas[-1] = params[-1]["W"]
    for ell in range(n_hidden - 1, 0, -1):
        deltas[ell - 1] = (deltas[ell] * sigma.df(zs[ell])) @ params[ell]["W"]
    # Pre-activation Jacobians Jz_l (h_l, n_in), and the sum over layers.
    H = jnp.zeros((out.shape[0], x.shape[0], x.shape[0]))
    Jz = params[0]["W"]
    for ell in range(n_hidden):
        if ell > 0:
            Jz = params[ell]["W"] @ (sigma.df(zs[ell - 1])[:, None] * Jz)
        c = deltas[ell] * sigma.d2f(zs[ell])  # (n_out, h_l): sigma''(z_l) * delta_{l,k}
        H = H + jnp.einsum("hi,kh,hj->kij", Jz, c, Jz)
    return H


H_hand = hessian_by_hand(params, x)
H_closed = jj.closed_form.mlp_hessian(params, x, "tansig")
H_auto = jj.input_hessian(net, params, x)  # jax.hessian of the network (forward over reverse)
print("H shape:", H_hand.shape, "(n_out, n_in, n_in)")
print("max |hand - closed form| =", float(jnp.max(jnp.abs(H_hand - H_closed))))
print("max |hand - autodiff|    =", float(jnp.max(jnp.abs(H_hand - H_auto))))
print("symmetric:", bool(jnp.allclose(H_hand, jnp.swapaxes(H_hand, 1, 2), atol=1e-15)))
np.testing.assert_allclose(H_hand, H_auto, rtol=1e-12, atol=1e-14)

# %% [markdown]
# ## The cross-check table
#
# `jj.cross_check(params, x, activation)` compares every route to the Jacobian (closed form,
# `jacfwd`, `jacrev`, central finite differences) and to the Hessian (closed form, `jax.hessian`,
# `jacrev(jacrev)`, finite differences of the closed-form Jacobian), pair by pair, with
# tolerances derived from the dtype: roughly $1000\,\varepsilon$ for exact pairs, and
# $100\,\varepsilon^{2/3}$ for pairs with finite differences (a central difference with step
# $h\sim\varepsilon^{1/3}$ has truncation error $O(h^2)$ and rounding error
# $O(\varepsilon/h)$, both $O(\varepsilon^{2/3})$).

# %%
report = jj.cross_check(params, x, "tansig")
print(report)
assert report.passed

# %% [markdown]
# ### Our own table, and the finite-difference step
#
# The same comparison written out: the closed form against autodiff and against float64 central
# differences
# $$\frac{\partial A}{\partial x_j}\approx\frac{A(x + h e_j) - A(x - h e_j)}{2h},\qquad
# \frac{\partial^2 A}{\partial x_i\partial x_j}\approx
# \frac{J(x + h e_j) - J(x - h e_j)}{2h}\Big|_{\text{column } i},$$
# over a batch of 64 random inputs (`jj.closed_form.mlp_hessian` and `jj.batch_input_hessian`
# take the batch axis first).

# %%
xs = jax.random.normal(jax.random.key(2), (64, sizes[0]), jnp.float64)
eps = float(jnp.finfo(jnp.float64).eps)
h = eps ** (1 / 3)


def central_difference(fn, x, h):
    # (n_in,) -> out: central differences along every input axis, stacked last.
    steps = h * jnp.eye(x.shape[0])
    d = jax.vmap(lambda e: (fn(x + e) - fn(x - e)) / (2 * h))(steps)
    return jnp.moveaxis(d, 0, -1)


def apply(v):
    return jj.mlp_apply(params, v, "tansig")


def fd_jacobians(h):  # (B, n_out, n_in)
    return jax.vmap(lambda x: central_difference(apply, x, h))(xs)


fd_jac = fd_jacobians(h)
fd_hess = jax.vmap(lambda x: central_difference(lambda v: jacobian_by_hand(params, v), x, h))(xs)
routes = {
    "jacobian": {
        "closed form": jj.closed_form.mlp_jacobian(params, xs, "tansig"),
        "autodiff (batch_input_jacobian)": jj.batch_input_jacobian(net, params, xs),
        "finite differences (float64)": fd_jac,
    },
    "hessian": {
        "closed form": jj.closed_form.mlp_hessian(params, xs, "tansig"),
        "autodiff (batch_input_hessian)": jj.batch_input_hessian(net, params, xs),
        "finite differences (float64)": fd_hess,
    },
}
print(f"{'quantity':9s} {'route':34s} {'max |err| vs closed form':>25s} {'relative':>10s}")
for quantity, values in routes.items():
    ref = values["closed form"]
    for name, v in values.items():
        if name == "closed form":
            continue
        err = float(jnp.max(jnp.abs(v - ref)))
        print(f"{quantity:9s} {name:34s} {err:25.2e} {err / float(jnp.max(jnp.abs(ref))):10.2e}")

# %% [markdown]
# Autodiff agrees with the closed form to rounding ($\sim10^{-16}$ relative); finite differences to
# $\sim10^{-10}$, as predicted. The step matters: sweeping $h$ shows the V shape of truncation
# error ($\propto h^2$, right) against rounding error ($\propto\varepsilon/h$, left), with the
# minimum near $h = \varepsilon^{1/3}\approx 6\times10^{-6}$.

# %%
hs = np.logspace(-12, -1, 23)
J_ref = jj.closed_form.mlp_jacobian(params, xs, "tansig")
fd_errors = [float(jnp.max(jnp.abs(fd_jacobians(hh) - J_ref))) for hh in hs]
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.loglog(hs, fd_errors, "o-", ms=3, label="max error of central differences")
ax.loglog(hs, eps / hs, "--", color="0.5", label="eps / h (rounding)")
ax.loglog(hs, hs**2, ":", color="0.5", label="h^2 (truncation)")
ax.axvline(eps ** (1 / 3), color="tab:red", lw=0.8, label="h = eps^(1/3)")
ax.set(xlabel="step h", ylabel="max |J_fd - J|", ylim=(1e-13, 1e0))
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The Hessian as a picture
#
# $H_k$ is symmetric; its diagonal entries are the curvatures along each input, the off-diagonal
# entries the interactions between two inputs. Plotted for both outputs at the point $x$ above
# (a diverging colour map centred on zero):

# %%
fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4), layout="constrained")
ticks = [str(i + 1) for i in range(sizes[0])]
for k, ax in enumerate(axes):
    lim = float(jnp.max(jnp.abs(H_closed[k])))  # each panel centred on zero, its own scale
    im = ax.imshow(H_closed[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(title=f"H_{k + 1} = d²A_{k + 1}/dx dxᵀ", xlabel="x_j", ylabel="x_i")
    ax.set_xticks(range(sizes[0]), ticks)
    ax.set_yticks(range(sizes[0]), ticks)
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()
eigs = jnp.linalg.eigvalsh(H_closed)
for k in range(eigs.shape[0]):
    print(f"eigenvalues of H_{k + 1}:", np.round(np.asarray(eigs[k]), 4))
    print(f"  indefinite: {bool(eigs[k, 0] < 0 < eigs[k, -1])}", end="")
    print(f"   |gradient of A_{k + 1}| at x = {float(jnp.linalg.norm(J_closed[k])):.3f}")

# %% [markdown]
# Where the eigenvalues have mixed signs the Hessian at $x$ is **indefinite**: the curvature of
# that output is saddle-shaped, bending up along some input directions and down along others.
# That describes the curvature only: $x$ is not a saddle *point* (not a critical point at all),
# because its gradient there (row $k$ of $J$, whose norm is printed above) is not zero.
#
# **Takeaways.** `jj.closed_form.mlp_jacobian` / `mlp_hessian` evaluate the formulas above for one
# input or a batch, `jj.input_jacobian` / `jj.input_hessian` (and their `batch_` forms) do the same
# for any `f(params, x)` by autodiff, and `jj.cross_check` shows that they agree. Notebook 03 uses
# these derivatives over a whole data set for global sensitivity analysis.
