"""Figures `per_class_trimap_iou` and `per_class_iou_gain` (BPKD Fig. 6 / Table 8, SKD Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, label_colours, new_figure


def per_class_figure(rows: Sequence[Mapping], ylabel: str, title: str) -> NotebookFigure:
    """Grouped bars: one group per class (row of `kdlab.inspection.per_class_table` or
    `kdlab.analysis.gains_over`), one bar per label (the other columns); with more than 8 labels,
    a class × label heat map with the values written in (bars would be too thin)."""
    labels = [k for k in rows[0] if k != "class"]
    if len(labels) > 8:
        return _heatmap_figure(rows, labels, ylabel, title)
    colours = label_colours(labels)
    width = 0.8 / len(labels)
    positions = np.arange(len(rows))
    fig, axes = new_figure(1, 1, width=max(5.0, 0.35 * len(rows) * len(labels)), height=3.6)
    ax = axes[0, 0]
    for index, label in enumerate(labels):
        ax.bar(positions + (index - (len(labels) - 1) / 2) * width, [row[label] for row in rows], width,
               color=colours[label], label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(positions, [row["class"] for row in rows], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(labels), 6))
    return fig


def _heatmap_figure(rows: Sequence[Mapping], labels: Sequence[str], colorbar_label: str,
                    title: str) -> NotebookFigure:
    values = np.array([[row[label] for row in rows] for label in labels], dtype=float)
    signed = np.nanmin(values) < 0  # gains: a diverging map centred on 0
    limit = np.nanmax(np.abs(values)) if signed else 1.0
    fig, axes = new_figure(1, 1, width=max(5.0, 0.75 * len(rows) + 2.5), height=max(3.0, 0.3 * len(labels) + 1.2))
    ax = axes[0, 0]
    shown = ax.imshow(values, cmap="RdBu" if signed else "viridis", vmin=-limit if signed else 0.0, vmax=limit,
                      aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = abs(value) > 0.6 * limit if signed else value < 0.5
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(rows)), [row["class"] for row in rows], rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, label=colorbar_label)
    return fig
