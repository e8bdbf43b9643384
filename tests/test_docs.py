"""The documentation site (docs/, mkdocs.yml) is complete and its examples run.

* Every name of ``jaxjac.__all__`` and every public submodule has an entry rendered by
  mkdocstrings in docs/api/, and the top-level page lists every name.
* Every page of docs/ and every notebook is in the ``nav`` of mkdocs.yml, and the ``nav`` names
  nothing that is missing.
* The Python blocks of the guide pages run, in ``nav`` order, in one fresh interpreter with JAX's
  default settings (as a user runs them); the ``$ jaxjac`` console commands then run on the
  files those blocks wrote, and print what the pages quote; the curvature page's output sentence
  matches the run.
* ``mkdocs build --strict`` succeeds (about ten seconds; ``make docs`` runs the same build into
  site/), renders every public name, and renders every notebook with all of its plots.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

import jaxjac
from tests.helpers import run_code_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PUBLIC_MODULES = sorted(
    p.stem for p in (ROOT / "jaxjac").glob("*.py") if not p.stem.startswith("_")
)


def _nav_paths() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    paths: list[str] = []

    def walk(node):
        if isinstance(node, str):
            paths.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return paths


def _directives() -> list[tuple[str, dict]]:
    """``(identifier, options)`` for every ``::: identifier`` of docs/api/."""
    found = []
    for page in sorted(API.glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            block = []
            for following in lines[i + 1 :]:
                if following.strip() and not following.startswith("    "):
                    break
                block.append(following)
            options = (yaml.safe_load(textwrap.dedent("\n".join(block))) or {}).get("options", {})
            found.append((line[4:].strip(), options or {}))
    return found


def _resolve(identifier: str):
    parts = identifier.split(".")
    obj = __import__(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = __import__(".".join(parts[: i + 1]), fromlist=["_"])
        except ImportError:
            obj = getattr(obj, part)
    return obj


def _rendered_names() -> dict[str, set[int]]:
    """Name -> ids of the objects that some ``:::`` directive renders under that name."""
    rendered: dict[str, set[int]] = {}

    def add(name, obj):
        rendered.setdefault(name, set()).add(id(obj))

    for identifier, options in _directives():
        obj = _resolve(identifier)
        add(identifier.rsplit(".", 1)[-1], obj)
        members = options.get("members")
        if members is False:
            continue
        if isinstance(members, list):
            names = members
        elif isinstance(obj, types.ModuleType):
            names = getattr(obj, "__all__", [])
        else:
            continue
        for name in names:
            add(name, getattr(obj, name))
    return rendered


def test_every_public_name_and_module_has_an_api_entry():
    rendered = _rendered_names()
    missing = [
        name
        for name in jaxjac.__all__
        if id(getattr(jaxjac, name)) not in rendered.get(name, set())
    ]
    assert not missing, f"no mkdocstrings entry in docs/api/ for jaxjac.{missing}"
    identifiers = {identifier for identifier, _ in _directives()}
    pages = [m for m in PUBLIC_MODULES if f"jaxjac.{m}" not in identifiers]
    assert not pages, f"public modules without an API page: {pages}"
    assert "jaxjac" in identifiers
    # The top-level page lists every name (linked to its entry: the strict build checks links).
    index = (API / "jaxjac.md").read_text()
    unlisted = [
        name
        for name in jaxjac.__all__
        if not isinstance(getattr(jaxjac, name), types.ModuleType) and f"`jj.{name}`" not in index
    ]
    assert not unlisted, unlisted


def test_every_page_and_notebook_is_in_the_nav():
    nav = _nav_paths()
    assert len(nav) == len(set(nav)), nav
    pages = {
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if p.relative_to(DOCS).parts[0] != "hooks"
    }
    notebooks = {f"notebooks/{p.name}" for p in NOTEBOOKS}
    assert len(notebooks) >= 4
    assert set(nav) == pages | notebooks, set(nav) ^ (pages | notebooks)
    # The notebooks' jupytext sources are no pages: the hook adds only the .ipynb files.
    assert not any(p.endswith(".py") for p in nav)


def _guide_pages() -> list[Path]:
    return [DOCS / p for p in _nav_paths() if p.endswith(".md")]


def test_python_blocks_then_console_commands_run(tmp_path):
    blocks = [
        (page, block)
        for page in _guide_pages()
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    ]
    assert len(blocks) >= 10
    labelled = [(f"{page.relative_to(DOCS)}, block {i}", b) for i, (page, b) in enumerate(blocks)]
    _check_curvature_example(run_code_blocks(labelled, tmp_path))
    # The console examples use the files the Python blocks wrote (model.npz, data.csv).
    exe = Path(sys.executable).with_name("jaxjac")
    commands = _console_commands()
    assert commands
    for command, quoted in commands:
        args = shlex.split(command)[1:]
        proc = subprocess.run(
            [str(exe), *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (command, proc.stderr)
        if quoted:
            _check_quoted_output(quoted, proc.stdout)
    assert (tmp_path / "results" / "sensitivity.csv").exists()


def test_strict_build_renders_every_name_and_every_notebook_with_its_plots(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-5000:]
    html = "".join(p.read_text() for p in (site / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="(jaxjac(?:\.\w+)+)"', html))
    for name in jaxjac.__all__:
        obj = getattr(jaxjac, name)
        if isinstance(obj, types.ModuleType):
            assert (site / "api" / name / "index.html").is_file(), name
        else:
            assert any(a.rsplit(".", 1)[-1] == name for a in anchors), name
    for notebook in NOTEBOOKS:
        cells = json.loads(notebook.read_text())["cells"]
        plots = sum(
            "image/png" in output.get("data", {})
            for cell in cells
            for output in cell.get("outputs", [])
        )
        assert plots >= 1, f"{notebook.name} has no plots"
        page = (site / "notebooks" / notebook.stem / "index.html").read_text()
        assert page.count("data:image/png;base64,") >= plots, notebook.name


def _console_commands() -> list[tuple[str, str]]:
    """``(command, the output the page shows under it)`` for every ``$ jaxjac`` line."""
    found = []
    for page in _guide_pages():
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), flags=re.S):
            for part in re.split(r"(?m)^(?=\$ )", block):
                first, _, rest = part.partition("\n")
                if first.startswith("$ jaxjac"):
                    found.append((first[2:], rest))
    return found


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"


def _check_quoted_output(quoted: str, printed: str) -> None:
    """The quoted output is what the command prints, timings aside.

    The words must match exactly; every quoted number must match the printed one to half a
    unit of its last quoted digit, plus as much again for rounding on another CPU (integers,
    such as counts and row numbers, exactly).
    """
    timing = r"\d+(?:\.\d+)? s$"  # the run time ends the first line
    quoted = re.sub(timing, "<time>", quoted.strip(), count=1, flags=re.M)
    printed = re.sub(timing, "<time>", printed.strip(), count=1, flags=re.M)
    assert re.split(_NUMBER, quoted) == re.split(_NUMBER, printed), (quoted, printed)
    for want, got in zip(re.findall(_NUMBER, quoted), re.findall(_NUMBER, printed), strict=True):
        mantissa, _, exponent = want.lower().partition("e")
        if "." not in mantissa:
            assert got == want, (want, got, printed)
            continue
        unit = 10.0 ** (int(exponent or 0) - len(mantissa.split(".")[1]))
        assert abs(float(got) - float(want)) <= unit, (want, got, printed)


def _numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r}"
    return [float(g) for g in match.groups()]


def _check_curvature_example(stdout: str) -> None:
    """The curvature page's output says what its prose claims.

    The prose quotes the tracked sharpness to one decimal and the losses to one or two
    significant digits; the run is float32 on whatever CPU runs the suite. Quoted and printed
    values may then differ by half a unit of the last quoted digit, and as much again is
    allowed for float32 differences between machines: 0.1 on a sharpness, 10 % on a loss.
    """
    rows = [
        tuple(float(g) for g in m.groups())
        for m in re.finditer(
            r"^step +(\d+) +loss ([\d.]+) +sharpness +([\d.]+) +\(2/lr = ([\d.]+)\)$",
            stdout,
            flags=re.M,
        )
    ]
    assert len(rows) == 6, stdout[-3000:]  # steps 0, 50, …, 250
    steps, losses, sharp, edge = (np.array(col) for col in zip(*rows, strict=True))
    assert np.all(steps == np.arange(0, 300, 50)) and np.all(edge == edge[0])
    # Progressive sharpening in the stable regime: the tracked top eigenvalue rises at every
    # report and stays below 2/lr (Lanczos Ritz values never exceed the top eigenvalue, so an
    # estimate above 2/lr would mean the true one is too), while the loss falls at every report.
    assert np.all(np.diff(sharp) > 0), sharp
    assert np.all(sharp < edge), (sharp, edge[0])
    assert np.all(np.diff(losses) < 0), losses
    # After the last step the on-demand sharpness has reached the edge. At the edge of
    # stability gradient descent self-stabilises with the sharpness hovering at 2/lr; 5 % either
    # side is the margin allowed for that oscillation.
    (final,) = _numbers(r"(?m)^sharpness ([\d.e+-]+)$", stdout)
    assert abs(final - edge[0]) <= 0.05 * edge[0], (final, edge[0])
    (top,) = _numbers(r"(?m)^top-3 \[\s*([\d.e+-]+)", stdout)
    assert abs(top - final) <= 1e-3 * final  # the same eigenvalue, two Lanczos runs (float32)
    (gn_loss,) = _numbers(r"(?m)^loss after 10 Gauss-Newton steps ([\d.e+-]+)$", stdout)
    assert gn_loss < losses[-1]
    (std,) = _numbers(r"(?m)^predictive std ([\d.e+-]+)$", stdout)
    assert np.isfinite(std) and std > 0

    prose = (DOCS / "guide" / "curvature.md").read_text()
    quoted = prose[prose.index("Output (float32): the sharpness climbs") :]
    climbs = re.search(r"climbs ([\d.]+(?: → [\d.]+)+) towards 2/lr = ([\d.]+)", quoted)
    assert climbs, "the curvature page's output sentence changed: update this test"
    values = [float(v) for v in climbs.group(1).split(" → ")]
    assert len(values) == len(sharp) and np.all(np.abs(sharp - values) <= 0.1), (sharp, values)
    assert float(climbs.group(2)) == edge[0]
    start, end = _numbers(r"loss falls from ([\d.]+) to ([\d.]+)", quoted)
    assert abs(losses[0] / start - 1) <= 0.1 and abs(losses[-1] / end - 1) <= 0.1, losses
    # "about 1e-4": the same order of magnitude, within a factor 2 either way.
    (about,) = _numbers(r"bring the loss to about\s+(\d+(?:\.\d+)?e[+-]?\d+)", quoted)
    assert about / 2 <= gn_loss <= 2 * about, (gn_loss, about)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_module_page_exists(module):
    assert (API / f"{module}.md").is_file(), module
