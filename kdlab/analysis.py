"""Analysis tools of BPKD Sec. 1 and 4 (Figs. 1, 2, 4): first-layer feature entropy,
HiResCAM class activation maps, boundary visualisations, and atomic figure / table output.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so a
notebook shows a returned figure once and nothing accumulates between calls.
"""

import csv
import io
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from skimage.segmentation import mark_boundaries

CAM_METHODS = {"hirescam": HiResCAM, "gradcam": GradCAM}
PANEL_INCHES = 2.6


# ---------------------------------------------------------------- entropy (BPKD Fig. 1)


def first_layer_entropy(features: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy ``−Σ_c p ln p`` of ``p = softmax_c(F)`` (METHODS.md 6, BPKD Fig. 1).

    ``features``: float N×C×H×W output of the first convolution block; returns N×H×W
    on the input's device, in nats (between 0 and ln C).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or not features.is_floating_point():
        raise ValueError(f"features must be a float N×C×H×W tensor, got {getattr(features, 'shape', features)}")
    log_p = F.log_softmax(features, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_summary(entropy: torch.Tensor, band: torch.Tensor) -> dict:
    """Mean entropy over all pixels and over the trimap band (NaN when the band is empty).

    ``band`` (bool N×H×W, from ``kdlab.metrics.trimap_band``) is resized to the entropy
    map's size by nearest neighbour when the two differ.
    """
    if entropy.dim() != 3:
        raise ValueError(f"entropy must be an N×H×W map, got shape {tuple(entropy.shape)}")
    if band.dim() != 3 or band.dtype != torch.bool or band.shape[0] != entropy.shape[0]:
        raise ValueError(f"band must be a bool N×H×W mask with N={entropy.shape[0]}, got {tuple(band.shape)}")
    if band.shape != entropy.shape:
        band = F.interpolate(band[:, None].float(), size=entropy.shape[-2:], mode="nearest")[:, 0] > 0.5
    band = band.to(entropy.device)
    return {
        "mean_all": entropy.mean().item(),
        "mean_band": ((entropy * band).sum() / band.sum()).item(),
    }


# ---------------------------------------------------------------- class activation maps (BPKD Fig. 4)


def class_activation_map(
    model: torch.nn.Module,
    images: torch.Tensor,
    target_layer: torch.nn.Module,
    category: int,
    method: str = "hirescam",
    mask: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """N×H×W CAM in [0, 1] of ``category`` at ``target_layer`` (HiResCAM by default, METHODS.md 6).

    The target is the sum of the class logit over ``mask`` (bool N×H×W at the output
    size); by default the model's own predicted region of the class (argmax == category).
    ``model`` must return one N×C×H×W tensor. The model's train/eval mode is restored.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {sorted(CAM_METHODS)}, got {method!r}")
    images = images.to(next(model.parameters()).device)
    was_training = model.training
    try:
        model.eval()
        targets = _segmentation_targets(model, images, category, mask)
        with CAM_METHODS[method](model=model, target_layers=[target_layer]) as cam, torch.enable_grad():
            maps = cam(input_tensor=images, targets=targets)
    finally:
        model.train(was_training)
    # grad-cam's __exit__ swallows IndexError; ``maps`` is then unbound and this line raises.
    return maps


def _segmentation_targets(model, images, category, mask) -> list[SemanticSegmentationTarget]:
    """One grad-cam target per image: the ``category`` logit summed over ``mask`` or the predicted region."""
    with torch.no_grad():
        logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise ValueError("model must return one N×C×H×W tensor of logits")
    if not 0 <= category < logits.shape[1]:
        raise ValueError(f"category must be in [0, {logits.shape[1]}), got {category}")
    if mask is None:
        mask = logits.argmax(dim=1) == category
    mask = _to_numpy(mask).astype(np.float32)
    expected_shape = (logits.shape[0], *logits.shape[2:])
    if mask.shape != expected_shape:
        raise ValueError(f"mask must have shape N×H×W = {expected_shape}, got {mask.shape}")
    return [SemanticSegmentationTarget(category, region) for region in mask]


# ---------------------------------------------------------------- colours and overlays


def default_palette(num_classes: int, cmap: str = "tab20") -> np.ndarray:
    """num_classes×3 uint8 RGB palette sampled from a qualitative matplotlib colour map."""
    colours = matplotlib.colormaps[cmap].resampled(num_classes)(np.arange(num_classes))[:, :3]
    return np.round(colours * 255).astype(np.uint8)


def colorize(label, palette, ignore_index: int = 255) -> np.ndarray:
    """RGB uint8 image (label shape + ×3) of a class-index map; ``ignore_index`` is black."""
    label = _to_numpy(label).astype(np.int64)
    palette = _palette_array(palette)
    ignored = label == ignore_index
    if np.any(~ignored & ((label < 0) | (label >= len(palette)))):
        raise ValueError(f"label holds values outside the palette's {len(palette)} classes")
    rgb = palette[np.where(ignored, 0, label)]
    rgb[ignored] = 0
    return rgb


def overlay_boundaries(image, pred, palette, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """RGB uint8 image with the predicted-class colours blended in and class boundaries in white."""
    image = _as_rgb(image)
    pred = _to_numpy(pred).astype(np.int64)
    if pred.shape != image.shape[:2]:
        raise ValueError(f"pred must be H×W = {image.shape[:2]}, got {pred.shape}")
    blended = (1 - alpha) * image + alpha * colorize(pred, palette, ignore_index)
    blended = np.where((pred == ignore_index)[..., None], image, blended) / 255
    marked = mark_boundaries(blended, pred, color=(1.0, 1.0, 1.0))
    return np.round(marked * 255).astype(np.uint8)


# ---------------------------------------------------------------- figures


def plot_edge_masks(
    image, label, edge_mask_binary, edge_mask_soft, class_names: Sequence[str], palette=None, ignore_index: int = 255
) -> Figure:
    """BPKD Fig. 2 pipeline for one image: image, ground truth, binary edge mask, soft mask, body mask.

    ``edge_mask_binary`` (C×H×W or H×W) and ``edge_mask_soft`` (C×h×w or h×w, the
    average-pooled ``M_E``) are collapsed by the max over classes; the body mask is
    ``1 − max_c M_E`` (BPKD Eq. 4).
    """
    palette = default_palette(len(class_names)) if palette is None else _palette_array(palette)
    binary = _max_over_classes(edge_mask_binary, "edge_mask_binary")
    soft = _max_over_classes(edge_mask_soft, "edge_mask_soft")
    label = _to_numpy(label)
    fig, axes = _new_figure(1, 5)
    axes = axes[0]
    _show(axes[0], _as_rgb(image), "Image")
    _show(axes[1], colorize(label, palette, ignore_index), "Ground truth")
    present = [c for c in np.unique(label) if c != ignore_index]
    axes[1].legend(
        handles=[Patch(facecolor=palette[c] / 255, edgecolor="black", linewidth=0.5, label=class_names[c])
                 for c in present],
        loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize="x-small", frameon=False,
    )
    _show(axes[2], binary, "Binary edge mask\n(max over classes)", cmap="gray", vmin=0, vmax=1)
    _show_with_colorbar(fig, axes[3], soft, "Soft edge mask $M_E$\n(average-pooled)", cmap="magma", vmin=0, vmax=1)
    _show_with_colorbar(fig, axes[4], 1 - soft, "Body mask\n$1-\\max_c M_E$", cmap="magma", vmin=0, vmax=1)
    return fig


def qualitative_grid(images: Sequence, columns: Mapping[str, Sequence], palette, ignore_index: int = 255) -> Figure:
    """Rows = samples; columns = the image, then one colourised label map per entry of ``columns``.

    ``columns`` maps a title (e.g. "Ground truth", "Teacher", "Student", "BPKD") to one
    H×W label map per image.
    """
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    for title, maps in columns.items():
        if len(maps) != len(images):
            raise ValueError(f"columns[{title!r}] has {len(maps)} maps for {len(images)} images")
    fig, axes = _new_figure(len(images), 1 + len(columns))
    for row, image in enumerate(images):
        _show(axes[row, 0], _as_rgb(image), "Image" if row == 0 else None)
        for col, (title, maps) in enumerate(columns.items(), start=1):
            _show(axes[row, col], colorize(maps[row], palette, ignore_index), title if row == 0 else None)
    return fig


def plot_map_grid(maps: Mapping[str, object], cmap: str = "viridis", title: str | None = None) -> Figure:
    """Side-by-side H×W maps (entropy, CAM, boundary) on one shared colour scale with one colour bar."""
    if len(maps) == 0:
        raise ValueError("maps must hold at least one map")
    arrays = {name: _to_numpy(value).astype(np.float64) for name, value in maps.items()}
    for name, array in arrays.items():
        if array.ndim != 2:
            raise ValueError(f"maps[{name!r}] must be an H×W map, got shape {array.shape}")
    finite = np.concatenate([array[np.isfinite(array)] for array in arrays.values()])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    fig, axes = _new_figure(1, len(arrays))
    for ax, (name, array) in zip(axes[0], arrays.items()):
        shown = _show(ax, array, name, cmap=cmap, vmin=vmin, vmax=vmax)
    fig.colorbar(shown, ax=list(axes[0]), shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- atomic output


def save_figure(fig: Figure, stem: str, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``stem.png`` (dpi 150) and ``stem.pdf`` atomically, closes ``fig``, returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{stem}.png", out_dir / f"{stem}.pdf")
    try:
        for path in paths:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=path.suffix[1:], dpi=150)
            _write_atomically(path, buffer.getvalue())
    finally:
        plt.close(fig)
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    _write_atomically(csv_path, _csv_text(columns, cells).encode("utf-8"))
    _write_atomically(md_path, _markdown_text(columns, cells).encode("utf-8"))
    return csv_path, md_path


# ---------------------------------------------------------------- helpers


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _palette_array(palette) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be a K×3 list of RGB colours, got shape {palette.shape}")
    return palette.astype(np.uint8)


def _as_rgb(image) -> np.ndarray:
    """H×W×3 uint8 from an H×W×3 or 3×H×W image, uint8 or float in [0, 1]."""
    image = _to_numpy(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be H×W×3 or 3×H×W, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.min() < 0 or image.max() > 1:
        raise ValueError("image must be uint8 or float in [0, 1] (undo the normalisation first)")
    return np.round(image * 255).astype(np.uint8)


def _max_over_classes(mask, name: str) -> np.ndarray:
    mask = _to_numpy(mask).astype(np.float64)
    if mask.ndim == 3:
        return mask.max(axis=0)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be C×H×W or H×W, got shape {mask.shape}")
    return mask


def _new_figure(nrows: int, ncols: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _show(ax, image: np.ndarray, title: str | None, **imshow_kwargs):
    shown = ax.imshow(image, interpolation="nearest", **imshow_kwargs)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize="small")
    return shown


def _show_with_colorbar(fig: Figure, ax, image: np.ndarray, title: str, **imshow_kwargs) -> None:
    fig.colorbar(_show(ax, image, title, **imshow_kwargs), ax=ax, shrink=0.8)


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path``, then renames it into place."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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


def sweep_figure(rows: Sequence[Mapping], title: str | None = None) -> Figure:
    """mIoU and trimap mIoU against the swept value of an ablation sweep.

    `rows` come from `kdlab.pipeline.summary_rows`; swept runs are labelled ``recipe@key=value``
    and the ``baseline`` row is drawn as a horizontal reference line.
    """
    swept = [r for r in rows if "@" in r["method"]]
    key = swept[0]["method"].split("@", 1)[1].split("=", 1)[0]
    values = [float(r["method"].rsplit("=", 1)[1]) for r in swept]
    fig, axes = _new_figure(1, 2)
    for ax, metric in zip(axes[0], ("mIoU", "trimap_mIoU")):
        ax.errorbar(values, [r[metric] for r in swept], yerr=[np.nan_to_num(r[f"{metric}_std"]) for r in swept],
                    marker="o", capsize=3, label=swept[0]["method"].split("@")[0])
        baseline = next((r for r in rows if r["method"] == "baseline"), None)
        if baseline is not None:
            ax.axhline(baseline[metric], color="grey", linestyle="--", label="baseline")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig
