"""The packages, installed outside the repository: what a user of the wheel or the sdist gets.

One test, so that pytest-xdist never builds twice: ``python -m build`` makes the sdist and, from
it, the wheel; the wheel goes into a fresh virtual environment outside the repository (its
dependencies from the package index), where ``jaxjac demo`` and an import check run with no C or
C++ compiler on the ``PATH`` and the working directory outside the repository, so that a module
or file missing from the wheel, or an import of something it does not install, fails here. Then
the sdist is built once more with no compiler on the ``PATH`` and installed in place of the wheel:
the install goes on without the kernel, and the Hessian takes XLA's route, saying so once.

Both builds run without build isolation, with this environment's setuptools and jaxlib (the test
extra has them): an isolated build would download jaxlib into two throwaway environments (15
seconds more), and ``make dist`` builds isolated anyway.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.findall(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[0]
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
KERNELS = ["", "_x86_64_v3", "_x86_64_v4"] if X86_64 else [""]
COMPILERS = ["cc", "c++", "gcc", "g++", "clang", "clang++", "icx", "icpx"]
BASIC_TOOLS = ["sh", "env", "ls", "cat", "uname"]  # a PATH's usual residents, without compilers

# Run by the environment's python with -I: sys.path holds neither the working directory nor
# PYTHONPATH, so everything comes from the installed wheel.
CHECK = r"""
import importlib, json, pkgutil, sys, warnings
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import jaxjac as jj
from jaxjac import _hessian_kernel as hk

kernel = sys.argv[1] == "kernel"
# every module of the package imports: none needs a file or a package the wheel lacks
modules = sorted(m.name for m in pkgutil.iter_modules(jj.__path__, "jaxjac."))
for name in modules:
    if not name.startswith("jaxjac._hessian_contract"):  # the kernel's builds: not Python
        importlib.import_module(name)
params = jj.mlp_init(jax.random.key(0), [4, 7, 6, 3], dtype=jnp.float64)
xs = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = jj.batch_input_hessian(jj.mlp_apply, params, xs)
    again = jj.batch_input_hessian(jj.mlp_apply, params, xs[:3])
    lowered = jax.jit(lambda v: jj.batch_input_hessian(jj.mlp_apply, params, v)).lower(xs)
want = jax.vmap(jax.hessian(lambda x: jj.mlp_apply(params, x)))(xs)
scale = float(jnp.max(jnp.abs(want)))
print(json.dumps({
    "version": jj.__version__,
    "file": jj.__file__,
    "modules": modules,
    "available": hk.available(),
    "chosen": None if hk._chosen() is None else hk._chosen().module,
    "fused": "jaxjac_hessian_layer_sum" in lowered.as_text(),
    "error": float(jnp.max(jnp.abs(got - want))) / scale,
    "again": float(jnp.max(jnp.abs(again - want[:3]))) / scale,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _check(python: Path, mode: str, env: dict, cwd: Path) -> dict:
    proc = _run([str(python), "-I", "-c", CHECK, mode], env=env, cwd=cwd, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _basic_tools(tmp_path: Path) -> Path:
    """A folder with links to a few basic tools: the system's part of the test's ``PATH``."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in BASIC_TOOLS:
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    return tools


def _without_compilers(*dirs: Path) -> str:
    """A ``PATH`` of ``dirs``, checked to hold no C or C++ compiler."""
    path = os.pathsep.join(map(str, dirs))
    found = {name: shutil.which(name, path=path) for name in COMPILERS}
    assert not any(found.values()), f"a compiler on the test's PATH: {found}"
    return path


@pytest.mark.slow
def test_the_wheel_installs_and_runs_without_a_compiler_and_the_sdist_builds_without_one(
    tmp_path,
):
    pytest.importorskip("build", reason="the test extra installs build")
    assert not tmp_path.is_relative_to(ROOT)

    # -- the sdist, and the wheel built from it --------------------------------------------
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)]
    _run(build, timeout=600)
    (sdist,) = dist.glob(f"jaxjac-{VERSION}.tar.gz")
    (wheel,) = dist.glob(f"jaxjac-{VERSION}-*.whl")
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"csrc/hessian_contract.cc", "setup.py", "pyproject.toml", "CHANGELOG.md"} <= in_sdist
    assert not [n for n in in_sdist if n.startswith("tests/") or n.endswith((".so", ".pyc"))]
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = whl.namelist()
    assert {n.split("/")[0] for n in in_wheel} == {"jaxjac", f"jaxjac-{VERSION}.dist-info"}
    built = sorted(n for n in in_wheel if n.endswith((".so", ".pyd")))
    assert [re.sub(r"\..*", "", n.removeprefix("jaxjac/_hessian_contract")) for n in built] == (
        KERNELS
    ), built

    # -- a fresh environment outside the repository; pip from this one ----------------------
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input"]
    _run([*pip, str(wheel)], timeout=600)

    tools = _basic_tools(tmp_path)
    path = _without_compilers(venv / "bin", tools)
    env = {"PATH": path, "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": "C.UTF-8"}
    work = tmp_path / "work"  # the working directory: no jaxjac/ beside it
    work.mkdir()

    version = _run([str(venv / "bin" / "jaxjac"), "--version"], env=env, cwd=work)
    assert version.stdout.strip() == f"jaxjac {VERSION}"
    demo = _run([str(venv / "bin" / "jaxjac"), "demo"], env=env, cwd=work, timeout=300)
    assert demo.stdout.startswith(f"jaxjac {VERSION} demo: tansig MLP [3, 5, 4, 2]"), demo.stdout
    assert "all routes agree" in demo.stdout
    assert "det J = x - y = -3" in demo.stdout
    assert "Warning" not in demo.stderr, demo.stderr

    got = _check(python, "kernel", env, work)
    assert got["version"] == VERSION
    assert Path(got["file"]).is_relative_to(venv), got["file"]
    assert {"jaxjac.cli", "jaxjac.routes", "jaxjac.closed_form"} <= set(got["modules"])
    assert got["warnings"] == []
    assert got["available"] and got["fused"], got  # the wheel carries the kernel: it runs
    assert got["chosen"].startswith("jaxjac._hessian_contract")
    assert got["error"] < 1e-12 and got["again"] < 1e-12, got

    # -- the sdist with no compiler: it builds, installs, and takes XLA's route --------------
    plain = tmp_path / "plain"
    build_env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "LDSHARED")}
    build_env["PATH"] = _without_compilers(Path(sys.executable).parent, tools)
    wheel_of_sdist = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    _run([*wheel_of_sdist, "--no-build-isolation", "-w", str(plain), str(sdist)], env=build_env)
    (plain_wheel,) = plain.glob(f"jaxjac-{VERSION}-*.whl")
    with zipfile.ZipFile(plain_wheel) as whl:
        assert not [n for n in whl.namelist() if n.endswith((".so", ".pyd"))]
    _run([*pip, "--no-deps", "--force-reinstall", str(plain_wheel)], timeout=300)

    got = _check(python, "plain", env, work)
    assert not got["available"] and not got["fused"] and got["chosen"] is None, got
    assert got["error"] < 1e-12 and got["again"] < 1e-12, got
    (said,) = got["warnings"]  # once, for both Hessians
    assert said.startswith("FusedKernelWarning: the fused Hessian kernel is not installed"), said
