r"""Benchmark runner: ``python -m benchmarks.run [--quick] [--net small --task hessian]``.

Protocol, per workload (net, batch, dtype) and task:

1. The float64 reference is computed once (:func:`benchmarks.workloads.reference`), then JAX's
   jit caches are cleared so every route's first call compiles.
2. Routes run in library blocks: all JAX routes (jaxjac, closed form, naive, folx), then all torch
   routes (torch threads = core count). Interleaving the two runtimes makes both ~2x slower here
   (their spinning worker threads take the cores from each other).
3. Per route: the first call (compile + one run, or torch's warm-up) is timed on its own; its
   result is checked against the reference (dtype, shapes, ``max|got - ref| / max|ref|`` within
   ``4 sqrt(eps)``) *before* any timing counts; then warm-up calls. When every route of the
   task is ready, they are timed together, round-robin (one call of each route per round, up to
   ``--repeats`` rounds, more for a route of a few ms: ``MIN_TIMED_S``), each timed call after
   an untimed one for routes under ``WARM_CALL_S`` and ending in ``jax.block_until_ready``
   (torch on CPU is synchronous): a drift of the machine's speed hits every route alike.
   Reported: median and the interquartile range, min and max; ``compile s`` = first call -
   median run.
4. Matmul peak in the same run: ``jit(jnp.dot)`` on n x n float32 and float64 for n = 512, 1024
   and 2048, ``2 n³`` FLOPs, the fastest of several calls at the fastest size, at the start and
   at the end of the run (the larger counts); and
   the bandwidth of ``jit(lambda a: 2 a)`` on 256 MiB (read + fresh write), for write-bound tasks.
   ``% peak = flops / (median · peak)``, ``× floor = median / max(flops / peak, out bytes / bw)``.
5. Peak memory: resident set size of a fresh subprocess (``--probe-memory``), which builds the
   workload, calls the route once (compile + run), frees the result, then resets the kernel's
   high-water mark (``echo 5 > /proc/self/clear_refs``) and calls it again: the reported
   ``peak RSS`` is the high-water mark of that second call minus the RSS just before it, i.e.
   what one call adds on top of the interpreter, the libraries, the inputs and the compiled
   program. glibc's mmap threshold is pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so freed
   buffers go back to the kernel instead of a heap that would hide the second call's use.
   tracemalloc sees none of XLA's buffers, and ``getrusage`` alone would count compilation.
6. The GEMMs of the closed-form Hessian's XLA route timed alone at their own shapes
   (:mod:`benchmarks.gemm_bound`): what that design can reach with XLA's GEMMs, next to the FLOP
   floor and to jaxjac's fused route.

Exit status 0 even when targets fail (they are reported); 1 if a route gave a wrong result.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.metadata
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # for the references; every route keeps its own dtype

import jaxjac as jj  # noqa: E402
from benchmarks import gemm_bound  # noqa: E402
from benchmarks import workloads as W  # noqa: E402

HERE = Path(__file__).resolve().parent
GiB = 2**30
# The headline workload: the targets are judged on it, for each MLP.
TARGET_BATCH, TARGET_DTYPE = 256, "float32"
# The memory/chunking target: a Hessian batch whose naive vmap exceeds the budget.
MEMORY_CASE = {"net": "small", "batch": 1024, "dtype": "float32", "budget": 256 * 2**20}


# --- machine ----------------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_identity(cpuinfo: str) -> dict[str, str | None]:
    """``model name``, ``cpu family`` and ``model`` of the first processor in ``/proc/cpuinfo``.

    Two machines sold under one name ("AMD EPYC") can be different generations with peaks 2x
    apart: the family and model numbers tell them apart.
    """
    fields = {"model name": None, "cpu family": None, "model": None}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if fields["model name"] is not None:  # a blank line ends the first processor
                break
            continue
        if key in fields and fields[key] is None:
            fields[key] = value.strip()
    return {"cpu": fields["model name"], "family": fields["cpu family"], "model": fields["model"]}


def cpu_caches(cpu_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int]:
    """Data and unified cache sizes in bytes as one core sees them: ``{"L1d": …, "L2": …}``.

    Read from sysfs (``index*/level``, ``type``, ``size``); ``{}`` where it is not there.
    """
    caches = {}
    for index in sorted(cpu_dir.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction" or not size[:-1].isdigit():
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1])
        if unit is None:
            continue
        caches[f"L{level}d" if kind == "Data" else f"L{level}"] = int(size[:-1]) * unit
    return caches


def huge_pages(
    enabled: Path = Path("/sys/kernel/mm/transparent_hugepage/enabled"),
    tunables: str | None = None,
) -> dict[str, str | None]:
    """The kernel's transparent-huge-page mode and glibc's ``malloc.hugetlb`` tunable.

    A result larger than glibc's mmap threshold (32 MiB at most) lands in fresh pages on every
    call, and the write-bound tasks pay a page fault per page: on a 2-core Xeon with the
    kernel in ``madvise`` mode, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc then asks for
    huge pages) made the small net's weight Jacobian at B = 32 (145 MB) 2.0-2.2x faster. Both are
    recorded so runs on different machines can be compared. ``tunables`` defaults to
    ``$GLIBC_TUNABLES``; ``None`` where a setting is not there.
    """
    try:
        text = enabled.read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = None
    if tunables is None:
        tunables = os.environ.get("GLIBC_TUNABLES", "")
    settings = dict(item.partition("=")[::2] for item in tunables.split(":") if "=" in item)
    return {"thp": mode, "glibc_hugetlb": settings.get("glibc.malloc.hugetlb")}


def git_revision(repo: Path = HERE.parent) -> dict[str, Any] | None:
    """The commit the benchmarked code is at, and whether tracked files differ from it.

    ``{"commit": sha, "dirty": bool}``, or ``None`` outside a git checkout (an installed copy).
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())}


def machine_info() -> dict[str, Any]:
    try:
        identity = cpu_identity(Path("/proc/cpuinfo").read_text())
    except OSError:
        identity = {"cpu": None, "family": None, "model": None}
    cpu = identity["cpu"] or platform.processor() or "unknown"
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = "avx512f" if "avx512f" in text else ("avx2" if "avx2" in text else "")
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {
        "cpu": cpu,
        "cpu_family": identity["family"],
        "cpu_model": identity["model"],
        "caches": cpu_caches(),
        "huge_pages": huge_pages(),
        "git": git_revision(),
        "simd": flags,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "jaxjac": jj.__version__,
        "torch": _version("torch"),
        "folx": _version("folx"),
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }


def _best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_peak(repeats: int) -> dict[str, float]:
    """Matmul GFLOP/s per dtype and copy bandwidth in GB/s, each from the fastest of ``repeats``.

    The fastest call, not the median: a peak is what the machine can do, and on a shared machine
    the median of a 0.1 s matmul mostly measures the neighbours. Measured at the start and the
    end of a run; the report uses the larger of the two. The matmul is timed at three sizes and
    the fastest counts: on a 2-core AMD EPYC with 1 MiB of L2 a core, 512³ ran at 378 GFLOP/s
    float32 where 2048³ gave 321, and the wide net's Jacobian GEMMs read 120 % of the latter.
    """
    out: dict[str, float] = {}
    dot = jax.jit(jnp.dot)
    for name, dtype in W.DTYPES.items():
        best = 0.0
        for n in (512, 1024, 2048):
            a = jax.random.normal(jax.random.PRNGKey(2), (n, n), dtype)
            b = jax.random.normal(jax.random.PRNGKey(3), (n, n), dtype)
            calls = repeats * 2048 // n  # the smaller products are quick: more calls
            best = max(best, 2 * n**3 / _best_time(lambda a=a, b=b: dot(a, b), calls) / 1e9)
        out[f"gflops_{name}"] = best
    x = jnp.ones((2**26,), jnp.float32)
    double = jax.jit(lambda a: 2 * a)
    out["copy_gbps"] = 2 * x.nbytes / _best_time(lambda: double(x), repeats) / 1e9
    return out


# --- timing -------------------------------------------------------------------------------------


def _block(route: W.Route):
    return (lambda out: out) if route.lib == "torch" else jax.block_until_ready


def prepare_route(route: W.Route, wl: W.Workload, ref: list) -> tuple[Any, dict]:
    """First call (compile + one run, or torch's warm-up), correctness check, warm-up.

    Returns the timed callable (``None`` if the result is wrong) and the record so far.
    """
    block = _block(route)
    fn = route.make(wl)
    t0 = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    leaves = route.leaves(out)
    dtypes = {str(np.asarray(leaf).dtype) for leaf in leaves}
    err = W.rel_error(leaves, ref)
    tol = W.tolerance(wl.dtype)
    del out, leaves
    rec: dict[str, Any] = {"first_call_s": first, "error": err, "tolerance": tol}
    # Sensitivity statistics are float64 host sums by design; everything else keeps the dtype.
    wrong_dtype = route.leaves is not W._sens_leaves and dtypes != {wl.dtype}
    if not err <= tol or wrong_dtype:
        rec["status"] = "wrong"
        rec["note"] = f"error {err:.2g} > tol {tol:.2g}" if not err <= tol else f"dtype {dtypes}"
        return None, rec
    # Warm-up after the first call: three for fast routes, one above 0.2 s, none above 1 s.
    for _ in range(0 if first > 1 else 1 if first > 0.2 else 3):
        block(fn())
    return fn, rec


# Routes up to this long get an untimed call before each timed one. At 2 s, the wide net's
# Hessian (jaxjac auto and the closed form, 2.05-2.33 s in float32 on this session's 2-core
# Zen 4 EPYC) went without it: two of its three calls right after vmap(hessian) took
# 2.85-3.19 s (the others 2.05-2.33 s), and in float64 two of three took 4.97-5.42 s (the
# others 3.62-4.50 s).
WARM_CALL_S = 5.0
# A route of a few ms is timed until its calls add up to this much (at most MAX_CALLS_FACTOR x
# repeats calls): 10 calls of the small net's 7 ms Jacobian spanned a tenth of a second, and
# in the full run of this session its median read 0.92x of vmap(jacrev)'s with the two
# interquartile ranges overlapping (5.7-8.4 ms against 5.2-8.1 ms).
MIN_TIMED_S = 1.0
MAX_CALLS_FACTOR = 10


def time_round_robin(
    prepared: dict[str, tuple[Any, W.Route]], *, repeats: int, min_repeats: int, budget_s: float
) -> dict[str, dict]:
    """Timed calls in rounds, one call of every route per round, until each has ``repeats``
    (and, for a fast route, ``MIN_TIMED_S`` of timed calls).

    Round-robin within one library, not one route after another: a drift of the machine's speed
    (a neighbour's load, the CPU's clock) then hits every route alike instead of whichever
    route happened to run during it, so the ratios between routes stay fair. A route stops
    early once it has ``min_repeats`` timed calls and has used ``budget_s`` seconds in all.
    """
    times: dict[str, list[float]] = {name: [] for name in prepared}
    active = list(prepared)
    rounds = 0
    while active:
        # Each round starts one route further on: the route timed right after another's
        # (vmap(hessian)'s gigabytes, say) read up to 1.5x slower than the same program timed
        # later in the round, so no route keeps that place.
        shift = rounds % len(active)
        rounds += 1
        for name in active[shift:] + active[:shift]:
            fn, route = prepared[name]
            block = _block(route)
            # The first call after another route runs on cold caches and re-mapped pages (the
            # one after vmap(jacfwd) took 10-15 % longer, a Hessian of 0.5-1.7 s right after
            # vmap(hessian)'s gigabytes 15-60 % longer), so a route of up to WARM_CALL_S gets
            # an untimed call first. Rotating the rounds keeps each route's predecessor (the
            # order is cyclic): without that call the penalty would stay on one route.
            if not times[name] or min(times[name]) < WARM_CALL_S:
                block(fn())
            t0 = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - t0)
            n, total = len(times[name]), sum(times[name])
            done = n >= repeats and (total >= MIN_TIMED_S or n >= MAX_CALLS_FACTOR * repeats)
            spent = n >= min_repeats and total > budget_s
            if done or spent:
                active.remove(name)
    out = {}
    for name, ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        out[name] = {
            "status": "ok",
            "times_s": ts,
            "median_s": float(med),
            "p25_s": float(q1),
            "p75_s": float(q3),
            "min_s": min(ts),
            "max_s": max(ts),
        }
    return out


# --- memory (fresh subprocess per measurement) --------------------------------------------------


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _memory_callable(spec: dict, wl: W.Workload):
    """The callable a memory probe measures: a route by name, or a memory-target variant."""
    variant = spec.get("variant")
    if variant == "chunk_size":
        return lambda: jj.batch_input_hessian(W.net, wl.params, wl.xs, chunk_size=spec["chunk"])
    if variant == "max_memory_bytes":
        return lambda: jj.batch_input_hessian(
            W.net, wl.params, wl.xs, max_memory_bytes=spec["budget"]
        )
    route = next(r for r in W.routes(spec["task"]) if r.name == spec["route"])
    return route.make(wl)


def probe_memory(spec: dict) -> dict:
    """Child side of a memory measurement (see the module docstring); prints one JSON line."""
    if spec.get("lib") == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    wl = W.make_workload(spec["net"], W.task_batch(spec["task"], spec["batch"]), spec["dtype"])
    fn = _memory_callable(spec, wl)
    block = (lambda o: o) if spec.get("lib") == "torch" else jax.block_until_ready
    out = block(fn())
    del out
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _proc_status("VmRSS")
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False  # fall back to the process-wide high-water mark (includes compilation)
    out = block(fn())
    hwm = _proc_status("VmHWM")
    result = {"rss_before": before, "hwm": hwm, "run_bytes": hwm - before, "reset": reset}
    if spec.get("check"):
        ref, _ = W.reference(spec["task"], wl)
        leaves = jax.tree_util.tree_leaves(out) if spec.get("lib") != "torch" else out
        result["error"] = W.rel_error([np.asarray(x) for x in leaves], ref)
    print(json.dumps(result))
    return result


def measure_memory(spec: dict, timeout: float = 600) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "benchmarks.run", "--probe-memory", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired:
        return {"error_text": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error_text": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


def memory_target() -> dict:
    """Naive vmap(hessian) vs jaxjac chunked under a budget, each in a fresh subprocess."""
    case = dict(MEMORY_CASE)
    wl = W.make_workload(case["net"], 1, case["dtype"])
    per_example = W._mem_second_order(1)(wl)  # estimated naive bytes per example
    chunk = 1
    while chunk * 2 * per_example <= case["budget"] / 4:
        chunk *= 2  # a power of two whose estimate uses a quarter of the budget
    base = {"task": "hessian", "net": case["net"], "batch": case["batch"], "dtype": case["dtype"]}
    variants = [
        ("vmap(hessian)", {"route": "vmap(hessian)"}),
        (f"jaxjac chunk_size={chunk}", {"variant": "chunk_size", "chunk": chunk}),
    ]
    if "max_memory_bytes" in inspect.signature(jj.batch_input_hessian).parameters:
        variants.append(
            (
                f"jaxjac max_memory_bytes={case['budget'] // 2**20} MiB",
                {"variant": "max_memory_bytes"},
            )
        )
    rows = []
    for name, extra in variants:
        t0 = time.perf_counter()
        res = measure_memory({**base, **extra, "budget": case["budget"], "check": True})
        res.update(name=name, wall_s=time.perf_counter() - t0)
        rows.append(res)
        print(f"  memory  {name:<40} {_fmt_bytes(res.get('run_bytes'))}", flush=True)
    naive = rows[0].get("run_bytes")
    bounded = [r for r in rows[1:] if r.get("run_bytes") is not None]
    ok = (
        naive is not None
        and naive > case["budget"]
        and bool(bounded)
        and all(
            r["run_bytes"] <= case["budget"] and r.get("error", 1) <= W.tolerance(case["dtype"])
            for r in bounded
        )
    )
    return {**case, "chunk": chunk, "rows": rows, "pass": ok}


def compile_target() -> dict:
    """Compile time of the batched closed-form Hessian of a depth-8 MLP (target: under 2 s)."""
    sizes = [32] + [256] * 7 + [8]
    params = jj.mlp_init(jax.random.PRNGKey(0), sizes, dtype=jnp.float32)
    xs = jnp.ones((256, 32), jnp.float32)
    jax.clear_caches()
    t0 = time.perf_counter()
    f = jj.mlp_function("tansig")
    jax.jit(lambda p, x: jj.batch_input_hessian(f, p, x)).lower(params, xs).compile()
    return {"sizes": sizes, "compile_s": time.perf_counter() - t0}


def hessian_gemms_target(records: list[dict]) -> dict:
    """The XLA route's GEMMs timed alone, for each net whose XLA-route Hessian ran."""
    out = {}
    for net in ("small", "wide"):
        xla = _find(records, net, "hessian", "closed form, XLA contraction")
        mine = _find(records, net, "hessian", "jaxjac auto")
        if xla is not None and mine is not None:
            out[net] = gemm_bound.measure_hessian_gemms(W.NETS[net], TARGET_BATCH, TARGET_DTYPE)
            out[net]["xla_s"] = xla["median_s"]
            out[net]["jaxjac_s"] = mine["median_s"]
            out[net]["floor_s"] = mine.get("floor_s")
    return out


# --- the grid -----------------------------------------------------------------------------------


def build_plan(args) -> list[tuple[str, int, str, list[str]]]:
    """``(net, batch, dtype, tasks)``; the square net serves log|det J| only."""
    if args.quick:
        # What the targets need, on the small net (the wide one for its Jacobian target),
        # and log|det J|; the 10^5-sample sensitivity run is in the full grid only.
        plan = [
            ("small", 256, "float32", [t for t in W.TASKS if t not in ("logdet", "sensitivity")]),
            ("square", 256, "float32", ["logdet"]),
            ("wide", 256, "float32", ["jacobian"]),
        ]
    else:
        plan = []
        for dtype in args.dtype:
            for net in args.net:
                for batch in args.batch:
                    tasks = [t for t in args.task if t not in ("logdet", "sensitivity")]
                    if tasks:
                        plan.append((net, batch, dtype, tasks))
                if "sensitivity" in args.task:
                    plan.append((net, W.SENSITIVITY_SAMPLES, dtype, ["sensitivity"]))
            if "logdet" in args.task:
                plan += [("square", batch, dtype, ["logdet"]) for batch in args.batch]
    if args.quick and set(args.task) != set(W.TASKS):
        plan = [(n, b, d, [t for t in ts if t in args.task]) for n, b, d, ts in plan]
        plan = [p for p in plan if p[3]]
    return plan


def run_task(net, batch, dtype, task, args, peak, lib) -> list[dict]:
    wl = W.make_workload(net, W.task_batch(task, batch), dtype)
    label = f"{net} B={wl.batch} {dtype}"
    base = {"net": net, "sizes": wl.sizes, "batch": wl.batch, "dtype": dtype, "task": task}
    budget = args.mem_budget_gb * GiB
    ref_bytes = W.output_bytes(task, wl, 8) + W.output_bytes(task, wl)
    if ref_bytes > budget:
        note = (
            f"the float64 reference and one {dtype} result need "
            f"{ref_bytes / GiB:.1f} GiB > budget {args.mem_budget_gb:g} GiB"
        )
        if lib != "jax":
            return []  # reported once, in the JAX pass
        print(f"{_elapsed()} {label:<24} {task:<18} SKIPPED: {note}", flush=True)
        return [{**base, "route": "(all)", "family": "-", "status": "skipped", "note": note}]
    t0 = time.perf_counter()
    ref, self_err = W.reference(task, wl)
    ref_s = time.perf_counter() - t0
    if self_err > 1e-10:
        raise RuntimeError(f"{label} {task}: float64 reference disagrees with autodiff: {self_err}")
    jax.clear_caches()
    flops = W.flops_per_example(task, wl.sizes) * wl.batch
    out_bytes = W.output_bytes(task, wl)
    records = []
    # One library per call: main() runs every JAX block before any torch block. Every route is
    # compiled, checked and warmed up first; then all are timed together, round-robin.
    prepared: dict[str, tuple[Any, W.Route]] = {}
    by_name: dict[str, dict] = {}
    routes = [r for r in W.routes(task) if r.lib == lib]
    if args.quick:  # forward-mode Jacobians are 3-15x slower: no target needs them
        routes = [r for r in routes if "jacfwd" not in r.name or task == "logdet"]
    for route in routes:
        rec = {**base, "route": route.name, "family": route.family, "lib": lib}
        rec.update(flops=flops, output_bytes=out_bytes, reference_s=ref_s)
        why = W.route_unavailable(route)
        est = route.mem(wl)
        if why is None and est > budget:
            why = f"estimated peak {est / GiB:.1f} GiB > budget {args.mem_budget_gb:g} GiB"
        if why is not None:
            rec.update(status="skipped", note=why)
        else:
            try:
                fn, first = prepare_route(route, wl, ref)
                rec.update(first)
                if fn is not None:
                    prepared[route.name] = (fn, route)
            except Exception as exc:  # a failing route is a result, not a crash
                rec.update(status="failed", note=f"{type(exc).__name__}: {str(exc)[:200]}")
        records.append(rec)
        by_name[route.name] = rec
    gc.collect()
    try:
        timings = time_round_robin(
            prepared,
            repeats=args.repeats,
            min_repeats=2 if args.quick else 3,
            budget_s=args.route_budget_s,
        )
    except Exception as exc:  # a route that fails only when timed: time the others again
        timings = {}
        for name in list(prepared):
            try:
                timings.update(
                    time_round_robin(
                        {name: prepared[name]},
                        repeats=args.repeats,
                        min_repeats=2 if args.quick else 3,
                        budget_s=args.route_budget_s,
                    )
                )
            except Exception:
                by_name[name].update(status="failed", note=f"{type(exc).__name__}: {exc!s:.200}")
    for name, timing in timings.items():
        rec = by_name[name]
        rec.update(timing)
        rec["compile_s"] = max(0.0, rec["first_call_s"] - timing["median_s"])
    for rec in records:
        print(_line(label, task, rec, peak), flush=True)
    prepared.clear()
    if lib == "torch":
        gc.collect()
    if args.memory == "all":
        for rec in records:
            if rec.get("status") == "ok" and task != "sensitivity":
                spec = {**base, "batch": batch, "route": rec["route"], "lib": rec["lib"]}
                res = measure_memory(spec)
                rec["peak_rss_bytes"] = res.get("run_bytes")
                if "error_text" in res:
                    rec["memory_note"] = res["error_text"]
    return records


def _add_ratios(records: list[dict]) -> None:
    ok = [r for r in records if r.get("status") == "ok"]
    naive = [r["median_s"] for r in ok if r["family"] == "naive"]
    torch = [r["median_s"] for r in ok if r["family"] == "torch"]
    for r in ok:
        if naive:
            r["vs_best_naive"] = min(naive) / r["median_s"]
        if torch:
            r["vs_best_torch"] = min(torch) / r["median_s"]


def _fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.0f} MiB" if b < GiB else f"{b / GiB:.2f} GiB"


_START = time.perf_counter()


def _elapsed() -> str:
    return f"[{time.perf_counter() - _START:5.0f} s]"


def _line(label: str, task: str, rec: dict, peak: dict) -> str:
    head = f"{_elapsed()} {label:<24} {task:<18} {rec['route']:<30}"
    if rec.get("status") != "ok":
        return f"{head} {rec.get('status', '?').upper()}: {rec.get('note', '')}"
    pct = 100 * rec["flops"] / (peak[f"gflops_{rec['dtype']}"] * 1e9) / rec["median_s"]
    return (
        f"{head} {_fmt_ms(rec['median_s']):>7} ms [{_fmt_ms(rec['p25_s'])}-{_fmt_ms(rec['p75_s'])}]"
        f"  compile {rec['compile_s']:.2f} s  err {rec['error']:.1e}  {pct:.0f}% peak"
    )


def add_peak_fractions(records: list[dict], peak: dict) -> None:
    """``pct_peak`` and ``x_floor`` of every timed record, from the run's final peak figures."""
    for r in records:
        if r.get("status") != "ok":
            continue
        gflops = peak[f"gflops_{r['dtype']}"] * 1e9
        r["floor_s"] = max(r["flops"] / gflops, r["output_bytes"] / (peak["copy_gbps"] * 1e9))
        r["pct_peak"] = 100 * r["flops"] / gflops / r["median_s"]
        r["x_floor"] = r["median_s"] / r["floor_s"]


# --- targets and reports ------------------------------------------------------------------------


def _find(records, net, task, route, batch=TARGET_BATCH, dtype=TARGET_DTYPE):
    if task == "weight_jacobian":
        batch = W.task_batch(task, batch)
    for r in records:
        if (r["net"], r["task"], r["route"], r["batch"], r["dtype"]) == (
            net,
            task,
            route,
            batch,
            dtype,
        ):
            return r if r.get("status") == "ok" else None
    return None


def evaluate_targets(records: list[dict], extra: dict) -> list[dict]:
    """The targets on the headline workload (B = 256, float32) of each MLP."""
    specs = [
        # (task, jaxjac route, baseline route or "best naive", threshold, what)
        ("jacobian", "jaxjac auto", "best naive", 0.95, "≥ 0.95x best naive JAX"),
        ("jacobian", "jaxjac auto", "torch vmap(jacrev)", 2, "≥ 2x faster than torch vmap(jacrev)"),
        ("hessian", "jaxjac auto", "vmap(hessian)", 4, "≥ 4x faster than vmap(hessian)"),
        ("hessian", "jaxjac auto", "torch vmap(hessian)", 8, "≥ 8x faster than torch"),
        ("hessian", "jaxjac auto", "floor", 0.5, "within 2x of the FLOP floor"),
        # The same with out= (the previous result's memory reused, as in a loop over a data set):
        # the wide net's (256, 16, 128, 128) result is 268 MB of fresh pages a call otherwise.
        ("hessian", "jaxjac auto, out=", "vmap(hessian)", 4, "≥ 4x faster than vmap(hessian)"),
        ("hessian", "jaxjac auto, out=", "torch vmap(hessian)", 8, "≥ 8x faster than torch"),
        ("hessian", "jaxjac auto, out=", "floor", 0.5, "within 2x of the FLOP floor"),
        (
            "laplacian",
            "jaxjac auto",
            "trace(vmap(hessian))",
            10,
            "≥ 10x faster than trace(hessian)",
        ),
        ("laplacian", "jaxjac auto", "folx forward_laplacian", 1, "faster than folx"),
        # Weight Jacobians and per-example gradients: jaxjac's streaming form, out= (the memory
        # of the previous result is reused); the table lists the fresh-allocation route too.
        ("weight_jacobian", "jaxjac auto, out=", "vmap(jacrev wrt params)", 1, "≥ 1x vmap(jacrev)"),
        (
            "weight_jacobian",
            "jaxjac auto, out=",
            "torch vmap(jacrev wrt params)",
            1.2,
            "≥ 1.2x faster than torch",
        ),
        (
            "per_example_grads",
            "jaxjac weight_jacobian(loss), out=",
            "vmap(grad)",
            1,
            "≥ 1x vmap(grad)",
        ),
        (
            "per_example_grads",
            "jaxjac weight_jacobian(loss), out=",
            "torch vmap(grad)",
            1.2,
            "≥ 1.2x faster than torch",
        ),
    ]
    out = []
    for net in ("small", "wide"):
        headline = [
            r
            for r in records
            if r["net"] == net and r["dtype"] == TARGET_DTYPE and r["batch"] in (TARGET_BATCH, 32)
        ]
        for task, ours, base, threshold, what in specs:
            if not any(r["task"] == task for r in headline):
                continue  # not in this run at all: listed once in the report, not per target
            row = {"net": net, "task": task, "route": ours, "target": what, "threshold": threshold}
            mine = _find(records, net, task, ours)
            if base == "best naive":
                cands = [
                    r
                    for r in records
                    if (r["net"], r["task"], r["dtype"]) == (net, task, TARGET_DTYPE)
                    and r["batch"] == W.task_batch(task, TARGET_BATCH)
                    and r["family"] == "naive"
                    and r.get("status") == "ok"
                ]
                other = min(cands, key=lambda r: r["median_s"]) if cands else None
            elif base == "floor":
                other = {"median_s": mine["floor_s"], "route": "FLOP floor"} if mine else None
            else:
                other = _find(records, net, task, base)
            if mine is None or other is None:
                row.update(status="NOT MEASURED", ratio=None)
            else:
                ratio = other["median_s"] / mine["median_s"]
                row.update(
                    ratio=ratio,
                    ours_ms=1e3 * mine["median_s"],
                    base_ms=1e3 * other["median_s"],
                    base_route=other["route"],
                    status="PASS" if ratio >= threshold else "FAIL",
                )
            out.append(row)
    mem = extra.get("memory_target")
    if mem:
        out.append(
            {
                "net": mem["net"],
                "task": "hessian (memory)",
                "target": f"B={mem['batch']} within {mem['budget'] // 2**20} MiB by chunking",
                "status": "PASS" if mem["pass"] else "FAIL",
                "ratio": None,
            }
        )
    comp = extra.get("compile_target")
    if comp:
        out.append(
            {
                "net": "depth 8",
                "task": "hessian (compile)",
                "target": "closed-form Hessian compiles in < 2 s",
                "status": "PASS" if comp["compile_s"] < 2 else "FAIL",
                "ratio": None,
                "ours_ms": 1e3 * comp["compile_s"],
            }
        )
    return out


def _cell(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _fmt_ratio(x: float | None) -> str:
    """A target ratio to 2 decimals, rounded down: 0.946 against a 0.95 target reads 0.94."""
    if x is None or math.isnan(x):
        return "-"
    return f"{math.floor(x * 100 + 1e-9) / 100:.2f}"  # the 1e-9: 0.29 * 100 is 28.999...


def _describe_git(git: dict | None) -> str:
    if git is None:
        return "not a git checkout (commit unknown)"
    state = "with uncommitted changes to tracked files" if git["dirty"] else "clean tree"
    return f"jaxjac at commit {git['commit'][:12]}, {state}"


def _describe_cpu(m: dict) -> str:
    """`` (family 26, model 2; caches of a core: L1d 48 KiB, L2 1 MiB, L3 32 MiB)``, or less.

    Results from before these fields were recorded print without them.
    """
    parts = []
    if m.get("cpu_family") is not None:
        parts.append(f"family {m['cpu_family']}, model {m['cpu_model']}")
    caches = m.get("caches") or {}
    if caches:
        sizes = [
            f"{name} {size // 2**10} KiB" if size < 2**20 else f"{name} {size / 2**20:g} MiB"
            for name, size in caches.items()
        ]
        parts.append("caches of a core: " + ", ".join(sizes))
    pages = m.get("huge_pages")
    if pages:
        hugetlb = pages["glibc_hugetlb"]
        parts.append(
            f"transparent huge pages {pages['thp'] or 'unknown'}, glibc.malloc.hugetlb "
            + (hugetlb if hugetlb is not None else "unset")
        )
    return f" ({'; '.join(parts)})" if parts else ""


def write_markdown(path: Path, data: dict) -> None:
    m, peak = data["machine"], data["peak"]
    lines = [
        "# jaxjac benchmarks",
        "",
        f"Generated by `{data['command']}` on {m['date']}.",
        "",
        f"- Code: {_describe_git(m.get('git'))}.",
        f"- Machine: {m['cpu']}{_describe_cpu(m)} ({m['simd']}), {m['cores']} cores, "
        f"{_fmt_bytes(m['memory_bytes'])}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end.",
        f"- Versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, jaxjac "
        f"{m['jaxjac']}, torch {m['torch'] or 'absent'}, folx {m['folx'] or 'absent'}.",
        f"- Measured in this run: matmul peak {peak['gflops_float32']:.0f} GFLOP/s float32, "
        f"{peak['gflops_float64']:.0f} GFLOP/s float64 (`jnp.dot` of 512³, 1024³ and 2048³, "
        f"fastest call at the fastest size, the better of the run's start and end); copy "
        f"{peak['copy_gbps']:.1f} GB/s (read + fresh write).",
        f"- {data['repeats']} timed calls per route after warm-up, or as many as add up to "
        f"{MIN_TIMED_S:g} s (at most {MAX_CALLS_FACTOR * data['repeats']}), round-robin over the "
        f"routes of a task, each after an untimed call where it takes under {WARM_CALL_S:g} s "
        f"(fewer where a route exceeds {data['route_budget_s']:g} s in all); results checked "
        "against float64 before timing.",
        "",
        "Columns: `compile s` = first call - median; `median ms` and the interquartile range; "
        "`vs naive` = best naive JAX median / this median and `vs torch` = best torch.func "
        "median / this median (> 1: this route is faster; ratios here and in the targets are "
        "rounded down to 2 decimals); `% peak` = stated FLOPs / (median x "
        "matmul peak); `x floor` = median / max(FLOPs / peak, output bytes / copy bandwidth); "
        "`peak RSS` = memory one call adds (fresh subprocess); `error` = max|got - ref| / "
        "max|ref| against float64.",
        "",
        "## Targets (B = 256 float32, the weight Jacobian at B = 32)",
        "",
        "| net | task | jaxjac route | target | jaxjac ms | baseline | ratio | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in data["targets"]:
        base = (
            f"{t['base_route']} {t['base_ms']:.3g} ms"
            if t.get("base_route") and t["base_route"] != "FLOP floor"
            else (f"floor {t['base_ms']:.3g} ms" if t.get("base_ms") else "-")
        )
        lines.append(
            f"| {t['net']} | {t['task']} | {t.get('route', '-')} | {t['target']} | "
            f"{_cell(t.get('ours_ms'), '.3g')} | {base} | {_fmt_ratio(t.get('ratio'))} | "
            f"{t['status']} |"
        )
    measured = {(t["net"], t["task"]) for t in data["targets"]}
    missing = [
        f"{net} {task}"
        for net in ("small", "wide")
        for task in W.TASKS[:5]
        if (net, task) not in measured
    ]
    lines += [
        "",
        "For the floor row the ratio is floor / median (≥ 0.5 passes). NOT MEASURED: a route "
        "was skipped or failed (see its note below).",
    ]
    if missing:
        lines.append(
            f"Not in this run (B = {TARGET_BATCH}, {TARGET_DTYPE}): {', '.join(missing)}; "
            "`python -m benchmarks.run` (the full grid) measures them."
        )
    mem = data.get("memory_target")
    if mem:
        lines += [
            "",
            f"## Memory: batched Hessian, {mem['net']} net, B = {mem['batch']}, {mem['dtype']}, "
            f"budget {mem['budget'] // 2**20} MiB",
            "",
            "| route | peak RSS of one call | error | wall s |",
            "|---|---|---|---|",
        ]
        for r in mem["rows"]:
            err = _cell(r.get("error"), ".1e")
            note = r.get("error_text", "")
            lines.append(
                f"| {r['name']} | {_fmt_bytes(r.get('run_bytes'))} {note} | {err} | "
                f"{r['wall_s']:.1f} |"
            )
        lines.append(
            f"\nChunked within budget while the naive vmap exceeds it: "
            f"**{'PASS' if mem['pass'] else 'FAIL'}**."
        )
    comp = data.get("compile_target")
    if comp:
        lines += [
            "",
            f"Compile time of `batch_input_hessian(mlp_function(...))` on {comp['sizes']} "
            f"(B = 256 float32, `lower().compile()`): {comp['compile_s']:.2f} s.",
        ]
    gemms = data.get("hessian_gemms")
    if gemms:
        lines += [
            "",
            f"## Hessian: XLA's GEMMs alone (B = {TARGET_BATCH}, {TARGET_DTYPE})",
            "",
            "Every GEMM the closed-form Hessian's XLA route runs (the layer sum as XLA einsums, "
            "route `closed form, XLA contraction`), at its own shapes and counts, timed alone "
            "with its operands resident (fastest call less dispatch; "
            "[benchmarks/gemm_bound.py](gemm_bound.py)). Their sum leaves out the activations "
            "and the memory-bound scaling `c ⊙ Jz` that feeds the contraction: it bounds what "
            "that design can reach with XLA's GEMMs. jaxjac's own route runs the layer sum in "
            "a fused CPU kernel instead (`jaxjac/_hessian_kernel.py`), which this bound does not "
            "limit.",
            "",
            "| net | GEMM | shape | calls | us a call | GFLOP/s | ms in all |",
            "|---|---|---|---|---|---|---|",
        ]
        for net, g in gemms.items():
            for it in g["items"]:
                lines.append(
                    f"| {net} | {it['name']} | {'x'.join(map(str, it['shape']))} | "
                    f"{it['calls']} | {1e6 * it['seconds']:.0f} | "
                    f"{it['flops'] / it['seconds'] / 1e9:.0f} | "
                    f"{1e3 * it['seconds'] * it['calls']:.2f} |"
                )
        lines += [
            "",
            "| net | FLOP floor ms | GEMMs alone ms | x floor | XLA route ms | x GEMMs "
            "| jaxjac (fused) ms | x GEMMs |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for net, g in gemms.items():
            floor = g.get("floor_s")
            lines.append(
                f"| {net} | {_cell(floor and 1e3 * floor, '.3g')} | {1e3 * g['gemm_s']:.3g} | "
                f"{_cell(floor and g['gemm_s'] / floor, '.2f')} | {1e3 * g['xla_s']:.3g} | "
                f"{g['xla_s'] / g['gemm_s']:.2f} | {1e3 * g['jaxjac_s']:.3g} | "
                f"{g['jaxjac_s'] / g['gemm_s']:.2f} |"
            )
    groups: dict[tuple, list[dict]] = {}
    for r in data["records"]:
        groups.setdefault(
            (
                r["net"],
                r["dtype"],
                r["batch"]
                if r["task"] != "weight_jacobian"
                else r["batch"] * 8
                if r["batch"] > 1
                else 1,
            ),
            [],
        ).append(r)
    for (net, dtype, batch), recs in groups.items():
        lines += [
            "",
            f"## {net} {W.NETS[net]}, B = {batch}, {dtype}",
            "",
            "| task | route | compile s | median ms | IQR ms | vs naive | vs torch | % peak | "
            "x floor | peak RSS | error | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in recs:
            task = r["task"] + (f" (B={r['batch']})" if r["task"] == "weight_jacobian" else "")
            if r.get("status") != "ok":
                lines.append(
                    f"| {task} | {r['route']} | | | | | | | | | | "
                    f"{r.get('status')}: {r.get('note', '')} |"
                )
                continue
            lines.append(
                f"| {task} | {r['route']} | {r['compile_s']:.2f} | {_fmt_ms(r['median_s'])} | "
                f"{_fmt_ms(r['p25_s'])}-{_fmt_ms(r['p75_s'])} | "
                f"{_fmt_ratio(r.get('vs_best_naive'))} | "
                f"{_fmt_ratio(r.get('vs_best_torch'))} | {r['pct_peak']:.0f} | "
                f"{r['x_floor']:.1f} | {_fmt_bytes(r.get('peak_rss_bytes'))} | "
                f"{r['error']:.1e} | {r.get('memory_note', '')} |"
            )
    lines += [
        "",
        "## FLOP counts",
        "",
        "```",
        W.__doc__.split("**FLOP counts**")[1].split("**Memory")[0].strip(),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(path: Path, records: list[dict]) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.get("status") == "ok"]
    head = [r for r in ok if r["dtype"] == TARGET_DTYPE and r["net"] in ("small", "wide", "square")]
    groups: dict[tuple, list[dict]] = {}
    for r in head or ok:
        groups.setdefault((r["net"], r["task"], r["batch"], r["dtype"]), []).append(r)
    keys = sorted(groups, key=lambda k: (k[0], W.TASKS.index(k[1]), k[2]))[:24]
    if not keys:
        return
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.6 * rows), squeeze=False)
    colors = {"jaxjac": "C0", "closed": "C1", "naive": "C7", "folx": "C2", "torch": "C3"}
    for ax, key in zip(axes.flat, keys, strict=False):
        recs = groups[key]
        ms = [1e3 * r["median_s"] for r in recs]
        left = min(ms) / 3  # bars start here, so every bar has a visible length on the log axis
        ax.barh(
            [r["route"] for r in recs],
            [m - left for m in ms],
            left=left,
            color=[colors[r["family"]] for r in recs],
        )
        ax.set_xscale("log")
        ax.set_xlim(left, max(ms) * 1.5)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_yaxis()
        ax.set_title(f"{key[0]} {key[1]} B={key[2]} {key[3]}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("median ms (log)", fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="the under-3-minute subset (make bench-quick)"
    )
    p.add_argument("--net", nargs="+", default=["small", "wide"], choices=["small", "wide"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 256, 4096])
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=list(W.DTYPES))
    p.add_argument("--task", nargs="+", default=list(W.TASKS), choices=list(W.TASKS))
    p.add_argument("--repeats", type=int, default=None, help="timed calls per route")
    p.add_argument("--route-budget-s", type=float, default=None, help="stop repeating after this")
    p.add_argument("--mem-budget-gb", type=float, default=8.0, help="skip routes estimated above")
    p.add_argument(
        "--memory",
        choices=["none", "target", "all"],
        default=None,
        help="peak RSS subprocesses: none, the chunking target only (quick), or every route",
    )
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.json/.md/.png")
    p.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.route_budget_s is None:
        args.route_budget_s = 2.0 if args.quick else 30.0
    if args.memory is None:
        args.memory = "target" if args.quick else "all"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe_memory:
        probe_memory(json.loads(args.probe_memory))
        return 0
    start = time.perf_counter()
    if W.torch_available():
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    machine = machine_info()
    peak = measure_peak(3 if args.quick else 10)
    print(
        f"{machine['cpu']}, {machine['cores']} cores, load {machine['loadavg_start'][0]:.2f}; "
        f"peak {peak['gflops_float32']:.0f} GFLOP/s f32, {peak['gflops_float64']:.0f} f64, "
        f"copy {peak['copy_gbps']:.1f} GB/s",
        flush=True,
    )
    records: list[dict] = []
    # All JAX routes of every workload first, then all torch routes: each runtime's spinning
    # worker threads take the two cores from the other (ANCHORS), so the blocks never alternate.
    plan = build_plan(args)
    for lib in ("jax", "torch"):
        for net, batch, dtype, tasks in plan:
            for task in tasks:
                records += run_task(net, batch, dtype, task, args, peak, lib)
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["net"], rec["batch"], rec["dtype"], rec["task"]), []).append(rec)
    for group in groups.values():
        _add_ratios(group)
    extra: dict[str, Any] = {}
    if args.memory != "none":
        print(f"{_elapsed()} memory target (fresh subprocesses):", flush=True)
        extra["memory_target"] = memory_target()
    extra["compile_target"] = compile_target()
    machine["loadavg_end"] = os.getloadavg()
    peak_end = measure_peak(3 if args.quick else 10)
    peak = {k: max(v, peak_end[k]) for k, v in peak.items()}
    add_peak_fractions(records, peak)
    extra["hessian_gemms"] = hessian_gemms_target(records)  # after the floors it is set beside
    argv_str = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    tunables = os.environ.get("GLIBC_TUNABLES")  # set before the process starts, so part of it
    prefix = f"GLIBC_TUNABLES={tunables} " if tunables else ""
    data = {
        "command": f"{prefix}python -m benchmarks.run {argv_str}".strip(),
        "machine": machine,
        "peak": peak,
        "repeats": args.repeats,
        "route_budget_s": args.route_budget_s,
        "mem_budget_gb": args.mem_budget_gb,
        "records": records,
        **extra,
        "targets": evaluate_targets(records, extra),
        "wall_s": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=1, default=float))
    write_markdown(args.out / "RESULTS.md", data)
    write_plot(args.out / "results.png", records)
    print("\nTargets:")
    for t in data["targets"]:
        ratio = _cell(t.get("ratio"), ".2f")
        print(f"  {t['status']:<12} {t['net']:<7} {t['task']:<20} {t['target']:<40} {ratio}")
    print(f"wrote {args.out}/results.json, RESULTS.md, results.png in {data['wall_s']:.0f} s")
    return 1 if any(r.get("status") == "wrong" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
