"""Figure `edge_masks_<i>` (BPKD Fig. 2a): one image's GT edge, soft edge and body masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdlab.data import IGNORE_INDEX
from kdlab.plots._common import NotebookFigure, as_rgb, class_patches, colorize, new_figure, show, to_numpy


def _max_over_classes(mask, name: str) -> np.ndarray:
    mask = to_numpy(mask).astype(np.float64)
    if mask.ndim == 3:
        return mask.max(axis=0)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be C×H×W or H×W, got shape {mask.shape}")
    return mask


def edge_masks_figure(image, label, edge_mask_binary, edge_mask_soft, class_names: Sequence[str], palette,
                      ignore_index: int = IGNORE_INDEX) -> NotebookFigure:
    """BPKD Fig. 2 pipeline for one image: image, ground truth, binary edge mask, soft mask, body mask.

    ``edge_mask_binary`` (C×H×W or H×W) and ``edge_mask_soft`` (C×h×w or h×w, the average-pooled
    ``M_E``), e.g. from `kdlab.analysis.edge_masks`, are collapsed by the max over classes; the body
    mask is ``1 − max_c M_E`` (BPKD Eq. 4).
    """
    binary = _max_over_classes(edge_mask_binary, "edge_mask_binary")
    soft = _max_over_classes(edge_mask_soft, "edge_mask_soft")
    label = to_numpy(label)
    fig, axes = new_figure(1, 5)
    axes = axes[0]
    show(axes[0], as_rgb(image), "Image")
    show(axes[1], colorize(label, palette, ignore_index), "Ground truth")
    present = [c for c in np.unique(label) if c != ignore_index]
    axes[1].legend(handles=class_patches(class_names, palette, present), loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize="x-small", frameon=False)
    show(axes[2], binary, "Binary edge mask\n(max over classes)", cmap="gray", vmin=0, vmax=1)
    for ax, values, title in ((axes[3], soft, "Soft edge mask $M_E$\n(average-pooled)"),
                              (axes[4], 1 - soft, "Body mask\n$1-\\max_c M_E$")):
        fig.colorbar(show(ax, values, title, cmap="magma", vmin=0, vmax=1), ax=ax, shrink=0.8)
    return fig
