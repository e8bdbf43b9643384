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
# # 04 · Batched, chunked and multi-device Jacobians
#
# A data set's Jacobians are one per example: for $B$ inputs of size $n_\text{in}$ and outputs of
# size $n_\text{out}$ the result is a `(B, n_out, n_in)` array. This notebook shows how jaxjac
# scales that computation: **vectorised** over the batch (`jj.batch_input_jacobian`), **planned**
# (closed form or autodiff, forward or reverse, explained by `jj.explain`), **chunked** to bound
# memory (`chunk_size=` or `max_memory_bytes=`), and **sharded** over several devices
# (`jj.sharded`, from `jaxjac.sharding`).
#
# The first cell asks XLA for 8 CPU "devices" *before JAX is imported*. On a real machine these
# would be GPUs or TPUs; on a CPU they are 8 partitions of the host, enough to see the sharding
# at work, not to measure speed-ups (this notebook is built on a 2-core machine).

# %%
import os

# Must run before JAX is imported: the device count is fixed when the backend starts.
flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxjac as jj

print(jax.devices())

import matplotlib.pyplot as plt

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.0, 3.6)})

# %% [markdown]
# ## Batched Jacobians
#
# `jj.batch_input_jacobian(f, params, xs)` computes every example's Jacobian inside one compiled
# program (no cross-example terms are formed). For jaxjac's own MLP (`jj.mlp_function`) it takes
# the closed form of notebook 02, for any other `f(params, x)` autodiff (`route="autodiff"` forces
# that route here). Both are compared with a Python loop over `jj.input_jacobian`, one call per
# example, on a `[32, 256, 256, 8]` tanh network in float32:

# %%
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

# %% [markdown]
# ## Why did the library do that? `jj.explain`
#
# The batched helpers leave three decisions to one resolver (`jj.routes`): the **route** (closed form for jaxjac
# MLPs, else autodiff), the **accumulation order** (forward mode carries $n_\text{in}$ tangents,
# reverse mode $n_\text{out}$ cotangents; the closed form counts multiply-adds of the two matrix
# product orders), and the **chunk size** (from a memory budget, if one is given).
# `jj.explain(task, f, params, xs, ...)` returns that plan (a `jj.Plan`) with one reason per
# decision, the size of the result, and XLA's own estimates of temporary memory and FLOPs,
# measured by compiling the program on small batches:

# %%
print(jj.explain("input_jacobian", net, params, xs))
print()
print(jj.explain("input_jacobian", net, params, xs, route="autodiff"))
print()


def two_layer(p, x):  # not a jaxjac MLP: autodiff, and the Hessian is forward-over-reverse
    return jnp.tanh(p["W2"] @ jnp.tanh(p["W1"] @ x))


k1, k2 = jax.random.split(jax.random.key(2))
p2 = {"W1": jax.random.normal(k1, (64, 32)) / 6, "W2": jax.random.normal(k2, (4, 64)) / 8}
print(jj.explain("input_hessian", two_layer, p2, xs))

# %% [markdown]
# ## Chunking, and what it does to memory
#
# Vectorising over all $B$ examples at once keeps every example's intermediates alive together:
# for each hidden layer an `(n_out, h)` block of the Jacobian product per example, so temporary
# memory grows like $B\cdot n_\text{out}\cdot\sum_l h_l$, on top of the `(B, n_out, n_in)` result.
# `chunk_size=c` processes $c$ examples at a time (a sequential loop over chunks, each chunk's
# result written into the output in place): the intermediates scale with $c$ instead of $B$, plus
# one chunk's result on its way into the output; the result and the arithmetic are the same.
#
# **How memory is measured.** A jitted call can be lowered and compiled without running it:
# `jax.jit(fn).lower(*args).compile().memory_analysis()` reports the bytes XLA's buffer assignment
# reserves for the program's arguments, outputs and **temporaries**. Buffer assignment already
# reuses memory between buffers whose lifetimes do not overlap, so the temporary size is the
# program's peak scratch memory: known before anything runs, deterministic, and independent of
# other processes on the machine (unlike the peak RSS of a process, which also counts the Python
# interpreter, JAX itself and the allocator's caching). Peak memory of a call is about
# arguments + outputs + temporaries. The resolver (`jj.explain`) uses the same analysis, so its
# estimate $\text{fixed} + c\cdot(\text{per example} + \text{result per example})$ is drawn next
# to the measurement.

# %%
B = 4096
xs_big = jax.random.normal(jax.random.key(4), (B, sizes[0]))
chunk_sizes = [16, 64, 256, 1024, None]
ref = jj.batch_input_jacobian(net, params, xs_big)
measured = {}
for route in ("closed_form", "autodiff"):
    for c in chunk_sizes:
        call = jax.jit(functools.partial(jj.batch_input_jacobian, net, route=route, chunk_size=c))
        compiled = call.lower(params, xs_big).compile()
        mem = compiled.memory_analysis()
        seconds = timed(functools.partial(compiled, params, xs_big), repeat=3)
        plan = jj.explain("input_jacobian", net, params, xs_big, route=route, chunk_size=c)
        temp, out = mem.temp_size_in_bytes, mem.output_size_in_bytes
        measured[route, c or B] = (temp, out, plan.temp_bytes, seconds)
        print(
            f"{route:11s} chunk_size={c!s:5s} temporaries {temp / 2**20:7.2f} MiB"
            f" (resolver: {plan.temp_bytes / 2**20:6.2f} MiB)   output {out / 2**20:5.2f} MiB"
            f"   {seconds * 1e3:6.1f} ms"
        )
        np.testing.assert_allclose(compiled(params, xs_big), ref, rtol=1e-4, atol=1e-6)
odd = jj.batch_input_jacobian(net, params, xs_big, chunk_size=100)
np.testing.assert_allclose(odd, ref, rtol=1e-4, atol=1e-6)
print("every chunk size, and chunk_size=100 (which does not divide 4096), gives the same Jacobians")

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.4), layout="constrained")
for route, marker in (("closed_form", "o"), ("autodiff", "s")):
    cs = [c for (r, c) in measured if r == route]
    temp, out, pred, secs = (
        np.array(v, float) for v in zip(*(measured[route, c] for c in cs), strict=True)
    )
    (line,) = ax0.loglog(cs, temp / 2**20, marker + "-", label=f"{route}: measured")
    ax0.loglog(cs, pred / 2**20, marker + ":", color=line.get_color(), label=f"{route}: resolver")
    ax1.semilogx(cs, secs * 1e3, marker + "-", label=route)
ax0.axhline(out[0] / 2**20, color="0.4", ls="--", lw=1, label="output (B, n_out, n_in)")
ax0.set(xlabel="chunk size (examples at a time)", ylabel="MiB", title=f"temporary memory, B = {B}")
ax0.legend(fontsize=7)
ax1.set(xlabel="chunk size", ylabel="ms per call", title="time (2 CPU cores)", ylim=(0, None))
ax1.legend(fontsize=8)
plt.show()

# %% [markdown]
# Temporary memory grows linearly with the chunk size, while the time hardly depends on it: on a
# CPU a chunk of a few hundred examples is as fast as the whole batch or faster (its intermediates
# stay in cache), at a small fraction of the memory. The closed form knows this: given a large
# batch in one piece it steps through blocks of a few MiB of rows by itself (512 rows here), so
# its whole-batch temporaries stop at 8.5 MiB where autodiff's reach 64 MiB, and the resolver's
# estimate (`step_rows` in `jj.explain`) follows it. On a GPU, larger chunks pay off until the
# device is saturated. (Timings here are taken on a shared 2-core machine: expect noise.)
# The output cannot shrink: when even `(B, n_out, n_in)` is too large, reduce as you go (below,
# or `jj.sensitivity`, which streams chunks and keeps only running statistics).
#
# **A memory budget instead of a chunk size.** `max_memory_bytes=` asks the resolver for the largest
# chunk whose temporaries fit; `jj.explain` shows its choice, and the compiled program confirms it:

# %%
budget = 8 * 2**20
print(jj.explain("input_jacobian", net, params, xs_big, max_memory_bytes=budget))
call = jax.jit(lambda p, x: jj.batch_input_jacobian(net, p, x, max_memory_bytes=budget))
temp = call.lower(params, xs_big).compile().memory_analysis().temp_size_in_bytes
print(
    f"\ncompiled program: {temp / 2**20:.2f} MiB of temporaries"
    f" for a budget of {budget / 2**20:.0f} MiB (within budget: {temp <= budget})"
)
assert temp <= budget, "the resolver's chunk must fit the budget it was given"
np.testing.assert_allclose(call(params, xs_big), ref, rtol=1e-4, atol=1e-6)

# %% [markdown]
# ## Multi-device Jacobians: `jj.sharded`
#
# `jj.sharded(helper)` (from `jaxjac.sharding`) wraps any batched helper, one whose batch argument
# `xs` has the batch axis first: the batch is split over a 1-D device mesh (`jj.make_mesh`), each
# device runs the helper on its own rows inside `jax.shard_map`, and `params` are replicated. The
# result is the same array, laid out over the devices. A batch that the device count does not
# divide is padded with copies of its last row and trimmed.

# %%
mesh = jj.make_mesh()  # every device, one axis called "batch"
print("mesh:", dict(mesh.shape))

sharded_jacobian = jj.sharded(jj.batch_input_jacobian)
Js_sharded = sharded_jacobian(net, params, xs)
np.testing.assert_allclose(Js_sharded, Js, rtol=1e-5, atol=1e-6)
print("result", Js_sharded.shape, "sharding:", Js_sharded.sharding.spec)
for shard in Js_sharded.addressable_shards[:3]:
    print(f"  {shard.device}: rows {shard.index[0].start}:{shard.index[0].stop}")
print("  ...")

# %% [markdown]
# Each device holds a contiguous block of $B/8$ rows. Chunking composes: the helper's own
# `chunk_size` (or `jj.sharded(..., chunk_size=...)`) applies *per device*.
#
# **Reductions without gathering.** Often only a statistic over the batch is wanted, e.g. the
# average $\mathbb{E}[J^\top J]$ (an input-space Gauss-Newton matrix: its top eigenvectors are the
# input directions the network is most sensitive to). With `reduce="sum"` each device sums its
# own rows and one `psum` combines the devices: nothing of size $B$ is ever gathered.
# `reduce="moments"` returns a numerically stable (count, mean, M2) for variances.
# `jj.batch_jacobian_gram` ($J^\top J$), `jj.batch_jacobian_abs_sq` ($|J|$, $J^2$) and
# `jj.batch_jacobian_norm` ($\lVert J\rVert_F$) are the usual summands.

# %%
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
ax.semilogy(np.arange(1, 33), evals, "o-", ms=3, label=r"$E[J^\top J]$ over 2048 inputs")
ax.semilogy(np.arange(1, 9), one[:8], "s", ms=4, label=r"$J^\top J$ of one input (8 non-zero)")
ax.set(xlabel="index", ylabel="eigenvalue")
ax.set_title("input-space Gauss-Newton spectrum (8 devices, psum)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# One input's $J^\top J$ has rank at most $n_\text{out} = 8$ (its other 24 eigenvalues are zero
# up to float32 rounding), but averaging over the batch fills the spectrum: different inputs are
# sensitive in different directions.
#
# **Takeaways.** `jj.batch_input_jacobian` vectorises per-example Jacobians by the cheapest route;
# `jj.explain` says which route and why, with memory and FLOPs; `chunk_size=` or
# `max_memory_bytes=` bound memory at little cost in speed; `jj.sharded` spreads any batched helper
# over devices and reduces across them without gathering; and `jax.jit(...).lower(...).compile()`
# shows any program's memory before it runs.
