"""Tolerances and oracles shared by the tests.

Tolerances come from the dtype's machine epsilon, with the reason next to each:

* ``exact_rtol``: two exact routes (closed form, forward and reverse autodiff) differ only by
  rounding. Each entry is a sum of at most a few thousand products here (depth ≤ 5, widths
  ≤ 32), so 1000 ε bounds the accumulated error with room and still fails any real bug
  (2e-13 in float64, 1.2e-4 in float32).
* ``fd_rtol``: a central difference with step ``h = ε^{1/3}`` has truncation error ``O(h²)``
  and rounding error ``O(ε/h)``, both ``ε^{2/3}``; 100 ε^{2/3} (3.7e-9 in float64) leaves room
  for derivatives of order 10 without admitting a wrong formula (errors of order 1).

Errors are measured normwise: ``max|a - b| / max|b|``, so tiny entries near cancellation do not
dominate and a zero reference falls back to absolute error against ``scale``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def exact_rtol(dtype) -> float:
    return 1000 * eps(dtype)


def fd_rtol(dtype) -> float:
    return 100 * eps(dtype) ** (2 / 3)


def rel_err(a, b, scale: float | None = None) -> float:
    """Normwise relative error ``max|a - b| / max(max|b|, scale)`` over every leaf."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    num = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
        for x, y in zip(la, lb, strict=True)
    )
    den = max(float(np.max(np.abs(np.asarray(y)), initial=0.0)) for y in lb)
    if scale is not None:
        den = max(den, scale)
    return num / den if den > 0 else num


def assert_close(a, b, rtol: float, scale: float | None = None, what: str = "") -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.shape(x) == np.shape(y), f"{what}: shapes {np.shape(x)} vs {np.shape(y)}"
    err = rel_err(a, b, scale)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.3e}"


def central_jacobian(fn, x: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian of ``fn: (n,) -> (m,)`` in float64, shape ``(m, n)``.

    Step ``h_i = ε^{1/3} max(1, |x_i|)`` balances truncation against rounding (see module doc).
    """
    x = np.asarray(x, np.float64)
    h = np.finfo(np.float64).eps ** (1 / 3) * np.maximum(1.0, np.abs(x))
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h[i]
        cols.append((np.asarray(fn(x + e)) - np.asarray(fn(x - e))) / (2 * h[i]))
    return np.stack(cols, axis=-1)


def run_code_blocks(blocks: list[tuple[str, str]], folder: Path) -> str:
    """Run ``(label, code)`` blocks in order in one fresh interpreter in ``folder``; its stdout.

    Each block is followed by a line that prints a marker: the run must exit 0 and print every
    marker in order, so a block that stops early (an ``exit()``, a swallowed error) fails too.
    """
    done = "code block {} ran to its end"
    script = "\n\n".join(
        f"# --- {label}\n{code}\nprint({done.format(i)!r}, flush=True)"
        for i, (label, code) in enumerate(blocks)
    )
    (folder / "blocks.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "blocks.py"],
        cwd=folder,
        env={**os.environ, "TMPDIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = re.findall(r"(?m)^" + done.format(r"(\d+)") + "$", proc.stdout)
    assert ran == [str(i) for i in range(len(blocks))], (ran, proc.stdout[-3000:])
    return proc.stdout
