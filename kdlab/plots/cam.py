"""Figures `cam_hirescam` and `cam_gradcam` (BPKD Fig. 4): class activation maps over the images."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kdlab.plots._common import NotebookFigure, map_grid_figure

METHOD_TITLES = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM"}


def cam_figure(rgb: np.ndarray, cams: Mapping[str, np.ndarray], method: str, class_name: str) -> NotebookFigure:
    """Rows = images; one column per model of `kdlab.inspection.cam_maps` (``method``'s CAM of
    ``class_name``), blended over the image."""
    title = METHOD_TITLES[method]
    return map_grid_figure(rgb, cams, cmap="jet", overlay=True, colorbar_label=f"{title} (0–1)",
                           title=f"{title} of class '{class_name}' at the last encoder block")
