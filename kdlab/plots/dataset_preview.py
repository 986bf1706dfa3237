"""`kdlab data preview`: figure `dataset_preview`, a grid of a dataset's images with their labels."""

from __future__ import annotations

from pathlib import Path

from kdlab.data.dataset import SegmentationFolder
from kdlab.plots._common import save_figure
from kdlab.plots.qualitative import qualitative_figure


def save_preview(root: str | Path, split: str = "train", count: int = 8, out: str | Path = "preview.png") -> Path:
    """Writes the first ``count`` images of ``split`` with their colourised labels to ``out`` (PNG, and
    a PDF beside it); returns the PNG's path."""
    dataset = SegmentationFolder(root, split)
    samples = [dataset.load(i) for i in range(min(count, len(dataset)))]
    fig = qualitative_figure([image for image, _ in samples], {"ground truth": [label for _, label in samples]},
                             dataset.meta["palette"])
    out = Path(out)
    png, _pdf = save_figure(fig, out.stem, out.parent)
    return png
