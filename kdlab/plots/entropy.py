"""Figures `entropy_maps` and `entropy_vs_edge_accuracy` (BPKD Fig. 1): first-layer feature entropy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, label_colours, map_grid_figure, new_figure


def entropy_maps_figure(rgb: np.ndarray, maps: Mapping[str, object]) -> NotebookFigure:
    """Rows = images; one column per model of `kdlab.inspection.entropy_maps`, on one colour scale."""
    return map_grid_figure(rgb, maps, cmap="magma", colorbar_label="first-layer entropy (nats)")


def entropy_vs_edge_accuracy_figure(points: Sequence[Mapping]) -> NotebookFigure:
    """BPKD Fig. 1 (right): mean entropy (all pixels; band pixels) vs edge-pixel accuracy, a point per
    model (`kdlab.inspection.entropy_points`)."""
    colours = label_colours([point["model"] for point in points])
    fig, axes = new_figure(1, 2, width=3.8, height=3.4)
    for ax, (key, title) in zip(axes[0], (("entropy_all", "all pixels"), ("entropy_band", "trimap-band pixels"))):
        for point in points:
            ax.scatter(point[key], point["edge_pixel_accuracy"], color=colours[point["model"]], s=30)
            ax.annotate(point["model"], (point[key], point["edge_pixel_accuracy"]), textcoords="offset points",
                        xytext=(4, 3), fontsize="x-small")
        ax.set_xlabel("mean first-layer entropy (nats)")
        ax.set_title(f"Entropy over {title}", fontsize="medium")
        ax.margins(x=0.2, y=0.1)  # room for the labels
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("edge-pixel accuracy")
    return fig
