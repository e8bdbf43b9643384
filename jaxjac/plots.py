"""Plots of a :class:`~jaxjac.measures.SensitivityReport` (matplotlib, imported lazily).

The figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
without ``pyplot``: no global backend is switched, no window opens, nothing is left in
pyplot's figure registry, so this is safe on headless machines and inside other programs.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jaxjac.measures import SensitivityReport

__all__ = ["plot_interactions", "plot_sensitivity"]


def _figure(n_panels: int, panel_size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """An Agg figure with ``n_panels`` axes on a grid of at most three columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig: Any, target: str | Path | IO[bytes]) -> None:
    fig.savefig(target, format="png", dpi=120)


def plot_sensitivity(
    report: SensitivityReport,
    target: str | Path | IO[bytes],
    *,
    max_features: int = 25,
    max_outputs: int = 12,
) -> None:
    """One horizontal bar chart of the DGSM per output, features sorted, largest on top.

    Bars are ``ν_ik = E[(∂f_k/∂x_i)²]``; the error bars, labelled in each panel's legend, are
    ±1 standard error of that mean. Only the ``max_features`` largest per output and the first
    ``max_outputs`` outputs are drawn (the CSV has them all); the figure's title says so.

    Args:
        report: the sensitivity report.
        target: a path or a binary file object; written as PNG.
        max_features: bars per panel.
        max_outputs: panels.
    """
    n_out, n_in = report.dgsm.shape
    shown = min(n_out, max_outputs)
    bars = min(n_in, max_features)
    fig, axes = _figure(shown, (5.0, 1.2 + 0.28 * bars))
    for k, ax in enumerate(axes):
        order = np.argsort(-report.dgsm[k], kind="stable")[:bars][::-1]
        labels = [report.feature_names[i] for i in order]
        ax.barh(np.arange(bars), report.dgsm[k, order], color="tab:blue", label="DGSM")
        ax.errorbar(
            report.dgsm[k, order],
            np.arange(bars),
            xerr=np.nan_to_num(report.dgsm_se[k, order]),
            fmt="none",
            ecolor="black",
            capsize=2,
            label="±1 standard error",
        )
        ax.legend(loc="lower right", fontsize="small")
        ax.set_yticks(np.arange(bars), labels)
        ax.set_xlabel("DGSM  E[(∂f/∂xᵢ)²]")
        hidden = f" (top {bars} of {n_in})" if bars < n_in else ""
        ax.set_title(f"{report.output_names[k]}{hidden}")
    lines = [
        "DGSM E[(∂f/∂xᵢ)²] per output and feature, largest on top; error bars ±1 standard error"
    ]
    if shown < n_out:
        lines.append(f"first {shown} of {n_out} outputs (all in sensitivity.csv)")
    chars = max(30, int(12 * fig.get_figwidth()))  # about 12 characters per inch at 10 pt
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize="medium")
    _save(fig, target)


def plot_interactions(
    report: SensitivityReport,
    target: str | Path | IO[bytes],
    *,
    max_outputs: int = 12,
    max_labels: int = 30,
    max_annotated: int = 12,
) -> None:
    """Heatmap of ``E|∂²f_k/∂x_i∂x_j|`` per output (needs a report made with ``hessian=True``).

    The colour scale is set by the interactions ``i ≠ j`` alone, as the title says: the diagonal
    holds the pure second derivatives ``E|∂²f_k/∂x_i²|``, often far larger, which would otherwise
    push every interaction to the bottom of the scale. Diagonal cells are drawn grey, off the
    scale. Every cell's value is written in it up to ``max_annotated`` features (all values are
    in the JSON).

    Args:
        report: the sensitivity report.
        target: a path or a binary file object; written as PNG.
        max_outputs: panels (the first outputs).
        max_labels: feature names are written on the axes up to this many features.
        max_annotated: values are written in the cells up to this many features.

    Raises:
        ValueError: if the report has no interactions.
    """
    import matplotlib

    if report.interactions is None:
        raise ValueError("the report has no interactions: compute it with hessian=True")
    n_out, n_in, _ = report.interactions.shape
    shown = min(n_out, max_outputs)
    side = min(2.5 + 0.3 * n_in, 10.0)
    fig, axes = _figure(shown, (side + 1.0, side + 0.4))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.82")  # masked diagonal: grey
    diagonal = np.eye(n_in, dtype=bool)
    cell_points = 72.0 * side / max(n_in, 1)  # a cell's width in points, for the diagonal text
    for k, ax in enumerate(axes):
        matrix = np.asarray(report.interactions[k], np.float64)
        off = np.ma.masked_array(matrix, mask=diagonal)
        top = float(off.max()) if n_in > 1 else 0.0
        # vmax > 0 even for no interaction at all (an additive f), so the scale is defined.
        image = ax.imshow(
            off, cmap=cmap, vmin=0.0, vmax=top if top > 0 else 1.0, interpolation="nearest"
        )
        if n_in > 1:  # one feature has no interaction to put on a scale
            fig.colorbar(image, ax=ax, shrink=0.8, label="E|∂²f/∂xᵢ∂xⱼ|, i ≠ j")
        if n_in <= max_annotated:
            size = min(9.0, max(5.0, 0.22 * cell_points))
            for i in range(n_in):
                for j in range(n_in):
                    # Dark text on the light (grey, upper viridis) cells, light on the dark ones.
                    light = i == j or image.norm(matrix[i, j]) > 0.5
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.3g}",
                        ha="center",
                        va="center",
                        fontsize=size,
                        color="black" if light else "white",
                    )
        if n_in <= max_labels:
            ax.set_xticks(np.arange(n_in), report.feature_names, rotation=90)
            ax.set_yticks(np.arange(n_in), report.feature_names)
        ax.set_title(report.output_names[k])
    written = "values in the cells" if n_in <= max_annotated else "values in report.json"
    lines = [
        f"interactions E|∂²f/∂xᵢ∂xⱼ| ({written}); diagonal excluded from the colour scale",
        "grey diagonal: pure E|∂²f/∂xᵢ²|, often far larger than the interactions i ≠ j",
    ]
    if shown < n_out:
        lines.append(f"first {shown} of {n_out} outputs")
    chars = max(30, int(12 * fig.get_figwidth()))  # about 12 characters per inch at 10 pt
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize="medium")
    _save(fig, target)
