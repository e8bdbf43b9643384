"""The research notebooks run top to bottom, stay small, and are committed with their plots.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (ipykernel's, i.e. this
interpreter's) with ``notebooks/`` as working directory; the executed copy is kept in memory and
the committed file is left untouched. ``notebooks/build_notebooks.py`` regenerates and executes
them in place, and its cell lists are the source of truth: a committed notebook whose cells
differ from them is stale and fails here.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_jacobian_basics.ipynb",
    "02_mlp_jacobian_hessian.ipynb",
    "03_sensitivity.ipynb",
    "04_batched_and_sharded.ipynb",
)
MAX_BYTES = 1_000_000  # committed files stay readable on GitHub and cheap to clone
CELL_TIMEOUT_S = 300  # one cell; a hung kernel fails here rather than at CI's own timeout
NOTEBOOK_BUDGET_S = 120  # each notebook runs in under two minutes on this machine


def _image_outputs(nb) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def _errors(nb) -> list[str]:
    return [
        f"{output.ename}: {output.evalue}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]


@functools.cache
def _builder():
    """``notebooks/build_notebooks.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOKS_DIR / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builder_covers_the_notebooks():
    assert tuple(_builder().NOTEBOOKS) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_matches_its_builder(name):
    # The committed file must be what build_notebooks.py writes: the same cells, in order, with
    # the same type and source (outputs aside). Editing a cell source without rebuilding fails.
    committed = nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells
    built = _builder().NOTEBOOKS[name]
    rebuild = f"stale: rebuild with `python notebooks/build_notebooks.py {name[:2]}`"
    assert len(committed) == len(built), (
        f"{name}: {len(committed)} cells, builder {len(built)}; {rebuild}"
    )
    for i, (got, want) in enumerate(zip(committed, built, strict=True)):
        assert (got.cell_type, got.source) == (want.cell_type, want.source), (
            f"{name} cell {i} ({want.cell_type}) differs from the builder's; {rebuild}\n"
            f"committed: {got.source[:300]!r}\nbuilder:   {want.source[:300]!r}"
        )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_small_and_shows_plots(name):
    path = NOTEBOOKS_DIR / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), (
        f"{name} has unexecuted cells: rebuild with notebooks/build_notebooks.py"
    )
    assert _errors(nb) == []
    assert _image_outputs(nb) >= 1, f"{name} has no stored plot"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    elapsed = time.perf_counter() - start
    assert _errors(nb) == []
    assert _image_outputs(nb) >= 1, f"{name} produced no plot"
    assert len(nbformat.writes(nb).encode()) < MAX_BYTES
    assert elapsed < NOTEBOOK_BUDGET_S, f"{name} took {elapsed:.0f} s"
