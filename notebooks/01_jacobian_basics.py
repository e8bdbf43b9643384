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
# # 01 · The Jacobian: a table of partial derivatives
#
# For a map $f:\mathbb{R}^n\to\mathbb{R}^m$ the **Jacobian** at $x$ is the $m\times n$ table
#
# $$
# J_f(x) = \begin{pmatrix}
# \partial f_1/\partial x_1 & \cdots & \partial f_1/\partial x_n\\
# \vdots & & \vdots\\
# \partial f_m/\partial x_1 & \cdots & \partial f_m/\partial x_n
# \end{pmatrix},
# \qquad J_{ij} = \frac{\partial f_i}{\partial x_j}:
# $$
#
# row $i$ is the gradient of output $i$, column $j$ says how every output moves when input $j$
# moves. It is the best linear approximation of $f$ near $x$:
# $f(x + h) = f(x) + J_f(x)\,h + O(\|h\|^2)$.
#
# This notebook computes Jacobians with `jaxjac` (`import jaxjac as jj`), checks them against
# hand derivations, draws what a Jacobian does to a small grid, and uses its determinant to
# change variables in an integral. jaxjac lays out a Jacobian as *output shape first, then input
# shape* (`f_out + x.shape`), exactly the table above.

# %%
import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

jax.config.update("jax_enable_x64", True)  # float64: the checks below are to ~1e-15

import matplotlib.pyplot as plt

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.0, 3.6)})


# %% [markdown]
# ## A two-dimensional example
#
# Take $f(x, y) = (x + y,\; xy)$. By hand,
#
# $$
# J_f(x, y) = \begin{pmatrix} 1 & 1 \\ y & x \end{pmatrix},
# \qquad
# J_f(-1, 2) = \begin{pmatrix} 1 & 1 \\ 2 & -1 \end{pmatrix},
# \qquad \det J_f(-1, 2) = 1\cdot(-1) - 1\cdot 2 = -3 .
# $$
#
# `jj.input_jacobian(f, params, x)` differentiates any `f(params, x)` with respect to `x`
# (here there are no parameters, so `params=None`). `jj.jacobian_det(g, x)` takes a function of
# `x` alone and returns $\det J_g(x)$ (through an LU factorisation, `slogdet`).


# %%
def f(params, v):
    x, y = v
    return jnp.stack([x + y, x * y])


def f_of_v(v):  # the same map as a function of the input alone, for jacobian_det
    return f(None, v)


p = jnp.array([-1.0, 2.0])
J = jj.input_jacobian(f, None, p)
det = jj.jacobian_det(f_of_v, p)
print("J =\n", J)
print("det J =", det)
np.testing.assert_allclose(J, [[1.0, 1.0], [2.0, -1.0]], atol=1e-15)
np.testing.assert_allclose(det, -3.0, rtol=1e-14)

# %% [markdown]
# ### What $\det J = -3$ means
#
# Near $(-1, 2)$ the map acts like the linear map $J$: a small square of area $A$ goes to
# (nearly) a parallelogram of area $|\det J|\,A = 3A$, and since $\det J < 0$ the image is
# **mirrored**: walking around the square counter-clockwise, the image is walked clockwise.
#
# Below, left: a grid around $(-1, 2)$ and a small shaded square whose first edge (red, along
# $x$) and second edge (blue, along $y$) turn counter-clockwise. Right: the image of the grid under
# $f$ (the lines bend: $f$ is not linear) and of the square: the red-to-blue turn is now
# clockwise, and the area has grown by a factor of about 3.

# %%
import itertools

h_grid, h_sq = 0.6, 0.25
ticks = np.linspace(-h_grid, h_grid, 9)
t = np.linspace(-h_grid, h_grid, 100)


def fmap(x, y):  # NumPy version of f, for drawing only
    return x + y, x * y


# A small square with corner p, walked counter-clockwise.
square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]) * h_sq + np.array(p)
edge = np.linspace(0, 1, 30)[:, None]
boundary = np.concatenate([a + edge * (b - a) for a, b in itertools.pairwise(square)])


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
for ax, pts in ((ax0, square), (ax1, None)):
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

# %% [markdown]
# The signed area ratio of the small square is $-3$: area grows threefold and orientation
# flips. (Here it is even exact for a square of any size: the image's area is
# $\int_\text{square}|\det J|$, and $\det J = x - y$ is linear, so its average over the square is
# its value at the centre, $-0.875 - 2.125 = -3$. For a general map the ratio tends to
# $\det J$ as the square shrinks.)
#
# ## Five identities every derivation uses
#
# With $W\in\mathbb{R}^{m\times n}$, constants $c\in\mathbb{R}^n$ and an elementwise function $g$:
#
# | $f(x)$ | $J_f(x)$ |
# |---|---|
# | $Wx$ | $W$ |
# | $\lVert x\rVert^2 = x^\top x$ | $2x^\top$ (a $1\times n$ row; as an array, shape `(n,)`) |
# | $g(x)$ elementwise | $\operatorname{diag}(g'(x))$ |
# | $x\odot c$ | $\operatorname{diag}(c)$ |
# | $x + c$ | $I$ |
#
# The first is why a linear layer's Jacobian is its weight matrix; the third is why an activation
# layer contributes a diagonal factor, and together with the chain rule
# $J_{f\circ h}(x) = J_f(h(x))\,J_h(x)$ they give the layer-by-layer Jacobian of a network
# (notebook 02). Each is checked below with `jj.input_jacobian`; the constant (`W` or `c`) is
# passed as `params`, so the same compiled program serves any constant.

# %%
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
    print(f"{name:26s} shape {got.shape!s:8s} max |error| = {err:.1e}")

# %% [markdown]
# `mode="fwd"` (forward mode, one pass per *input*) and `mode="rev"` (reverse mode, one pass per
# *output*) give the same table; the default `"auto"` picks the cheaper one from the shapes.
# Forward mode wins when there are fewer inputs than outputs (a tall Jacobian), reverse mode when
# there are fewer outputs, e.g. a scalar loss of many inputs such as $\lVert x\rVert^2$.

# %%
for mode in ("fwd", "rev"):
    np.testing.assert_allclose(jj.input_jacobian(linear, W, x, mode=mode), W, rtol=1e-14)
print("forward and reverse mode agree")


# %% [markdown]
# ## The determinant in a change of variables
#
# If $T$ maps a region $D'$ one-to-one onto $D$, then
# $$\int_D g(u)\,du = \int_{D'} g(T(q))\,\bigl|\det J_T(q)\bigr|\,dq :$$
# $|\det J_T|$ is the local area (volume) scaling of the previous section, so it converts area in
# $q$-coordinates into area in $u$-coordinates.
#
# **Polar coordinates.** $T(r, \theta) = (r\cos\theta,\; r\sin\theta)$ has
# $$J_T = \begin{pmatrix}\cos\theta & -r\sin\theta\\ \sin\theta & r\cos\theta\end{pmatrix},
# \qquad \det J_T = r\cos^2\theta + r\sin^2\theta = r,$$
# the familiar $dx\,dy = r\,dr\,d\theta$. The library agrees at random points
# (`jj.batch_jacobian_det` puts the batch axis first):


# %%
def polar(q):
    r, theta = q
    return jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)])


lo, hi = jnp.array([0.0, 0.0]), jnp.array([2.0, 2 * np.pi])  # r in [0, 2], theta in [0, 2 pi]
qs = jax.random.uniform(jax.random.key(1), (5, 2), minval=lo, maxval=hi)
dets = jj.batch_jacobian_det(polar, qs)
for (r, th), d in zip(np.asarray(qs), np.asarray(dets), strict=True):
    print(f"r = {r:.4f}  theta = {th:.4f}   det J = {d:.4f}")
np.testing.assert_allclose(dets, qs[:, 0], rtol=1e-13)


# %% [markdown]
# **The unit-disk integral.** In polar coordinates
# $$\iint_{x^2+y^2\le 1} e^{-(x^2+y^2)}\,dx\,dy
# = \int_0^{2\pi}\!\!\int_0^1 e^{-r^2}\, r\,dr\,d\theta = 2\pi\cdot\tfrac12\bigl(1 - e^{-1}\bigr)
# = \pi\bigl(1 - 1/e\bigr) \approx 1.98587.$$
#
# Numerically, with a tensor grid of Gauss-Legendre nodes $r_i\in(0, 1)$, $\theta_j\in(0, 2\pi)$
# and weights $w_i, v_j$:
# $$I_N = \sum_{i,j} w_i v_j\, g\bigl(T(r_i, \theta_j)\bigr)\,\bigl|\det J_T(r_i, \theta_j)\bigr| ,$$
# with $|\det J_T|$ taken from the library rather than from the formula. The integrand is smooth
# in $(r, \theta)$, so the error falls exponentially with the number of nodes; leaving the
# determinant out gives a wrong answer however many nodes are used.


# %%
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

# %% [markdown]
# The error reaches rounding level ($\sim10^{-15}$) with about ten nodes per coordinate.
#
# **Takeaways.** `jj.input_jacobian(f, params, x)` gives the table $\partial f_i/\partial x_j$ in
# the layout `f_out + x.shape`; `jj.jacobian_det` / `jj.batch_jacobian_det` give the volume
# factor of a square map (and `jj.log_abs_det_jacobian` its logarithm, the term a normalizing flow
# needs). Notebook 02 builds the Jacobian and Hessian of a neural network from these pieces.
