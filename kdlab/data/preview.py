"""`kdlab data preview`: a grid of images with their colourised labels."""

from __future__ import annotations

from pathlib import Path

from kdlab.analysis import qualitative_grid, save_figure
from kdlab.data.dataset import SegmentationFolder


def save_preview(root: str | Path, split: str = "train", count: int = 8, out: str | Path = "preview.png") -> Path:
    dataset = SegmentationFolder(root, split)
    samples = [dataset.load(i) for i in range(min(count, len(dataset)))]
    fig = qualitative_grid([image for image, _ in samples], {"ground truth": [label for _, label in samples]},
                           dataset.meta["palette"])
    out = Path(out)
    png, _pdf = save_figure(fig, out.stem, out.parent)
    return png
