"""The helpers every figure module shares: figures, panels, colours, overlays, grids and atomic output.

Figures are `NotebookFigure`s built without pyplot, so nothing accumulates between calls and a
notebook shows a returned figure as a PNG whether or not pyplot (and its inline backend) was loaded.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from skimage.segmentation import mark_boundaries

from kdlab.data import IGNORE_INDEX
from kdlab.runtime import atomic_write_bytes

PANEL_INCHES = 2.6
REFERENCE_LABELS = ("teacher", "baseline")


# ---------------------------------------------------------------- figures and panels


class NotebookFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG (its ``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        return figure_bytes(self)


def new_figure(nrows: int, ncols: int, width: float = PANEL_INCHES,
               height: float = PANEL_INCHES) -> tuple[NotebookFigure, np.ndarray]:
    """A constrained-layout figure of nrows × ncols panels of ``width`` × ``height`` inches, and its
    axes as an nrows × ncols array."""
    fig = NotebookFigure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def figure_bytes(fig: Figure, format: str = "png", dpi: int = 100, tight: bool = True) -> bytes:
    """The figure rendered in ``format`` (png, pdf, svg...); ``tight`` crops (or grows) it to what is
    drawn, so no label is clipped at its edge; without it the output keeps the figure's size."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, dpi=dpi, bbox_inches="tight" if tight else None, pad_inches=0.05)
    return buffer.getvalue()


def hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def show(ax, image: np.ndarray, title: str | None = None, **imshow_kwargs):
    """``image`` on ``ax`` without axes (nearest-neighbour pixels), titled; returns the AxesImage."""
    shown = ax.imshow(image, interpolation="nearest", **imshow_kwargs)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize="small")
    return shown


def to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def as_rgb(image) -> np.ndarray:
    """H×W×3 uint8 from an H×W×3 or 3×H×W image, uint8 or float in [0, 1]."""
    image = to_numpy(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be H×W×3 or 3×H×W, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.min() < 0 or image.max() > 1:
        raise ValueError("image must be uint8 or float in [0, 1] (undo the normalisation first)")
    return np.round(image * 255).astype(np.uint8)


def resize_map(value, size: tuple[int, int]) -> np.ndarray:
    """An h×w map (tensor or array) bilinearly resized to ``size``, as a float64 array."""
    tensor = torch.as_tensor(to_numpy(value)).float()
    if tuple(tensor.shape) != tuple(size):
        tensor = F.interpolate(tensor[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return tensor.numpy().astype(np.float64)


# ---------------------------------------------------------------- colours and overlays


def label_colours(labels: Sequence[str]) -> dict[str, tuple]:
    """One tab10 colour per label: "teacher" and "baseline" always take the first two, the methods
    the next ones in order, so a method keeps its colour in figures that leave those two out."""
    ordered = [*REFERENCE_LABELS, *(label for label in labels if label not in REFERENCE_LABELS)]
    cmap = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"]  # no colour twice
    return {label: cmap(ordered.index(label) % cmap.N) for label in labels}


def palette_array(palette) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be a K×3 list of RGB colours, got shape {palette.shape}")
    return palette.astype(np.uint8)


def colorize(label, palette, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """RGB uint8 image (label shape + ×3) of a class-index map; ``ignore_index`` is black."""
    label = to_numpy(label).astype(np.int64)
    palette = palette_array(palette)
    ignored = label == ignore_index
    if np.any(~ignored & ((label < 0) | (label >= len(palette)))):
        raise ValueError(f"label holds values outside the palette's {len(palette)} classes")
    rgb = palette[np.where(ignored, 0, label)]
    rgb[ignored] = 0
    return rgb


def overlay_boundaries(image, pred, palette, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """RGB uint8 image with the predicted-class colours blended in and class boundaries in white."""
    image = as_rgb(image)
    pred = to_numpy(pred).astype(np.int64)
    if pred.shape != image.shape[:2]:
        raise ValueError(f"pred must be H×W = {image.shape[:2]}, got {pred.shape}")
    blended = (1 - alpha) * image + alpha * colorize(pred, palette, ignore_index)
    blended = np.where((pred == ignore_index)[..., None], image, blended) / 255
    marked = mark_boundaries(blended, pred, color=(1.0, 1.0, 1.0))
    return np.round(marked * 255).astype(np.uint8)


def class_patches(class_names: Sequence[str], palette, classes: Sequence[int] | None = None) -> list[Patch]:
    """Legend handles: one colour patch per class of ``classes`` (all classes when None)."""
    palette = palette_array(palette)
    classes = range(len(class_names)) if classes is None else classes
    return [Patch(facecolor=palette[c] / 255, edgecolor="black", linewidth=0.5, label=class_names[c])
            for c in classes]


# ---------------------------------------------------------------- grids


def image_grid_figure(columns: Mapping[str, Sequence], title: str | None = None) -> NotebookFigure:
    """Rows = samples; one column of images (H×W×3 or 3×H×W, uint8 or float in [0, 1]) per entry of
    ``columns`` (title → images), the titles over the first row."""
    counts = {len(images) for images in columns.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"columns must hold the same number (≥ 1) of images each, got {sorted(counts)}")
    fig, axes = new_figure(counts.pop(), len(columns))
    for col, (name, images) in enumerate(columns.items()):
        for row, image in enumerate(images):
            show(axes[row, col], as_rgb(image), name if row == 0 else None)
    if title:
        fig.suptitle(title)
    return fig


def map_grid_figure(rgb: np.ndarray, maps: Mapping[str, object], cmap: str = "viridis",
                    colorbar_label: str | None = None, overlay: bool = False,
                    title: str | None = None) -> NotebookFigure:
    """Rows = images; the image, then one column per entry of ``maps`` (N×h×w each, resized to the
    image), on one shared colour scale with one colour bar. ``overlay`` blends each map over its image."""
    count = len(rgb)
    for name, value in maps.items():
        if len(value) != count:
            raise ValueError(f"maps[{name!r}] has {len(value)} maps for {count} images")
    size = tuple(rgb.shape[1:3])
    arrays = {name: np.stack([resize_map(m, size) for m in value]) for name, value in maps.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] + [np.zeros(0)])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    fig, axes = new_figure(count, 1 + len(arrays))
    for row in range(count):
        axes[row, 0].imshow(rgb[row])
        for col, (name, array) in enumerate(arrays.items(), start=1):
            if overlay:
                axes[row, col].imshow(rgb[row])
            shown = axes[row, col].imshow(array[row], cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.55 if overlay else 1.0)
            if row == 0:
                axes[row, col].set_title(name, fontsize="small")
        axes[row, 0].set_ylabel(f"image {row}", fontsize="small")
    axes[0, 0].set_title("Image", fontsize="small")
    for ax in axes.flat:
        hide_ticks(ax)
    if arrays:
        fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label=colorbar_label)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- atomic output


def save_figure(fig: Figure, stem: str, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``stem.png`` (dpi 150) and ``stem.pdf`` atomically; returns the two paths."""
    paths = (Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf")
    for path in paths:
        atomic_write_bytes(path, figure_bytes(fig, path.suffix[1:], dpi=150))
    return paths


def write_table(
    rows: Sequence[Mapping], stem: str, out_dir: str | os.PathLike, float_fmt: str = ".4f"
) -> tuple[Path, Path]:
    """Writes ``rows`` as ``stem.csv`` and ``stem.md`` with the same columns, atomically.

    Columns are the keys in order of first appearance (missing cells are empty); floats
    are formatted with ``float_fmt`` (a format spec such as ".4f") in both files.
    """
    if len(rows) == 0:
        raise ValueError("rows must hold at least one row")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_format_cell(row.get(column, ""), float_fmt) for column in columns] for row in rows]
    csv_path, md_path = Path(out_dir) / f"{stem}.csv", Path(out_dir) / f"{stem}.md"
    atomic_write_bytes(csv_path, _csv_text(columns, cells).encode("utf-8"))
    atomic_write_bytes(md_path, _markdown_text(columns, cells).encode("utf-8"))
    return csv_path, md_path


def _format_cell(value, float_fmt: str) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return format(value, float_fmt)
    return str(value)


def _csv_text(columns: list[str], cells: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(cells)
    return buffer.getvalue()


def _markdown_text(columns: list[str], cells: list[list[str]]) -> str:
    def line(values):
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |\n"

    return line(columns) + line(["---"] * len(columns)) + "".join(line(row) for row in cells)
