"""Figures `decoupled_logits` (BPKD Fig. 2a) and `bcd_boundaries` (BCD Fig. 3)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kdlab.plots._common import NotebookFigure, map_grid_figure


def decoupled_logits_figure(rgb: np.ndarray, maps: Mapping[str, object]) -> NotebookFigure:
    """The teacher's max logit and its edge and body parts (`kdlab.inspection.decoupled_logit_maps`)."""
    return map_grid_figure(rgb, maps, cmap="coolwarm", colorbar_label="logit")


def bcd_boundaries_figure(rgb: np.ndarray, gt_edges, learned, label: str) -> NotebookFigure:
    """The ground-truth edges (N×H×W, max over classes) next to the boundary map the BCD student of
    run ``label`` learned (`kdlab.inspection.bcd_boundary_maps`)."""
    maps = {"GT edges (BPKD)": gt_edges, f"BCD student boundary ({label})": learned}
    return map_grid_figure(rgb, maps, cmap="gray", colorbar_label="boundary (0–1)")
