"""Figure `comparison` (BPKD Table 1, BCD Table III, SKD Table 1 as bars): one panel per metric."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, label_colours, new_figure

COMPARISON_METRICS = ("mIoU", "mAcc", "trimap_mIoU", "edge_pixel_accuracy")
METRIC_TITLES = {"mIoU": "mIoU", "mAcc": "mAcc", "trimap_mIoU": "Trimap mIoU (band 7 px)",
                 "edge_pixel_accuracy": "Edge-pixel accuracy"}


def comparison_figure(rows: Sequence[Mapping], metrics: Sequence[str] = COMPARISON_METRICS) -> NotebookFigure:
    """One bar chart per metric of `kdlab.inspection.comparison_table` rows: the mean of each method
    with its std over seeds as error bar."""
    labels = [row["method"] for row in rows]
    colours = label_colours(labels)
    ncols = len(metrics) if len(labels) <= 10 else 2  # many methods: wider panels on two columns
    fig, axes = new_figure(math.ceil(len(metrics) / ncols), ncols, width=max(3.2, 0.3 * len(labels)), height=3.2)
    positions = np.arange(len(labels))
    for ax, metric in zip(axes.ravel(), metrics):
        ax.bar(positions, [row[metric] for row in rows], yerr=[np.nan_to_num(row[f"{metric}_std"]) for row in rows],
               capsize=3, color=[colours[label] for label in labels])
        for position, row in zip(positions, rows):
            if np.isnan(row[metric]):  # every seed of this method diverged
                ax.text(position, 0.01, "diverged", rotation=90, ha="center", va="bottom", fontsize="small")
        ax.set_xticks(positions, labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("score (fraction)")
    fig.suptitle("Method comparison (mean ± std over seeds)")
    return fig
