"""Figures `ablation_<group>` of the sweeps (BPKD Table 5 edge width, Fig. 3 loss weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, new_figure


def sweep_point(label: str) -> tuple[str, str, float] | None:
    """(recipe, key, value) of a sweep run's label ``recipe@key=value`` (``…@matched`` under the matched
    weight rule, `kdlab.pipeline.MATCHED`); None for any other label."""
    recipe, _, rest = label.partition("@")
    key, is_point, value = rest.partition("=")
    if not is_point:
        return None
    value, _, rule = value.partition("@")
    return recipe + (f"@{rule}" if rule else ""), key, float(value)


def is_sweep(rows: Sequence[Mapping]) -> bool:
    """Whether `kdlab.pipeline.summary_rows` of an ablation group are a sweep (``recipe@key=value`` runs)."""
    return any(sweep_point(row["method"]) for row in rows)


def sweep_figure(rows: Sequence[Mapping], title: str | None = None) -> NotebookFigure:
    """mIoU and trimap mIoU against the swept value of an ablation sweep.

    `rows` come from `kdlab.pipeline.summary_rows`; swept runs are labelled ``recipe@key=value``
    and the ``baseline`` row is drawn as a horizontal reference line.
    """
    points = [(row, point) for row in rows if (point := sweep_point(row["method"]))]
    if not points:
        raise ValueError("rows: no swept run (method 'recipe@key=value')")
    recipe, key, _ = points[0][1]
    swept, values = [row for row, _ in points], [value for _, (_, _, value) in points]
    baseline = next((r for r in rows if r["method"] == "baseline"), None)
    fig, axes = new_figure(1, 2)
    for ax, metric in zip(axes[0], ("mIoU", "trimap_mIoU")):
        ax.errorbar(values, [r[metric] for r in swept], yerr=[np.nan_to_num(r[f"{metric}_std"]) for r in swept],
                    marker="o", capsize=3, label=recipe)
        if baseline is not None:
            ax.axhline(baseline[metric], color="grey", linestyle="--", label="baseline")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig
