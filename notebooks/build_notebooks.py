"""Write the research notebooks from their cell sources and execute them in place.

Usage (from the repository root)::

    .venv/bin/python notebooks/build_notebooks.py            # every notebook
    .venv/bin/python notebooks/build_notebooks.py 03         # those whose name starts with 03
    .venv/bin/python notebooks/build_notebooks.py --no-execute

The cell sources below are the single source of truth: edit them here, rebuild, and commit the
executed ``.ipynb`` files (with their outputs, so the plots show on GitHub). Each notebook is
executed by nbclient in a fresh ``python3`` kernel with ``notebooks/`` as working directory, so
outputs are exactly what a reader running it top to bottom would see. Execution timestamps are
not recorded, which keeps rebuilds diff-friendly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = "python3"
CELL_TIMEOUT_S = 600


def md(source: str) -> nbformat.NotebookNode:
    """A markdown cell (leading and trailing blank lines dropped)."""
    return nbformat.v4.new_markdown_cell(source.strip("\n"))


def code(source: str) -> nbformat.NotebookNode:
    """A code cell (leading and trailing blank lines dropped)."""
    return nbformat.v4.new_code_cell(source.strip("\n"))


# Shared first lines of every notebook's plotting set-up: small PNG figures keep files < 1 MB.
PLOT_SETUP = """
import matplotlib.pyplot as plt

%matplotlib inline
%config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.0, 3.6)})
"""

# ------------------------------------------------------------------------------------------------
# 01: Jacobian basics
# ------------------------------------------------------------------------------------------------

NB01 = [
    md(r"""
# 01 · The Jacobian: a table of partial derivatives

For a map $f:\mathbb{R}^n\to\mathbb{R}^m$ the **Jacobian** at $x$ is the $m\times n$ table

$$
J_f(x) = \begin{pmatrix}
\partial f_1/\partial x_1 & \cdots & \partial f_1/\partial x_n\\
\vdots & & \vdots\\
\partial f_m/\partial x_1 & \cdots & \partial f_m/\partial x_n
\end{pmatrix},
\qquad J_{ij} = \frac{\partial f_i}{\partial x_j}:
$$

row $i$ is the gradient of output $i$, column $j$ says how every output moves when input $j$
moves. It is the best linear approximation of $f$ near $x$:
$f(x + h) = f(x) + J_f(x)\,h + O(\|h\|^2)$.

This notebook computes Jacobians with `jaxjac` (`import jaxjac as jj`), checks them against
hand derivations, draws what a Jacobian does to a small grid, and uses its determinant to
change variables in an integral. jaxjac lays out a Jacobian as *output shape first, then input
shape* (`f_out + x.shape`), exactly the table above.
"""),
    code(
        """
import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

jax.config.update("jax_enable_x64", True)  # float64: the checks below are to ~1e-15
"""
        + PLOT_SETUP
    ),
    md(r"""
## A two-dimensional example

Take $f(x, y) = (x + y,\; xy)$. By hand,

$$
J_f(x, y) = \begin{pmatrix} 1 & 1 \\ y & x \end{pmatrix},
\qquad
J_f(-1, 2) = \begin{pmatrix} 1 & 1 \\ 2 & -1 \end{pmatrix},
\qquad \det J_f(-1, 2) = 1\cdot(-1) - 1\cdot 2 = -3 .
$$

`jj.input_jacobian(f, params, x)` differentiates any `f(params, x)` with respect to `x`
(here there are no parameters, so `params=None`). `jj.jacobian_det(g, x)` takes a function of
`x` alone and returns $\det J_g(x)$ (through an LU factorisation, `slogdet`).
"""),
    code("""
def f(params, v):
    x, y = v
    return jnp.stack([x + y, x * y])


def f_of_v(v):  # the same map as a function of the input alone, for jacobian_det
    return f(None, v)


p = jnp.array([-1.0, 2.0])
J = jj.input_jacobian(f, None, p)
det = jj.jacobian_det(f_of_v, p)
print("J =\\n", J)
print("det J =", det)
np.testing.assert_allclose(J, [[1.0, 1.0], [2.0, -1.0]], atol=1e-15)
np.testing.assert_allclose(det, -3.0, rtol=1e-14)
"""),
    md(r"""
### What $\det J = -3$ means

Near $(-1, 2)$ the map acts like the linear map $J$: a small square of area $A$ goes to
(nearly) a parallelogram of area $|\det J|\,A = 3A$, and since $\det J < 0$ the image is
**mirrored**: walking around the square counter-clockwise, the image is walked clockwise.

Below, left: a grid around $(-1, 2)$ and a small shaded square whose first edge (red, along
$x$) and second edge (blue, along $y$) turn counter-clockwise. Right: the image of the grid under
$f$ (the lines bend: $f$ is not linear) and of the square: the red-to-blue turn is now
clockwise, and the area has grown by a factor of about 3.
"""),
    code("""
h_grid, h_sq = 0.6, 0.25
ticks = np.linspace(-h_grid, h_grid, 9)
t = np.linspace(-h_grid, h_grid, 100)
fmap = lambda x, y: (x + y, x * y)  # NumPy version of f, for drawing only

# A small square with corner p, walked counter-clockwise.
square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]) * h_sq + np.array(p)
edge = np.linspace(0, 1, 30)[:, None]
boundary = np.concatenate([a + edge * (b - a) for a, b in zip(square[:-1], square[1:])])


def shoelace(poly):  # signed area of a closed polygon (positive = counter-clockwise)
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])


fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.0, 3.8))
for c in ticks:
    ax0.plot(p[0] + c + 0 * t, p[1] + t, color="0.75", lw=0.8)
    ax0.plot(p[0] + t, p[1] + c + 0 * t, color="0.75", lw=0.8)
    ax1.plot(*fmap(p[0] + c + 0 * t, p[1] + t), color="0.75", lw=0.8)
    ax1.plot(*fmap(p[0] + t, p[1] + c + 0 * t), color="0.75", lw=0.8)
image = np.stack(fmap(boundary[:, 0], boundary[:, 1]), axis=1)
ax0.fill(*square.T, color="tab:orange", alpha=0.5)
ax1.fill(*image.T, color="tab:orange", alpha=0.5)
for ax, pts, tag in ((ax0, square, "square"), (ax1, None, "image")):
    for k, color in ((0, "tab:red"), (1, "tab:blue")):
        a, b = square[k], square[k + 1]
        if pts is None:
            a, b = np.array(fmap(*a)), np.array(fmap(*b))
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=color, lw=2))
ax0.plot(*p, "k.")
ax1.plot(*fmap(*np.asarray(p)), "k.")
ax0.set(title="domain near (-1, 2)", xlabel="x", ylabel="y", aspect="equal")
ax1.set(title="image under f(x, y) = (x + y, xy)", xlabel="u = x + y", ylabel="v = xy")
ax1.set_aspect("equal")
plt.show()

ratio = shoelace(np.vstack([image, image[:1]])) / shoelace(np.vstack([boundary, boundary[:1]]))
print(f"signed area ratio of the small square: {ratio:.3f}   (det J = {float(det):.0f})")
"""),
    md(r"""
The signed area ratio of the small square is $-3$: area grows threefold and orientation
flips. (Here it is even exact for a square of any size: the image's area is
$\int_\text{square}|\det J|$, and $\det J = x - y$ is linear, so its average over the square is
its value at the centre, $-0.875 - 2.125 = -3$. For a general map the ratio tends to
$\det J$ as the square shrinks.)

## Five identities every derivation uses

With $W\in\mathbb{R}^{m\times n}$, constants $c\in\mathbb{R}^n$ and an elementwise function $g$:

| $f(x)$ | $J_f(x)$ |
|---|---|
| $Wx$ | $W$ |
| $\lVert x\rVert^2 = x^\top x$ | $2x^\top$ (a $1\times n$ row; as an array, shape `(n,)`) |
| $g(x)$ elementwise | $\operatorname{diag}(g'(x))$ |
| $x\odot c$ | $\operatorname{diag}(c)$ |
| $x + c$ | $I$ |

The first is why a linear layer's Jacobian is its weight matrix; the third is why an activation
layer contributes a diagonal factor, and together with the chain rule
$J_{f\circ h}(x) = J_f(h(x))\,J_h(x)$ they give the layer-by-layer Jacobian of a network
(notebook 02). Each is checked below with `jj.input_jacobian`; the constant (`W` or `c`) is
passed as `params`, so the same compiled program serves any constant.
"""),
    code("""
key_w, key_x, key_c = jax.random.split(jax.random.key(0), 3)
n, m = 4, 3
W = jax.random.normal(key_w, (m, n))
x = jax.random.normal(key_x, (n,))
c = jax.random.normal(key_c, (n,))


def linear(W, x):
    return W @ x


def squared_norm(_, x):
    return jnp.sum(x**2)


def elementwise(_, x):
    return jnp.sin(x)  # g = sin, g' = cos


def hadamard(c, x):
    return x * c


def shift(c, x):
    return x + c


checks = {
    "d(Wx)/dx = W": (jj.input_jacobian(linear, W, x), W),
    "d|x|^2/dx = 2x": (jj.input_jacobian(squared_norm, None, x), 2 * x),
    "d g(x)/dx = diag(g'(x))": (jj.input_jacobian(elementwise, None, x), jnp.diag(jnp.cos(x))),
    "d(x*c)/dx = diag(c)": (jj.input_jacobian(hadamard, c, x), jnp.diag(c)),
    "d(x+c)/dx = I": (jj.input_jacobian(shift, c, x), jnp.eye(n)),
}
for name, (got, want) in checks.items():
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    err = float(jnp.max(jnp.abs(got - want)))
    print(f"{name:26s} shape {str(got.shape):8s} max |error| = {err:.1e}")
"""),
    md(r"""
`mode="fwd"` (forward mode, one pass per *input*) and `mode="rev"` (reverse mode, one pass per
*output*) give the same table; the default `"auto"` picks the cheaper one from the shapes.
Forward mode wins when there are fewer inputs than outputs (a tall Jacobian), reverse mode when
there are fewer outputs, e.g. a scalar loss of many inputs such as $\lVert x\rVert^2$.
"""),
    code("""
for mode in ("fwd", "rev"):
    np.testing.assert_allclose(jj.input_jacobian(linear, W, x, mode=mode), W, rtol=1e-14)
print("forward and reverse mode agree")
"""),
    md(r"""
## The determinant in a change of variables

If $T$ maps a region $D'$ one-to-one onto $D$, then
$$\int_D g(u)\,du = \int_{D'} g(T(q))\,\bigl|\det J_T(q)\bigr|\,dq :$$
$|\det J_T|$ is the local area (volume) scaling of the previous section, so it converts area in
$q$-coordinates into area in $u$-coordinates.

**Polar coordinates.** $T(r, \theta) = (r\cos\theta,\; r\sin\theta)$ has
$$J_T = \begin{pmatrix}\cos\theta & -r\sin\theta\\ \sin\theta & r\cos\theta\end{pmatrix},
\qquad \det J_T = r\cos^2\theta + r\sin^2\theta = r,$$
the familiar $dx\,dy = r\,dr\,d\theta$. The library agrees at random points
(`jj.batch_jacobian_det` puts the batch axis first):
"""),
    code("""
def polar(q):
    r, theta = q
    return jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)])


lo, hi = jnp.array([0.0, 0.0]), jnp.array([2.0, 2 * np.pi])  # r in [0, 2], theta in [0, 2 pi]
qs = jax.random.uniform(jax.random.key(1), (5, 2), minval=lo, maxval=hi)
dets = jj.batch_jacobian_det(polar, qs)
for (r, th), d in zip(np.asarray(qs), np.asarray(dets)):
    print(f"r = {r:.4f}  theta = {th:.4f}   det J = {d:.4f}")
np.testing.assert_allclose(dets, qs[:, 0], rtol=1e-13)
"""),
    md(r"""
**The unit-disk integral.** In polar coordinates
$$\iint_{x^2+y^2\le 1} e^{-(x^2+y^2)}\,dx\,dy
= \int_0^{2\pi}\!\!\int_0^1 e^{-r^2}\, r\,dr\,d\theta = 2\pi\cdot\tfrac12\bigl(1 - e^{-1}\bigr)
= \pi\bigl(1 - 1/e\bigr) \approx 1.98587.$$

Numerically, with a tensor grid of Gauss-Legendre nodes $r_i\in(0, 1)$, $\theta_j\in(0, 2\pi)$
and weights $w_i, v_j$:
$$I_N = \sum_{i,j} w_i v_j\, g\bigl(T(r_i, \theta_j)\bigr)\,\bigl|\det J_T(r_i, \theta_j)\bigr| ,$$
with $|\det J_T|$ taken from the library rather than from the formula. The integrand is smooth
in $(r, \theta)$, so the error falls exponentially with the number of nodes; leaving the
determinant out gives a wrong answer however many nodes are used.
"""),
    code("""
def gauss_legendre(k, a, b):
    nodes, weights = np.polynomial.legendre.leggauss(k)  # on [-1, 1]
    return a + (b - a) * (nodes + 1) / 2, weights * (b - a) / 2


def disk_integral(k, use_det=True):
    r, wr = gauss_legendre(k, 0.0, 1.0)
    th, wt = gauss_legendre(k, 0.0, 2 * np.pi)
    R, TH = np.meshgrid(r, th, indexing="ij")
    q = jnp.stack([R.ravel(), TH.ravel()], axis=1)  # (k*k, 2)
    u = jax.vmap(polar)(q)
    g = jnp.exp(-jnp.sum(u**2, axis=1))
    jac = jnp.abs(jj.batch_jacobian_det(polar, q)) if use_det else 1.0
    return float(jnp.sum(jnp.outer(wr, wt).ravel() * g * jac))


exact = np.pi * (1 - 1 / np.e)
ks = np.arange(2, 13)
errors = [abs(disk_integral(int(k)) - exact) for k in ks]
print(f"exact                 {exact:.15f}")
print(f"Gauss-Legendre, 12x12 {disk_integral(12):.15f}")
print(f"without |det J|       {disk_integral(12, use_det=False):.15f}   (wrong: no area element)")
assert abs(disk_integral(12) - exact) < 1e-12

fig, ax = plt.subplots(figsize=(5.0, 3.2))
ax.semilogy(ks, np.maximum(errors, 1e-17), "o-")
ax.set(xlabel="nodes per coordinate", ylabel="|I_N - pi(1 - 1/e)|")
ax.set_title("Gauss-Legendre in polar coordinates")
ax.grid(True, which="both", alpha=0.3)
plt.show()
"""),
    md(r"""
The error reaches rounding level ($\sim10^{-15}$) with about ten nodes per coordinate.

**Takeaways.** `jj.input_jacobian(f, params, x)` gives the table $\partial f_i/\partial x_j$ in
the layout `f_out + x.shape`; `jj.jacobian_det` / `jj.batch_jacobian_det` give the volume
factor of a square map (and `jj.log_abs_det_jacobian` its logarithm, the term a normalizing flow
needs). Notebook 02 builds the Jacobian and Hessian of a neural network from these pieces.
"""),
]

# ------------------------------------------------------------------------------------------------
# 02: MLP Jacobian and Hessian
# ------------------------------------------------------------------------------------------------

NB02 = [
    md(r"""
# 02 · The Jacobian and Hessian of a tansig network, in closed form

A multilayer perceptron with hidden activation $\sigma$:
$$
a_0 = x,\qquad z_l = W_l a_{l-1} + b_l,\qquad a_l = \sigma(z_l)\quad(l = 1,\dots,n-1),\qquad
A(x) = W_n a_{n-1} + b_n .
$$
In jaxjac the parameters are a list of dicts `{"W": (out, in), "b": (out,)}`
(`jj.mlp_init`), the network is `jj.mlp_apply(params, x, activation)`, and the closed forms
live in `jj.closed_form`. This notebook derives the Jacobian and Hessian layer by layer,
implements the formulas in a few lines of NumPy-style JAX, and checks them against the library,
automatic differentiation and finite differences.
"""),
    code(
        """
import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

jax.config.update("jax_enable_x64", True)  # float64: finite differences as an accurate oracle
"""
        + PLOT_SETUP
    ),
    md(r"""
## tansig, and a formula that circulates

MATLAB's `tansig` is
$$\operatorname{tansig}(x) = \frac{2}{1 + e^{-2x}} - 1 = \tanh(x),$$
with $\sigma' = 1 - \sigma^2$ and $\sigma'' = -2\sigma(1 - \sigma^2)$. A formula often quoted for
it, $\frac{1}{1 + e^{-2x}} - 1$, is **wrong**: it is $\operatorname{logsig}(2x) - 1$, whose
range is $(-1, 0)$, not $(-1, 1)$, and it is not odd. jaxjac's registry carries the activation
with its exact derivatives:
"""),
    code("""
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
"""),
    md(r"""
## The Jacobian, layer by layer

Each step of the forward pass is one of the identities of notebook 01: $z_l = W_l a_{l-1} + b_l$
has Jacobian $W_l$ in $a_{l-1}$, and $a_l = \sigma(z_l)$ has Jacobian
$\operatorname{diag}(\sigma'(z_l))$. The chain rule multiplies them:
$$
J = \frac{\partial A}{\partial x} = W_n\,\operatorname{diag}(\sigma'(z_{n-1}))\,W_{n-1}\cdots
\operatorname{diag}(\sigma'(z_1))\,W_1 \qquad (n_\text{out}\times n_\text{in}).
$$
The product can be accumulated from the right (carrying $n_\text{in}$ columns, forward mode) or
from the left ($n_\text{out}$ rows, reverse mode); `jj.closed_form.mlp_jacobian` picks the
cheaper order (`jj.closed_form.jacobian_cost`). Below the formula is written out directly and
compared with the library's closed form and with autodiff (`jj.input_jacobian`).
"""),
    code("""
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
    for layer, z in zip(params[1:], zs):
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
"""),
    md(r"""
## Deriving the Hessian

Fix an output $k$. Write $\delta_{l,k} = \partial A_k/\partial a_l$ (a row vector, the *adjoint*
of layer $l$) and $Jz_l = \partial z_l/\partial x$ (the pre-activation Jacobian). They obey
$$
\delta_{n-1,k} = W_n[k,:],\qquad \delta_{l-1,k} = (\delta_{l,k}\odot\sigma'(z_l))\,W_l ;
\qquad Jz_1 = W_1,\qquad Jz_l = W_l\,\operatorname{diag}(\sigma'(z_{l-1}))\,Jz_{l-1}.
$$

Two rules for how a Hessian passes through one step of the network suffice. Let $F$ be a
scalar function of the step's output (here: the rest of the network, up to $A_k$).

1. **Affine step** $z = Wa + b$: $\;\nabla_a F = W^\top\nabla_z F$ and
   $\nabla^2_a F = W^\top\,(\nabla^2_z F)\,W$: an affine map adds no curvature of its own.
2. **Elementwise step** $a = \sigma(z)$, $D = \operatorname{diag}(\sigma'(z))$: $\;\nabla_z F =
   D\,\nabla_a F$ and, by the product rule on $\partial F/\partial z_j = \sigma'(z_j)\,\partial
   F/\partial a_j$,
   $$\nabla^2_z F = D\,(\nabla^2_a F)\,D
   + \operatorname{diag}\bigl(\sigma''(z)\odot\nabla_a F\bigr).$$
   The second term is the only place curvature enters.

Start at the top: $A_k = W_n[k]\,a_{n-1} + b_{n,k}$ is affine, so $\nabla^2_{a_{n-1}}A_k = 0$,
and $\nabla_{a_l}A_k = \delta_{l,k}^\top$ by definition. Walk down, applying rule 2 at every
activation and rule 1 at every linear layer ($D_l = \operatorname{diag}(\sigma'(z_l))$,
$S_l = \operatorname{diag}(\sigma''(z_l)\odot\delta_{l,k})$):
$$
H_k = W_1^\top\Bigl[S_1 + D_1W_2^\top\Bigl[S_2
  + D_2W_3^\top\bigl[\cdots\bigr]W_3D_2\Bigr]W_2D_1\Bigr]W_1 .
$$
Multiplying out, $S_l$ is sandwiched between $W_lD_{l-1}W_{l-1}\cdots D_1W_1 = Jz_l$ and its
transpose. Hence
$$
\boxed{\;H_k = \frac{\partial^2 A_k}{\partial x\,\partial x^\top}
= \sum_{l=1}^{n-1} Jz_l^\top\,\operatorname{diag}\bigl(\sigma''(z_l)\odot\delta_{l,k}\bigr)\,Jz_l\;}
$$
every hidden unit contributes its curvature $\sigma''$ once, weighted by how strongly the output
sees it ($\delta_{l,k,j}$) and projected onto the input through $Jz_l$.

Each term is a symmetric $n_\text{in}\times n_\text{in}$ matrix; a linear network
($\sigma''\equiv 0$) has $H = 0$, as it must.

*Check on one hidden layer* ($n = 2$): $A_k = W_2[k]\,\sigma(W_1x + b_1) + b_{2,k}$, so
$\nabla A_k = W_1^\top(\sigma'(z_1)\odot W_2[k]^\top)$ and
$H_k = W_1^\top\operatorname{diag}(\sigma''(z_1)\odot W_2[k])\,W_1$: the formula with
$\delta_{1,k} = W_2[k]$ and $Jz_1 = W_1$.
"""),
    code("""
def hessian_by_hand(params, x):
    zs, out = forward(params, x)
    n_hidden = len(zs)
    # Adjoints delta_l (n_out, h_l), from the top hidden layer down.
    deltas = [None] * n_hidden
    deltas[-1] = params[-1]["W"]
    for l in range(n_hidden - 1, 0, -1):
        deltas[l - 1] = (deltas[l] * sigma.df(zs[l])) @ params[l]["W"]
    # Pre-activation Jacobians Jz_l (h_l, n_in), and the sum over layers.
    H = jnp.zeros((out.shape[0], x.shape[0], x.shape[0]))
    Jz = params[0]["W"]
    for l in range(n_hidden):
        if l > 0:
            Jz = params[l]["W"] @ (sigma.df(zs[l - 1])[:, None] * Jz)
        c = deltas[l] * sigma.d2f(zs[l])  # (n_out, h_l): sigma''(z_l) * delta_{l,k}
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
"""),
    md(r"""
## The cross-check table

`jj.cross_check(params, x, activation)` compares every route to the Jacobian (closed form,
`jacfwd`, `jacrev`, central finite differences) and to the Hessian (closed form, `jax.hessian`,
`jacrev(jacrev)`, finite differences of the closed-form Jacobian), pair by pair, with
tolerances derived from the dtype: roughly $1000\,\varepsilon$ for exact pairs, and
$100\,\varepsilon^{2/3}$ for pairs with finite differences (a central difference with step
$h\sim\varepsilon^{1/3}$ has truncation error $O(h^2)$ and rounding error
$O(\varepsilon/h)$, both $O(\varepsilon^{2/3})$).
"""),
    code("""
report = jj.cross_check(params, x, "tansig")
print(report)
assert report.passed
"""),
    md(r"""
### Our own table, and the finite-difference step

The same comparison written out: the closed form against autodiff and against float64 central
differences
$$\frac{\partial A}{\partial x_j}\approx\frac{A(x + h e_j) - A(x - h e_j)}{2h},\qquad
\frac{\partial^2 A}{\partial x_i\partial x_j}\approx
\frac{J(x + h e_j) - J(x - h e_j)}{2h}\Big|_{\text{column } i},$$
over a batch of 64 random inputs (`jj.closed_form.mlp_hessian` and `jj.batch_input_hessian`
take the batch axis first).
"""),
    code("""
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
"""),
    md(r"""
Autodiff agrees with the closed form to rounding ($\sim10^{-16}$ relative); finite differences to
$\sim10^{-10}$, as predicted. The step matters: sweeping $h$ shows the V shape of truncation
error ($\propto h^2$, right) against rounding error ($\propto\varepsilon/h$, left), with the
minimum near $h = \varepsilon^{1/3}\approx 6\times10^{-6}$.
"""),
    code("""
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
"""),
    md(r"""
## The Hessian as a picture

$H_k$ is symmetric; its diagonal entries are the curvatures along each input, the off-diagonal
entries the interactions between two inputs. Plotted for both outputs at the point $x$ above
(a diverging colour map centred on zero):
"""),
    code("""
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
"""),
    md(r"""
Where the eigenvalues have mixed signs the Hessian at $x$ is **indefinite**: the curvature of
that output is saddle-shaped, bending up along some input directions and down along others.
That describes the curvature only: $x$ is not a saddle *point* (not a critical point at all),
because its gradient there (row $k$ of $J$, whose norm is printed above) is not zero.

**Takeaways.** `jj.closed_form.mlp_jacobian` / `mlp_hessian` evaluate the formulas above for one
input or a batch, `jj.input_jacobian` / `jj.input_hessian` (and their `batch_` forms) do the same
for any `f(params, x)` by autodiff, and `jj.cross_check` shows that they agree. Notebook 03 uses
these derivatives over a whole data set for global sensitivity analysis.
"""),
]

# ------------------------------------------------------------------------------------------------
# 03: sensitivity analysis
# ------------------------------------------------------------------------------------------------

NB03 = [
    md(r"""
# 03 · Global sensitivity of a trained network: DGSM on the Ishigami function

Which inputs of a model matter? The **derivative-based global sensitivity measure** (DGSM,
Sobol' and Kucherenko 2009) of input $x_i$ is the mean squared partial derivative over the input
distribution,
$$\nu_i = \mathbb{E}\Bigl[\Bigl(\frac{\partial f}{\partial x_i}\Bigr)^2\Bigr],$$
and for $x_i$ uniform on $[a, b]$ it bounds the total Sobol index:
$S^T_i\le \frac{(b-a)^2}{\pi^2}\,\frac{\nu_i}{\operatorname{Var} f}$.

A trained network has exact derivatives, so its DGSM can be computed exactly per sample
(`jj.sensitivity`, closed-form route for jaxjac MLPs). Here we fit an MLP to the **Ishigami
function**, a standard test case with known answers, and compare the network's DGSM to the
true function's.
"""),
    code(
        """
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxjac as jj
"""
        + PLOT_SETUP
    ),
    md(r"""
## The Ishigami function and its DGSM

$$f(x) = \sin x_1 + a\sin^2 x_2 + b\,x_3^4\sin x_1,\qquad x\sim U[-\pi,\pi]^3,\quad
a = 7,\ b = 0.1.$$

Its partial derivatives are
$\partial_1 f = \cos x_1\,(1 + b x_3^4)$, $\partial_2 f = 2a\sin x_2\cos x_2 = a\sin 2x_2$,
$\partial_3 f = 4b\,x_3^3\sin x_1$. With $\mathbb{E}[\cos^2 x] = \mathbb{E}[\sin^2 x] = \tfrac12$
and $\mathbb{E}[x^{2m}] = \pi^{2m}/(2m+1)$ on $U[-\pi,\pi]$ (inputs independent):
$$
\nu_1 = \tfrac12\Bigl(1 + \tfrac{2b\pi^4}{5} + \tfrac{b^2\pi^8}{9}\Bigr),\qquad
\nu_2 = \tfrac{a^2}{2},\qquad
\nu_3 = 16b^2\,\tfrac{\pi^6}{7}\cdot\tfrac12 = \tfrac{8b^2\pi^6}{7}.
$$
"""),
    code("""
A, B = 7.0, 0.1


def ishigami(_, x):  # f(params, x) for one example x of shape (3,); returns (1,)
    return jnp.sin(x[0:1]) + A * jnp.sin(x[1:2]) ** 2 + B * x[2:3] ** 4 * jnp.sin(x[0:1])


pi = np.pi
nu_exact = np.array(
    [0.5 * (1 + 2 * B * pi**4 / 5 + B**2 * pi**8 / 9), A**2 / 2, 8 * B**2 * pi**6 / 7]
)
print("analytic DGSM nu =", np.round(nu_exact, 4))
"""),
    md(r"""
## Fitting a network

A `[3, 64, 64, 1]` tanh network trained with 8000 full-batch Adam steps (learning rate
$10^{-2}$, cosine-decayed) in float32 on 4096 uniform samples: 10 to 20 seconds on a
CPU. Targets are standardised for training, and the scaling is then folded back into the last
layer ($W_3 \leftarrow s\,W_3$, $b_3\leftarrow s\,b_3 + m$), so the trained `params` represent
$f$ itself in its own units, and remain a plain jaxjac MLP.
"""),
    code("""
key_train, key_test, key_init = jax.random.split(jax.random.key(0), 3)
lo, hi = -np.pi, np.pi
x_train = jax.random.uniform(key_train, (4096, 3), jnp.float32, lo, hi)
x_test = jax.random.uniform(key_test, (4096, 3), jnp.float32, lo, hi)
y_train = jax.vmap(lambda x: ishigami(None, x))(x_train)
y_test = jax.vmap(lambda x: ishigami(None, x))(x_test)
y_mean, y_std = y_train.mean(), y_train.std()

net = jj.mlp_function("tanh")  # f(params, x) = mlp_apply(params, x, "tanh"), one cached object
params = jj.mlp_init(key_init, [3, 64, 64, 1], dtype=jnp.float32)
steps = 8000
tx = optax.adam(optax.cosine_decay_schedule(1e-2, steps, alpha=1e-3))
opt_state = tx.init(params)


def loss(params, x, y):
    return jnp.mean((jj.mlp_apply(params, x, "tanh") - (y - y_mean) / y_std) ** 2)


@jax.jit
def train_step(params, opt_state):
    value, grads = jax.value_and_grad(loss)(params, x_train, y_train)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


start, history = time.perf_counter(), []
for step in range(steps):
    params, opt_state, value = train_step(params, opt_state)
    if step % 50 == 0 or step == steps - 1:
        history.append((step, float(value)))
seconds = time.perf_counter() - start
print(f"trained {steps} Adam steps in {seconds:.1f} s, final loss {history[-1][1]:.2e}")

# Fold the target scaling into the last layer: the network now predicts f itself.
params[-1] = {"W": params[-1]["W"] * y_std, "b": params[-1]["b"] * y_std + y_mean}
pred = jj.mlp_apply(params, x_test, "tanh")
r2 = 1 - float(jnp.mean((pred - y_test) ** 2) / jnp.var(y_test))
print(f"test R^2 = {r2:.5f}")

fig, ax = plt.subplots(figsize=(5.0, 3.0))
ax.semilogy(*zip(*history))
ax.set(xlabel="Adam step", ylabel="training loss (standardised MSE)")
plt.show()
"""),
    md(r"""
## DGSM of the network, exactly

`jj.sensitivity(f, params, xs, ...)` streams the samples in chunks, takes each example's Jacobian
(for a jaxjac MLP by the closed form) and accumulates, per output $k$ and input $i$,
$\mathbb{E}|\partial_i f_k|$, $\mathbb{E}[\partial_i f_k]$ and $\nu_{ik} = \mathbb{E}[(\partial_i
f_k)^2]$ with standard errors, in float64. With `bounds` it adds the Sobol upper bound, with
`hessian=True` the interaction strengths $\mathbb{E}|\partial^2 f_k/\partial x_i\partial x_j|$.

We evaluate both the network (closed-form route) and the true Ishigami function (autodiff route:
`jj.sensitivity` accepts any `f(params, x)`) on 50 000 fresh samples; the latter is the Monte
Carlo estimate of the analytic $\nu$ and shows the sampling error alone.
"""),
    code("""
x_eval = np.asarray(jax.random.uniform(jax.random.key(3), (50_000, 3), jnp.float32, lo, hi))
names = ["x1", "x2", "x3"]
start = time.perf_counter()
options = dict(chunk_size=8192, feature_names=names, bounds=[lo, hi], hessian=True)
rep_net = jj.sensitivity(net, params, x_eval, **options)
rep_true = jj.sensitivity(ishigami, None, x_eval.astype(np.float64), **options)
print(f"two sensitivity runs in {time.perf_counter() - start:.1f} s")
print(f"routes: network {rep_net.route}, true function {rep_true.route}")

nu_true, se_true = rep_true.dgsm[0], rep_true.dgsm_se[0]
nu_net, se_net = rep_net.dgsm[0], rep_net.dgsm_se[0]
print(
    f"{'input':6s} {'analytic nu':>12s} {'true f, MC':>16s} {'network':>16s}"
    f" {'net/analytic':>13s} {'net/(true f, MC)':>17s}"
)
for i, name in enumerate(names):
    print(
        f"{name:6s} {nu_exact[i]:12.3f} {nu_true[i]:8.3f} ± {se_true[i]:5.3f}"
        f" {nu_net[i]:8.3f} ± {se_net[i]:5.3f} {nu_net[i] / nu_exact[i]:13.3f}"
        f" {nu_net[i] / nu_true[i]:17.3f}"
    )
assert np.allclose(nu_net, nu_true, rtol=0.1)  # the fit's derivatives are right to < 10 %

# Which input is furthest off depends on the reference: computed here, not named in the prose.
gap_analytic = np.abs(nu_net / nu_exact - 1)  # fit error + Monte Carlo error of x_eval
gap_same = np.abs(nu_net / nu_true - 1)  # same samples: the Monte Carlo error cancels
for label, gap in (("against the analytic nu", gap_analytic), ("on the same samples", gap_same)):
    i = int(np.argmax(gap))
    print(f"largest gap {label:24s}: {names[i]} ({100 * gap[i]:.1f} %)")
# The fit's own error sits in x1 and x3, whose DGSM comes from the edges |x3| -> pi (below).
assert names[int(np.argmin(gap_same))] == "x2"
"""),
    code("""
width = 0.27
pos = np.arange(3)
fig, ax = plt.subplots(figsize=(6.0, 3.4))
ax.bar(pos - width, nu_exact, width, label="analytic (true f)")
ax.bar(pos, nu_true, width, yerr=2 * se_true, capsize=3, label="true f, Monte Carlo")
ax.bar(pos + width, nu_net, width, yerr=2 * se_net, capsize=3, label="trained network")
ax.set_xticks(pos, [f"$x_{i + 1}$" for i in range(3)])
ax.set_ylabel(r"DGSM $\\nu_i = E[(\\partial f/\\partial x_i)^2]$")
ax.set_title("Ishigami: DGSM of the function and of its fit (±2 s.e.)")
ax.legend(fontsize=8)
plt.show()
"""),
    md(r"""
The network's DGSM matches the true function's to within a few per cent (the last column
compares on the same samples, so the Monte Carlo error cancels). Fitting the values well also
fitted the derivatives, which is not guaranteed in general: a network can match values and still
wiggle between the samples, and this comparison is how one checks it.

The two references need not single out the same input (the cell above prints which is furthest
off for each). Against the analytic $\nu$ the gap also holds the Monte Carlo error of the
50 000 evaluation samples, of the order of its standard error (about 1 % for $x_1$ and $x_3$);
on the same samples that error cancels, and what is left is the fit's own error in the
derivatives. That error sits in $x_1$ and $x_3$: both $\partial_1 f = \cos x_1\,(1 + b x_3^4)$
and $\partial_3 f = 4b\,x_3^3\sin x_1$ grow like powers of $x_3$, so their DGSM comes mostly
from the edges $|x_3|\to\pi$, where the training data surround a point from one side only and
the derivatives are least constrained. $\partial_2 f = a\sin 2x_2$ is bounded and periodic, and
$x_2$ is matched best.

The ranking by DGSM, $x_2 > x_3 > x_1$, differs from the ranking by total Sobol index ($x_1$
first, below): DGSM weights steep regions, and the steep $x_3^4$ term at the edges of the domain
inflates $\nu_3$.

**Sobol upper bounds.** With `bounds=[-π, π]` the report carries
$\frac{(b-a)^2}{\pi^2}\,\nu_i/\operatorname{Var}f = 4\nu_i/\operatorname{Var}f$, an upper bound on
the total Sobol index $S^T_i$. The exact indices of the Ishigami function are known in closed
form (with $\operatorname{Var}f = a^2/8 + b\pi^4/5 + b^2\pi^8/18 + 1/2$):
"""),
    code("""
var_f = A**2 / 8 + B * pi**4 / 5 + B**2 * pi**8 / 18 + 0.5
v1 = 0.5 * (1 + B * pi**4 / 5) ** 2
v13 = B**2 * pi**8 * (1 / 18 - 1 / 50)
total_sobol = np.array([(v1 + v13) / var_f, (A**2 / 8) / var_f, v13 / var_f])
print(f"{'input':6s} {'S_T exact':>10s} {'bound, true f':>14s} {'bound, network':>15s}")
for i, name in enumerate(names):
    bound_true, bound_net = rep_true.sobol_upper[0, i], rep_net.sobol_upper[0, i]
    print(f"{name:6s} {total_sobol[i]:10.3f} {bound_true:14.3f} {bound_net:15.3f}")
assert np.all(rep_true.sobol_upper[0] >= total_sobol)
"""),
    md(r"""
The bounds hold, but here they are all above 1, so they say nothing absolute. The Poincaré
constant $(b-a)^2/\pi^2$ is attained only by an effect shaped like half a cosine period across
the interval, $\cos(\pi(x - a)/(b - a))$. The Ishigami effects oscillate faster: $\sin x_1$ is a
full period (frequency $\times2$, the bound is loose by about $2^2 = 4$) and
$\sin^2 x_2 = (1 - \cos 2x_2)/2$ two full periods (loose by exactly $4^2 = 16$). DGSM bounds
are useful for screening smooth, slowly varying models; for oscillating ones, the DGSM itself is
the informative number.

## Interactions

With `hessian=True` the report holds $\mathbb{E}|\partial^2 f/\partial x_i\partial x_j|$. For the
Ishigami function the only mixed term is $b\,x_3^4\sin x_1$: $\partial_1\partial_3 f = 4b\,x_3^3\cos
x_1$ (mean $0.4\,\mathbb{E}|x_3^3|\,\mathbb{E}|\cos x_1| = 0.4\cdot\frac{\pi^3}{4}\cdot\frac{2}{\pi}
\approx 1.97$), while $x_2$ interacts with nothing. The diagonal holds the mean absolute
curvature of each input's own effect (for $x_2$: $\mathbb{E}|2a\cos 2x_2| = 4a/\pi \approx 8.91$).
The network's Hessian should show the same structure:
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.3), layout="constrained")
vmax = max(rep_net.interactions.max(), rep_true.interactions.max())
panels = ((axes[0], rep_true, "true Ishigami function"), (axes[1], rep_net, "trained network"))
for ax, rep, title in panels:
    strength = rep.interactions[0]  # (n_in, n_in): E|d²f/dx_i dx_j|
    im = ax.imshow(strength, cmap="viridis", vmin=0, vmax=vmax)
    for i in range(3):
        for j in range(3):
            color = "w" if strength[i, j] < vmax / 2 else "k"
            ax.text(j, i, f"{strength[i, j]:.2f}", ha="center", va="center", color=color)
    ax.set_xticks(range(3), names)
    ax.set_yticks(range(3), names)
    ax.set_title(title)
fig.colorbar(im, ax=axes, shrink=0.8, label="E|d²f/dx_i dx_j|")
plt.show()
"""),
    md(r"""
The network reproduces the $x_1$–$x_3$ interaction and the large curvature in $x_2$; the small
spurious $x_2$ interactions are where its second derivatives are least constrained by the data:
second derivatives of a fit are one step further from the values it was trained on.

The library also draws these figures for any report (`jj.plot_sensitivity`,
`jj.plot_interactions`, PNG to a path or file object), and the command-line tool
`jaxjac sensitivity` runs the same analysis on a saved model and a data file. Here it runs in a
temporary folder on the trained network (see the README for every option):
"""),
    code("""
import subprocess
import sys
import tempfile
from pathlib import Path

from IPython.display import Image

# Everything is written into a temporary folder, removed at the end of the cell.
with tempfile.TemporaryDirectory(prefix="jaxjac_nb03_") as tmp:
    work = Path(tmp)
    jj.save_params(work / "model.npz", params)
    np.save(work / "data.npy", x_eval[:10_000])
    # The same as `jaxjac sensitivity ...` in a shell, run in the temporary folder.
    cmd = [sys.executable, "-m", "jaxjac.cli", "sensitivity", "--params", "model.npz",
           "--data", "data.npy", "--activation", "tanh", "--out", "results",
           "--bounds=-3.14159265:3.14159265"]
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True)
    print(run.stdout)
    print(sorted(p.name for p in (work / "results").iterdir()))
    figure = Image(filename=str(work / "results" / "sensitivity.png"), width=480)  # read now
figure
"""),
    md(r"""
**Takeaways.** `jj.sensitivity` turns exact per-example Jacobians (and Hessians) into global
sensitivity measures with standard errors, for any `f(params, x)`; for jaxjac MLPs it uses the
closed forms of notebook 02. On the Ishigami function, the network's DGSM agrees with the
analytic values, which is a check on the fit's *derivatives*, not only its values.
"""),
]

# ------------------------------------------------------------------------------------------------
# 04: batched, chunked and sharded
# ------------------------------------------------------------------------------------------------

NB04 = [
    md(r"""
# 04 · Batched, chunked and multi-device Jacobians

A data set's Jacobians are one per example: for $B$ inputs of size $n_\text{in}$ and outputs of
size $n_\text{out}$ the result is a `(B, n_out, n_in)` array. This notebook shows how jaxjac
scales that computation: **vectorised** over the batch (`jj.batch_input_jacobian`), **planned**
(closed form or autodiff, forward or reverse, explained by `jj.explain`), **chunked** to bound
memory (`chunk_size=` or `max_memory_bytes=`), and **sharded** over several devices
(`jj.sharded`, from `jaxjac.sharding`).

The first cell asks XLA for 8 CPU "devices" *before JAX is imported*. On a real machine these
would be GPUs or TPUs; on a CPU they are 8 partitions of the host, enough to see the sharding
at work, not to measure speed-ups (this notebook is built on a 2-core machine).
"""),
    code(
        """
import os

# Must run before JAX is imported: the device count is fixed when the backend starts.
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

print(jax.devices())
"""
        + PLOT_SETUP
    ),
    md(r"""
## Batched Jacobians

`jj.batch_input_jacobian(f, params, xs)` computes every example's Jacobian inside one compiled
program (no cross-example terms are formed). For jaxjac's own MLP (`jj.mlp_function`) it takes
the closed form of notebook 02, for any other `f(params, x)` autodiff (`route="autodiff"` forces
that route here). Both are compared with a Python loop over `jj.input_jacobian`, one call per
example, on a `[32, 256, 256, 8]` tanh network in float32:
"""),
    code("""
sizes = [32, 256, 256, 8]
params = jj.mlp_init(jax.random.key(0), sizes)  # float32
net = jj.mlp_function("tanh")
xs = jax.random.normal(jax.random.key(1), (2048, sizes[0]))


def timed(fn, repeat=3):
    jax.block_until_ready(fn())  # compile and warm up
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


Js = jj.batch_input_jacobian(net, params, xs)
Js_auto = jj.batch_input_jacobian(net, params, xs, route="autodiff")
Js_loop = jnp.stack([jj.input_jacobian(net, params, x) for x in xs[:64]])
np.testing.assert_allclose(Js, Js_auto, rtol=1e-4, atol=1e-6)
np.testing.assert_allclose(Js[:64], Js_loop, rtol=1e-4, atol=1e-6)
print("batched Jacobians:", Js.shape, Js.dtype, "- closed form, autodiff and the loop agree")

t_closed = timed(lambda: jj.batch_input_jacobian(net, params, xs))
t_auto = timed(lambda: jj.batch_input_jacobian(net, params, xs, route="autodiff"))
t_loop = timed(lambda: [jj.input_jacobian(net, params, x) for x in xs[:128]], repeat=1)
timings = {
    "batched, closed form": t_closed,
    "batched, autodiff": t_auto,
    "Python loop (from 128 calls)": t_loop * len(xs) / 128,
}
for name, t in timings.items():
    print(f"{name:30s} {t * 1e3:8.1f} ms for {len(xs)} Jacobians")
"""),
    md(r"""
## Why did the library do that? `jj.explain`

The batched helpers leave three decisions to one resolver (`jj.routes`): the **route** (closed form for jaxjac
MLPs, else autodiff), the **accumulation order** (forward mode carries $n_\text{in}$ tangents,
reverse mode $n_\text{out}$ cotangents; the closed form counts multiply-adds of the two matrix
product orders), and the **chunk size** (from a memory budget, if one is given).
`jj.explain(task, f, params, xs, ...)` returns that plan (a `jj.Plan`) with one reason per
decision, the size of the result, and XLA's own estimates of temporary memory and FLOPs,
measured by compiling the program on small batches:
"""),
    code("""
print(jj.explain("input_jacobian", net, params, xs))
print()
print(jj.explain("input_jacobian", net, params, xs, route="autodiff"))
print()


def two_layer(p, x):  # not a jaxjac MLP: autodiff, and the Hessian is forward-over-reverse
    return jnp.tanh(p["W2"] @ jnp.tanh(p["W1"] @ x))


k1, k2 = jax.random.split(jax.random.key(2))
p2 = {"W1": jax.random.normal(k1, (64, 32)) / 6, "W2": jax.random.normal(k2, (4, 64)) / 8}
print(jj.explain("input_hessian", two_layer, p2, xs))
"""),
    md(r"""
## Chunking, and what it does to memory

Vectorising over all $B$ examples at once keeps every example's intermediates alive together:
for each hidden layer an `(n_out, h)` block of the Jacobian product per example, so temporary
memory grows like $B\cdot n_\text{out}\cdot\sum_l h_l$, on top of the `(B, n_out, n_in)` result.
`chunk_size=c` processes $c$ examples at a time (a sequential loop over chunks, each chunk's
result written into the output in place): the intermediates scale with $c$ instead of $B$, plus
one chunk's result on its way into the output; the result and the arithmetic are the same.

**How memory is measured.** A jitted call can be lowered and compiled without running it:
`jax.jit(fn).lower(*args).compile().memory_analysis()` reports the bytes XLA's buffer assignment
reserves for the program's arguments, outputs and **temporaries**. Buffer assignment already
reuses memory between buffers whose lifetimes do not overlap, so the temporary size is the
program's peak scratch memory: known before anything runs, deterministic, and independent of
other processes on the machine (unlike the peak RSS of a process, which also counts the Python
interpreter, JAX itself and the allocator's caching). Peak memory of a call is about
arguments + outputs + temporaries. The resolver (`jj.explain`) uses the same analysis, so its
estimate $\text{fixed} + c\cdot(\text{per example} + \text{result per example})$ is drawn next
to the measurement.
"""),
    code("""
B = 4096
xs_big = jax.random.normal(jax.random.key(4), (B, sizes[0]))
chunk_sizes = [16, 64, 256, 1024, None]
ref = jj.batch_input_jacobian(net, params, xs_big)
measured = {}
for route in ("closed_form", "autodiff"):
    for c in chunk_sizes:
        call = jax.jit(lambda p, x: jj.batch_input_jacobian(net, p, x, route=route, chunk_size=c))
        compiled = call.lower(params, xs_big).compile()
        mem = compiled.memory_analysis()
        seconds = timed(lambda: compiled(params, xs_big), repeat=3)
        plan = jj.explain("input_jacobian", net, params, xs_big, route=route, chunk_size=c)
        temp, out = mem.temp_size_in_bytes, mem.output_size_in_bytes
        measured[route, c or B] = (temp, out, plan.temp_bytes, seconds)
        print(
            f"{route:11s} chunk_size={str(c):5s} temporaries {temp / 2**20:7.2f} MiB"
            f" (resolver: {plan.temp_bytes / 2**20:6.2f} MiB)   output {out / 2**20:5.2f} MiB"
            f"   {seconds * 1e3:6.1f} ms"
        )
        np.testing.assert_allclose(compiled(params, xs_big), ref, rtol=1e-4, atol=1e-6)
odd = jj.batch_input_jacobian(net, params, xs_big, chunk_size=100)
np.testing.assert_allclose(odd, ref, rtol=1e-4, atol=1e-6)
print("every chunk size, and chunk_size=100 (which does not divide 4096), gives the same Jacobians")
"""),
    code("""
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.4), layout="constrained")
for route, marker in (("closed_form", "o"), ("autodiff", "s")):
    cs = [c for (r, c) in measured if r == route]
    temp, out, pred, secs = (np.array(v, float) for v in zip(*(measured[route, c] for c in cs)))
    (line,) = ax0.loglog(cs, temp / 2**20, marker + "-", label=f"{route}: measured")
    ax0.loglog(cs, pred / 2**20, marker + ":", color=line.get_color(), label=f"{route}: resolver")
    ax1.semilogx(cs, secs * 1e3, marker + "-", label=route)
ax0.axhline(out[0] / 2**20, color="0.4", ls="--", lw=1, label="output (B, n_out, n_in)")
ax0.set(xlabel="chunk size (examples at a time)", ylabel="MiB", title=f"temporary memory, B = {B}")
ax0.legend(fontsize=7)
ax1.set(xlabel="chunk size", ylabel="ms per call", title="time (2 CPU cores)", ylim=(0, None))
ax1.legend(fontsize=8)
plt.show()
"""),
    md(r"""
Temporary memory grows linearly with the chunk size, while the time hardly depends on it: on a
CPU a chunk of a few hundred examples is as fast as the whole batch or faster (its intermediates
stay in cache), at a small fraction of the memory. The closed form knows this: given a large
batch in one piece it steps through blocks of a few MiB of rows by itself (512 rows here), so
its whole-batch temporaries stop at 8.5 MiB where autodiff's reach 64 MiB, and the resolver's
estimate (`step_rows` in `jj.explain`) follows it. On a GPU, larger chunks pay off until the
device is saturated. (Timings here are taken on a shared 2-core machine: expect noise.)
The output cannot shrink: when even `(B, n_out, n_in)` is too large, reduce as you go (below,
or `jj.sensitivity`, which streams chunks and keeps only running statistics).

**A memory budget instead of a chunk size.** `max_memory_bytes=` asks the resolver for the largest
chunk whose temporaries fit; `jj.explain` shows its choice, and the compiled program confirms it:
"""),
    code("""
budget = 8 * 2**20
print(jj.explain("input_jacobian", net, params, xs_big, max_memory_bytes=budget))
call = jax.jit(lambda p, x: jj.batch_input_jacobian(net, p, x, max_memory_bytes=budget))
temp = call.lower(params, xs_big).compile().memory_analysis().temp_size_in_bytes
print(
    f"\\ncompiled program: {temp / 2**20:.2f} MiB of temporaries"
    f" for a budget of {budget / 2**20:.0f} MiB (within budget: {temp <= budget})"
)
assert temp <= budget, "the resolver's chunk must fit the budget it was given"
np.testing.assert_allclose(call(params, xs_big), ref, rtol=1e-4, atol=1e-6)
"""),
    md(r"""
## Multi-device Jacobians: `jj.sharded`

`jj.sharded(helper)` (from `jaxjac.sharding`) wraps any batched helper, one whose batch argument
`xs` has the batch axis first: the batch is split over a 1-D device mesh (`jj.make_mesh`), each
device runs the helper on its own rows inside `jax.shard_map`, and `params` are replicated. The
result is the same array, laid out over the devices. A batch that the device count does not
divide is padded with copies of its last row and trimmed.
"""),
    code("""
mesh = jj.make_mesh()  # every device, one axis called "batch"
print("mesh:", dict(mesh.shape))

sharded_jacobian = jj.sharded(jj.batch_input_jacobian)
Js_sharded = sharded_jacobian(net, params, xs)
np.testing.assert_allclose(Js_sharded, Js, rtol=1e-5, atol=1e-6)
print("result", Js_sharded.shape, "sharding:", Js_sharded.sharding.spec)
for shard in Js_sharded.addressable_shards[:3]:
    print(f"  {shard.device}: rows {shard.index[0].start}:{shard.index[0].stop}")
print("  ...")
"""),
    md(r"""
Each device holds a contiguous block of $B/8$ rows. Chunking composes: the helper's own
`chunk_size` (or `jj.sharded(..., chunk_size=...)`) applies *per device*.

**Reductions without gathering.** Often only a statistic over the batch is wanted, e.g. the
average $\mathbb{E}[J^\top J]$ (an input-space Gauss-Newton matrix: its top eigenvectors are the
input directions the network is most sensitive to). With `reduce="sum"` each device sums its
own rows and one `psum` combines the devices: nothing of size $B$ is ever gathered.
`reduce="moments"` returns a numerically stable (count, mean, M2) for variances.
`jj.batch_jacobian_gram` ($J^\top J$), `jj.batch_jacobian_abs_sq` ($|J|$, $J^2$) and
`jj.batch_jacobian_norm` ($\lVert J\rVert_F$) are the usual summands.
"""),
    code("""
gram_sum = jj.sharded(jj.batch_jacobian_gram, reduce="sum")
res = gram_sum(net, params, xs, chunk_size=64)
EJtJ = res.total / res.count
print("count:", int(res.count), "  E[JᵀJ]:", EJtJ.shape)
np.testing.assert_allclose(EJtJ, jnp.einsum("boi,boj->ij", Js, Js) / len(xs), rtol=1e-4, atol=1e-6)

norm_moments = jj.sharded(jj.batch_jacobian_norm, reduce="moments")(net, params, xs)
std = jnp.sqrt(norm_moments.m2 / (norm_moments.count - 1))
print(f"||J||_F over the batch: mean {float(norm_moments.mean):.4f}, std {float(std):.4f}")

evals = jnp.linalg.eigvalsh(EJtJ)[::-1]
one = jnp.linalg.eigvalsh(Js[0].T @ Js[0])[::-1]
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.semilogy(np.arange(1, 33), evals, "o-", ms=3, label=r"$E[J^\\top J]$ over 2048 inputs")
ax.semilogy(np.arange(1, 9), one[:8], "s", ms=4, label=r"$J^\\top J$ of one input (8 non-zero)")
ax.set(xlabel="index", ylabel="eigenvalue")
ax.set_title("input-space Gauss-Newton spectrum (8 devices, psum)")
ax.legend(fontsize=8)
plt.show()
"""),
    md(r"""
One input's $J^\top J$ has rank at most $n_\text{out} = 8$ (its other 24 eigenvalues are zero
up to float32 rounding), but averaging over the batch fills the spectrum: different inputs are
sensitive in different directions.

**Takeaways.** `jj.batch_input_jacobian` vectorises per-example Jacobians by the cheapest route;
`jj.explain` says which route and why, with memory and FLOPs; `chunk_size=` or
`max_memory_bytes=` bound memory at little cost in speed; `jj.sharded` spreads any batched helper
over devices and reduces across them without gathering; and `jax.jit(...).lower(...).compile()`
shows any program's memory before it runs.
"""),
]

NOTEBOOKS = {
    "01_jacobian_basics.ipynb": NB01,
    "02_mlp_jacobian_hessian.ipynb": NB02,
    "03_sensitivity.ipynb": NB03,
    "04_batched_and_sharded.ipynb": NB04,
}


def build(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    """A notebook with the venv's ``python3`` kernel."""
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, *, cwd: Path = HERE) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel with ``cwd`` as working directory (raises on error)."""
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    """Build (and by default execute) the notebooks named by prefix, or all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--no-execute", action="store_true", help="write cells without outputs")
    args = parser.parse_args(argv)
    for name, cells in NOTEBOOKS.items():
        if args.prefixes and not any(name.startswith(p) for p in args.prefixes):
            continue
        nb = build(cells)
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        path = HERE / name
        nbformat.write(nb, path)
        size = path.stat().st_size
        print(f"{name}: {time.perf_counter() - start:6.1f} s, {size / 1024:7.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
