"""Figure `trimap_curves`: trimap mIoU against the band width (BPKD Sec. 4, DeepLab's trimap)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kdlab.plots._common import NotebookFigure, label_colours, new_figure


def trimap_curves_figure(curves: Mapping[str, Mapping]) -> NotebookFigure:
    """One line (with its std over seeds) per model of `kdlab.inspection.trimap_curves`."""
    colours = label_colours(list(curves))
    fig, axes = new_figure(1, 1, width=5.0, height=3.6)
    ax = axes[0, 0]
    for label, curve in curves.items():
        ax.errorbar(curve["widths"], curve["mean"], yerr=np.nan_to_num(curve["std"]), marker="o", markersize=3,
                    capsize=2, color=colours[label], label=label)
    ax.set_xlabel("trimap band width (px)")
    ax.set_ylabel("trimap mIoU")
    ax.set_title("Trimap mIoU vs band width")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
