"""The research notebooks run top to bottom, stay small, and are committed with their plots.

Each notebook's single source is ``notebooks/NN_name.py`` (jupytext percent format); ``make
notebooks`` writes the executed ``notebooks/NN_name.ipynb`` beside it. A committed ``.ipynb``
whose cells (type and source) differ from what jupytext reads from its ``.py`` is stale and
fails here. Execution uses nbclient in a fresh ``python3`` kernel (ipykernel's, i.e. this
interpreter's) with ``notebooks/`` as working directory; the executed copy is kept in memory and
the committed file is left untouched.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_jacobian_basics",
    "02_mlp_jacobian_hessian",
    "03_sensitivity",
    "04_batched_and_sharded",
)
MAX_BYTES = 1_000_000  # committed files stay readable on GitHub and cheap to clone
CELL_TIMEOUT_S = 300  # one cell; a hung kernel fails here rather than at CI's own timeout
NOTEBOOK_BUDGET_S = 120  # each notebook runs in under two minutes on this machine
REBUILD = "stale: regenerate with `make notebooks`"


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


def _stale_cells(committed, source) -> list[str]:
    """How the committed notebook's cells differ from its source's (type and text); [] if none."""
    if len(committed.cells) != len(source.cells):
        return [f"{len(committed.cells)} cells, the source has {len(source.cells)}"]
    return [
        f"cell {i} ({want.cell_type}) differs:\n"
        f"committed: {got.source[:300]!r}\nsource:    {want.source[:300]!r}"
        for i, (got, want) in enumerate(zip(committed.cells, source.cells, strict=True))
        if (got.cell_type, got.source) != (want.cell_type, want.source)
    ]


def test_every_source_is_listed():
    # A new notebooks/NN_name.py is covered here, and an .ipynb never outlives its source.
    assert tuple(sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9]*.py"))) == NOTEBOOKS
    assert tuple(sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_matches_its_source(name):
    # The committed .ipynb must be what `make notebooks` writes from the .py: the same cells, in
    # order, with the same type and source (outputs aside). Editing a .py without it fails.
    committed = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    source = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    assert source.metadata["kernelspec"]["name"] == "python3"
    diffs = _stale_cells(committed, source)
    assert diffs == [], f"{name}.ipynb: {REBUILD}\n" + "\n".join(diffs)
    # The check can fail: a changed, a missing and a retyped cell are each caught.
    edited = copy.deepcopy(source)
    edited.cells[-1].source += "\n# edited"
    assert _stale_cells(committed, edited)
    assert _stale_cells(committed, nbformat.v4.new_notebook(cells=source.cells[:-1]))
    retyped = copy.deepcopy(source)
    retyped.cells[0].cell_type = "raw"
    assert _stale_cells(committed, retyped)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_executed_small_and_shows_plots(name):
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), (
        f"{path.name} has unexecuted cells: {REBUILD}"
    )
    assert any(cell.outputs for cell in code_cells), f"{path.name} has no outputs: {REBUILD}"
    assert _errors(nb) == []
    assert _image_outputs(nb) >= 1, f"{path.name} has no stored plot"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name):
    nb = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")  # the source, as `make notebooks` runs it
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
