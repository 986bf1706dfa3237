"""Figures `ablation_<group>` of the sweeps (BPKD Table 5 edge width, Fig. 3 loss weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, new_figure


def is_sweep(rows: Sequence[Mapping]) -> bool:
    """Whether `kdlab.pipeline.summary_rows` of an ablation group are a sweep (``recipe@key=value`` runs)."""
    return any("@" in row["method"] for row in rows)


def sweep_figure(rows: Sequence[Mapping], title: str | None = None) -> NotebookFigure:
    """mIoU and trimap mIoU against the swept value of an ablation sweep.

    `rows` come from `kdlab.pipeline.summary_rows`; swept runs are labelled ``recipe@key=value``
    and the ``baseline`` row is drawn as a horizontal reference line.
    """
    swept = [r for r in rows if "@" in r["method"]]
    if not swept:
        raise ValueError("rows: no swept run (method 'recipe@key=value')")
    key = swept[0]["method"].split("@", 1)[1].split("=", 1)[0]
    values = [float(r["method"].rsplit("=", 1)[1]) for r in swept]
    baseline = next((r for r in rows if r["method"] == "baseline"), None)
    fig, axes = new_figure(1, 2)
    for ax, metric in zip(axes[0], ("mIoU", "trimap_mIoU")):
        ax.errorbar(values, [r[metric] for r in swept], yerr=[np.nan_to_num(r[f"{metric}_std"]) for r in swept],
                    marker="o", capsize=3, label=swept[0]["method"].split("@")[0])
        if baseline is not None:
            ax.axhline(baseline[metric], color="grey", linestyle="--", label="baseline")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig
