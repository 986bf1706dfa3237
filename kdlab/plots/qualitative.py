"""Figures `qualitative` (image / GT / each model's prediction) and `prediction_overlays`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdlab.data import IGNORE_INDEX
from kdlab.plots._common import NotebookFigure, colorize, image_grid_figure, overlay_boundaries


def _check_counts(images: Sequence, label_maps: Mapping[str, Sequence]) -> None:
    for title, maps in label_maps.items():
        if len(maps) != len(images):
            raise ValueError(f"label_maps[{title!r}] has {len(maps)} maps for {len(images)} images")


def qualitative_figure(images: Sequence, label_maps: Mapping[str, Sequence], palette,
                       ignore_index: int = IGNORE_INDEX) -> NotebookFigure:
    """Rows = samples; the image, then one colourised label map per entry of ``label_maps`` (title →
    one H×W map per image, e.g. "Ground truth", "teacher", "baseline", each method)."""
    _check_counts(images, label_maps)
    return image_grid_figure({"Image": images, **{title: [colorize(m, palette, ignore_index) for m in maps]
                                                  for title, maps in label_maps.items()}})


def prediction_overlays_figure(images: Sequence, label_maps: Mapping[str, Sequence], palette,
                               ignore_index: int = IGNORE_INDEX) -> NotebookFigure:
    """Rows = samples; per entry of ``label_maps``, its class colours blended over the image with the
    class boundaries in white."""
    _check_counts(images, label_maps)
    columns = {title: [overlay_boundaries(image, m, palette, ignore_index=ignore_index) for image, m in zip(images, maps)]
               for title, maps in label_maps.items()}
    return image_grid_figure(columns, title="Predictions and their boundaries")
