"""What the analysis notebooks (02–06, 08) compute and draw, on the runs `kdlab.pipeline` trained.

- runs and models: `load_model`, `comparison_runs`, `validation_samples`, `forward_taps`;
- method comparison (BPKD Table 1, BCD Table III, SKD Table 1): `comparison_table` (mean ± std
  over seeds plus parameters, GFLOPs, FPS), `comparison_figure`, `trimap_curves_figure`,
  `training_curves_figure`;
- first-layer entropy (BPKD Fig. 1): `entropy_maps`, `entropy_points`, `entropy_scatter_figure`;
- class activation maps (BPKD Fig. 4): `last_encoder_block`, `last_encoder_block_name`, `cam_maps`;
- per-class scores (BPKD Fig. 6 / Table 8, SKD Fig. 4): `per_class_table`, `gains_over`,
  `grouped_bars_figure`;
- boundaries (BPKD Fig. 2, BCD Fig. 3, SKD Fig. 3): `edge_masks`, `decoupled_logits`,
  `objective_from_run`, `bcd_boundary_maps`, `discriminator_scores`, `score_figure`;
- the interactive explorer: `explorer_data`, `explorer_figure`.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state): notebooks save them with
`kdlab.analysis.save_figure`. Models run in eval mode on the device they live on; maps come
back on the device of the images passed in.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlab.analysis import (class_activation_map, colorize, entropy_summary, first_layer_entropy,
                            overlay_boundaries)
from kdlab.checkpoint import load_checkpoint, model_from_state
from kdlab.data import denormalize
from kdlab.distill import DistillObjective, distill_objective, load_recipe
from kdlab.engine import IGNORE_INDEX, RunDir, build_data, run_config
from kdlab.losses.base import DistillMethod, resize_to
from kdlab.losses.bcd import BoundaryContextDistillation
from kdlab.losses.functional import bpkd_edge_masks
from kdlab.losses.skd_holistic import HolisticKD
from kdlab.metrics import DEFAULT_BAND_WIDTH, trimap_band
from kdlab.models.zoo import SegModel, count_parameters
from kdlab.pipeline import read_results, summary_rows
from kdlab.runtime import resolve_device

PANEL_INCHES = 2.6
COMPARISON_METRICS = ("mIoU", "mAcc", "trimap_mIoU", "edge_pixel_accuracy")
METRIC_TITLES = {"mIoU": "mIoU", "mAcc": "mAcc", "trimap_mIoU": "Trimap mIoU (band 7 px)",
                 "edge_pixel_accuracy": "Edge-pixel accuracy"}
# Log entries that are not loss terms (BCD logs its temperature τ as "bcd.temperature").
NOT_LOSS_TERMS = ("iteration", "lr", "time_s", "grad_norm", "temperature")
OVERLAYS = ("prediction", "edges", "entropy", "CAM")
REFERENCE_LABELS = ("teacher", "baseline")


# ---------------------------------------------------------------- runs, models, samples


@dataclass
class Samples:
    """Validation images: normalised ``images`` (N×3×H×W), ``labels`` (N×H×W), ``rgb`` for display
    (N×H×W×3 uint8), and the dataset's class names and palette (K×3 uint8)."""

    images: torch.Tensor
    labels: torch.Tensor
    rgb: np.ndarray
    class_names: list[str]
    palette: np.ndarray
    ignore_index: int = IGNORE_INDEX


def load_model(run_dir: str | Path, device: str | torch.device = "auto") -> SegModel:
    """The model of a run's last checkpoint, on ``device`` ("auto": CUDA when present), in eval mode."""
    state = load_checkpoint(run_dir)
    return model_from_state(state, run_dir).to(resolve_device(str(device))).eval()


def comparison_runs(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None) -> dict[str, Path]:
    """label → run directory: "teacher" first (when given), then each label's finished run of its
    lowest seed (diverged runs have no model to analyse)."""
    chosen: dict[str, tuple[int, Path]] = {}
    for (label, seed), run in runs.items():
        if not (Path(run) / "results.json").exists():
            continue
        if label not in chosen or seed < chosen[label][0]:
            chosen[label] = (seed, Path(run))
    first = {"teacher": Path(teacher)} if teacher is not None else {}
    return {**first, **{label: run for label, (_seed, run) in chosen.items()}}


def load_models(run_dirs: Mapping[str, Path], device: str | torch.device = "auto") -> dict[str, SegModel]:
    """label → model (eval mode, on ``device``) for every run of ``run_dirs``."""
    return {label: load_model(run, device) for label, run in run_dirs.items()}


def validation_samples(run_dir: str | Path, count: int | None = None) -> Samples:
    """The first ``count`` validation images (all when None) of the dataset a run was trained on."""
    _train_set, val_set, meta = build_data(run_config(run_dir))
    count = len(val_set) if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(val_set):
        raise ValueError(f"count must be an int in [1, {len(val_set)}], got {count!r}")
    items = [val_set[index] for index in range(count)]
    images = torch.stack([item["image"] for item in items])
    return Samples(images=images, labels=torch.stack([item["label"] for item in items]),
                   rgb=np.stack([denormalize(image) for image in images]), class_names=list(meta["class_names"]),
                   palette=np.asarray(meta["palette"], dtype=np.uint8))


@contextmanager
def evaluation(model: nn.Module):
    """``model`` in eval mode inside the block; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def forward_taps(model: SegModel, images: torch.Tensor, taps: Sequence[str] = ("logits",),
                 batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Named taps (see `kdlab.models.zoo`) of ``model`` on ``images``, run in batches on the model's
    device in eval mode; float tensors on the images' device."""
    device = _device_of(model)
    with evaluation(model):
        chunks = [model.forward_taps(batch.to(device), taps) for batch in images.split(batch_size)]
    return {name: torch.cat([chunk[name].float() for chunk in chunks]).to(images.device) for name in taps}


def predictions(models: Mapping[str, SegModel], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """label → N×H×W predicted classes (whole-image inference)."""
    return {label: forward_taps(model, images)["logits"].argmax(1) for label, model in models.items()}


# ---------------------------------------------------------------- comparison (BPKD Table 1, BCD Table III, SKD Table 1)


def _image_batch(model: nn.Module, image_size: int | Sequence[int]) -> torch.Tensor:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return torch.zeros(1, 3, height, width, device=_device_of(model))


def count_gflops(model: nn.Module, image_size: int | Sequence[int]) -> float:
    """GFLOPs of one forward pass on one image of ``image_size`` (torch's FlopCounterMode: one
    multiply–add counts as two FLOPs)."""
    image = _image_batch(model, image_size)
    with evaluation(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() / 1e9


def measure_fps(model: nn.Module, image_size: int | Sequence[int], warmup: int = 5, repeats: int = 20) -> float:
    """Forward passes per second at batch 1 on the model's device: one over the median of
    ``repeats`` timed passes (robust to the odd slow pass), after ``warmup`` passes."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    image = _image_batch(model, image_size)
    synchronize = torch.cuda.synchronize if image.is_cuda else (lambda: None)
    seconds = []
    with evaluation(model), torch.inference_mode():
        for _ in range(warmup):
            model(image)
        synchronize()
        for _ in range(repeats):
            tic = time.perf_counter()
            model(image)
            synchronize()
            seconds.append(time.perf_counter() - tic)
    return 1.0 / statistics.median(seconds)


def cost_columns(model: nn.Module, image_size: int | Sequence[int], fps_repeats: int = 20) -> dict:
    """Parameters (millions), GFLOPs and FPS of ``model`` on one image of ``image_size``."""
    return {"params_M": count_parameters(model) / 1e6, "GFLOPs": count_gflops(model, image_size),
            "FPS": measure_fps(model, image_size, repeats=fps_repeats)}


def comparison_table(runs: Mapping[tuple[str, int], Path], teacher: str | Path, device: str | torch.device = "auto",
                     fps_repeats: int = 20) -> list[dict]:
    """`kdlab.pipeline.summary_rows` (teacher, baseline, methods: mean and std over seeds, Δ mIoU vs
    the baseline) plus the cost columns of each label's model, on one validation image's size."""
    image_size = tuple(validation_samples(teacher, 1).images.shape[-2:])
    run_dirs = comparison_runs(runs, teacher)
    rows = summary_rows(dict(runs), Path(teacher))
    costs: dict[str, dict] = {}  # measured once per architecture: distillation changes weights, not cost
    for row in rows:
        # A diverged method left no model; its student has the baseline's architecture and cost.
        model = load_model(run_dirs.get(row["method"], run_dirs["baseline"]), device)
        architecture = repr(model.spec)
        if architecture not in costs:
            costs[architecture] = cost_columns(model, image_size, fps_repeats)
        row.update(costs[architecture])
    return rows


def label_colours(labels: Sequence[str]) -> dict[str, tuple]:
    """One tab10 colour per label: "teacher" and "baseline" always take the first two, the methods
    the next ones in order, so a method keeps its colour in figures that leave those two out."""
    ordered = [*REFERENCE_LABELS, *(label for label in labels if label not in REFERENCE_LABELS)]
    cmap = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"]  # no colour twice
    return {label: cmap(ordered.index(label) % cmap.N) for label in labels}


def _figure(nrows: int, ncols: int, width: float = PANEL_INCHES, height: float = PANEL_INCHES):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def comparison_figure(rows: Sequence[Mapping], metrics: Sequence[str] = COMPARISON_METRICS) -> Figure:
    """One bar chart per metric: the mean of each method with its std over seeds as error bar."""
    labels = [row["method"] for row in rows]
    colours = label_colours(labels)
    ncols = len(metrics) if len(labels) <= 10 else 2  # many methods: wider panels on two columns
    fig, axes = _figure(math.ceil(len(metrics) / ncols), ncols, width=max(3.2, 0.3 * len(labels)), height=3.2)
    positions = np.arange(len(labels))
    for ax, metric in zip(axes.ravel(), metrics):
        ax.bar(positions, [row[metric] for row in rows], yerr=[np.nan_to_num(row[f"{metric}_std"]) for row in rows],
               capsize=3, color=[colours[label] for label in labels])
        for position, row in zip(positions, rows):
            if np.isnan(row[metric]):  # every seed of this method diverged
                ax.text(position, 0.01, "diverged", rotation=90, ha="center", va="bottom", fontsize="small")
        ax.set_xticks(positions, labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("score (fraction)")
    fig.suptitle("Method comparison (mean ± std over seeds)")
    return fig


def results_by_label(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None) -> dict[str, list[dict]]:
    """label → results.json of each of its finished seeds; "teacher" first when given."""
    by_label = {"teacher": [read_results(teacher)]} if teacher is not None else {}
    for (label, _seed), run in runs.items():
        results = read_results(run)
        if "error" not in results:  # diverged runs have no per-class scores
            by_label.setdefault(label, []).append(results)
    return by_label


def _as_float_array(values) -> np.ndarray:
    """JSON numbers (None for NaN) → float array."""
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)


def _mean_std_over_seeds(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over the first axis, ignoring NaN (NaN where no finite value, and the std
    NaN where fewer than two, as in `kdlab.pipeline.summary_rows`)."""
    values = _as_float_array(values)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    zeroed = np.where(finite, values, 0.0)
    mean = np.where(counts > 0, zeroed.sum(axis=0) / np.maximum(counts, 1), np.nan)
    squares = np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0)
    return mean, np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), np.nan)


def trimap_curves(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None) -> dict[str, dict]:
    """label → {"widths", "mean", "std"}: trimap mIoU against band width, over seeds."""
    curves = {}
    for label, results in results_by_label(runs, teacher).items():
        widths = sorted(int(width) for width in results[0]["trimap_curve"])
        mean, std = _mean_std_over_seeds([[r["trimap_curve"][str(w)] for w in widths] for r in results])
        curves[label] = {"widths": widths, "mean": mean, "std": std}
    return curves


def trimap_curves_figure(curves: Mapping[str, Mapping]) -> Figure:
    """Trimap mIoU vs band width, one line (with its std over seeds) per model."""
    colours = label_colours(list(curves))
    fig, axes = _figure(1, 1, width=5.0, height=3.6)
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


def loss_terms(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The loss terms of a run's log.jsonl: name → values by iteration, plus "iteration"."""
    records = [json.loads(line) for line in RunDir(Path(run_dir)).log.read_text().splitlines() if line]
    if not records:
        raise ValueError(f"run_dir: {run_dir} has an empty log.jsonl")
    names = [name for name in records[0] if name.rsplit(".", 1)[-1] not in NOT_LOSS_TERMS]
    terms = {name: np.array([record.get(name, np.nan) for record in records], dtype=np.float64) for name in names}
    return {"iteration": np.array([record["iteration"] for record in records]), **terms}


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def training_curves_figure(runs: Mapping[tuple[str, int], Path], smoothing: int = 50) -> Figure:
    """Loss terms (unweighted, as logged) vs iteration, one panel per label, mean over seeds,
    smoothed by a moving average over ``len / smoothing`` iterations. Log scale where every value is
    positive, symmetric log where a term goes negative (SKD's critic and holistic terms)."""
    by_label: dict[str, list[dict]] = {}
    for (label, _seed), run in runs.items():
        by_label.setdefault(label, []).append(loss_terms(run))
    columns = min(3, len(by_label))
    rows = -(-len(by_label) // columns)
    fig, axes = _figure(rows, columns, width=4.0, height=3.0)
    for ax in axes.flat[len(by_label):]:
        ax.set_axis_off()
    for ax, (label, logs) in zip(axes.flat, by_label.items()):
        length = min(len(log["iteration"]) for log in logs)
        window = max(1, length // smoothing)
        iterations = _moving_average(logs[0]["iteration"][:length].astype(np.float64), window)
        all_positive = True
        for name in (name for name in logs[0] if name != "iteration"):
            mean = np.mean([log[name][:length] for log in logs], axis=0)
            all_positive &= bool(np.all(mean > 0))
            ax.plot(iterations, _moving_average(mean, window), label=name, linestyle="--" if name == "loss" else "-")
        ax.set_yscale("log" if all_positive else "symlog", **({} if all_positive else {"linthresh": 1e-2}))
        ax.set_title(f"{label} ({len(logs)} seed{'s' if len(logs) > 1 else ''})", fontsize="medium")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss term")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------- first-layer entropy (BPKD Fig. 1)


def entropy_maps(models: Mapping[str, SegModel], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """label → N×h×w entropy of the softmax over channels of the ``stem`` tap (METHODS.md 6)."""
    return {label: first_layer_entropy(forward_taps(model, images, ("stem",))["stem"])
            for label, model in models.items()}


def entropy_points(models: Mapping[str, SegModel], run_dirs: Mapping[str, Path], samples: Samples,
                   band_width: int = DEFAULT_BAND_WIDTH) -> list[dict]:
    """One row per model: mean first-layer entropy over all pixels and over the trimap band of
    ``samples``, with the edge-pixel accuracy of the model's run (its results.json)."""
    band = trimap_band(samples.labels, band_width, samples.ignore_index)
    rows = []
    for label, entropy in entropy_maps(models, samples.images).items():
        summary = entropy_summary(entropy, band)
        rows.append({"model": label, "entropy_all": summary["mean_all"], "entropy_band": summary["mean_band"],
                     "edge_pixel_accuracy": read_results(run_dirs[label])["edge_pixel_accuracy"]})
    return rows


def entropy_scatter_figure(points: Sequence[Mapping]) -> Figure:
    """BPKD Fig. 1 (right): mean entropy (all pixels; band pixels) vs edge-pixel accuracy, a point per model."""
    colours = label_colours([point["model"] for point in points])
    fig, axes = _figure(1, 2, width=3.8, height=3.4)
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


def _resize_map(value, size: tuple[int, int]) -> np.ndarray:
    """An h×w map (tensor or array) bilinearly resized to ``size``, as a float64 array."""
    tensor = torch.as_tensor(value).detach().float().cpu()
    if tuple(tensor.shape) != tuple(size):
        tensor = F.interpolate(tensor[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return tensor.numpy().astype(np.float64)


def _hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def map_grid_figure(rgb: np.ndarray, maps: Mapping[str, object], cmap: str = "viridis",
                    colorbar_label: str | None = None, overlay: bool = False, title: str | None = None) -> Figure:
    """Rows = images; the image, then one column per entry of ``maps`` (N×h×w each, resized to the
    image), on one shared colour scale with one colour bar. ``overlay`` blends each map over its image."""
    count = len(rgb)
    for name, value in maps.items():
        if len(value) != count:
            raise ValueError(f"maps[{name!r}] has {len(value)} maps for {count} images")
    size = tuple(rgb.shape[1:3])
    arrays = {name: np.stack([_resize_map(m, size) for m in value]) for name, value in maps.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] + [np.zeros(0)])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    fig, axes = _figure(count, 1 + len(arrays))
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
        _hide_ticks(ax)
    if arrays:
        fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label=colorbar_label)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- class activation maps (BPKD Fig. 4)


def last_encoder_block(model: SegModel) -> nn.Module:
    """The outermost module of ``model.net.encoder`` whose output is the ``encoder_out`` tap
    (``encoder.layer4`` for smp ResNets, ``layer2`` for the truncated PSPNet encoder)."""
    return model.net.encoder.get_submodule(last_encoder_block_name(model))


def last_encoder_block_name(model: SegModel) -> str:
    """The name, inside ``model.net.encoder``, of `last_encoder_block`."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.net.encoder.named_modules())
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
               for name, module in modules.items() if name]
    try:
        with evaluation(model), torch.no_grad():
            encoder_out = model.net.encoder(torch.zeros(1, 3, 64, 64, device=_device_of(model)))[-1]
    finally:
        for handle in handles:
            handle.remove()
    producers = [name for name, out in outputs.items() if out is encoder_out]
    if not producers:
        raise ValueError(f"model: no submodule of the {model.spec.encoder} encoder returns encoder_out")
    return min(producers, key=lambda name: name.count("."))


def class_index(class_names: Sequence[str], name: str) -> int:
    """The index of class ``name``."""
    if name not in class_names:
        raise ValueError(f"name: no class {name!r}; classes: {list(class_names)}")
    return list(class_names).index(name)


def cam_maps(models: Mapping[str, SegModel], images: torch.Tensor, category: int,
             method: str = "hirescam") -> dict[str, np.ndarray]:
    """label → N×H×W CAM in [0, 1] of ``category`` at each model's last encoder block (target: the
    class logit summed over the model's own predicted region of the class; zero where it predicts none)."""
    return {label: class_activation_map(model, images, last_encoder_block(model), category, method)
            for label, model in models.items()}


# ---------------------------------------------------------------- per-class scores (BPKD Fig. 6, Table 8; SKD Fig. 4)


def per_class_table(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None,
                    key: str = "trimap_IoU") -> list[dict]:
    """One row per class: {"class": name, <label>: mean over seeds of the per-class score ``key``}."""
    by_label = results_by_label(runs, teacher)
    class_names = next(iter(by_label.values()))[0]["class_names"]
    means = {label: _mean_std_over_seeds([r[key] for r in results])[0] for label, results in by_label.items()}
    return [{"class": name, **{label: float(mean[index]) for label, mean in means.items()}}
            for index, name in enumerate(class_names)]


def gains_over(rows: Sequence[Mapping], reference: str = "baseline",
               exclude: Sequence[str] = ("teacher",)) -> list[dict]:
    """Per-class gain of every label of a `per_class_table` over ``reference`` (``exclude`` left out)."""
    if not rows or reference not in rows[0]:
        raise ValueError(f"reference: no column {reference!r} in rows")
    labels = [k for k in rows[0] if k not in ("class", reference, *exclude)]
    return [{"class": row["class"], **{label: row[label] - row[reference] for label in labels}} for row in rows]


def grouped_bars_figure(rows: Sequence[Mapping], ylabel: str, title: str) -> Figure:
    """Grouped bars: one group per class (row), one bar per label (the other columns); with more
    than 8 labels, a class × label heat map with the values written in (bars would be too thin)."""
    labels = [k for k in rows[0] if k != "class"]
    if len(labels) > 8:
        return _heatmap_figure(rows, labels, ylabel, title)
    colours = label_colours(labels)
    width = 0.8 / len(labels)
    positions = np.arange(len(rows))
    fig, axes = _figure(1, 1, width=max(5.0, 0.35 * len(rows) * len(labels)), height=3.6)
    ax = axes[0, 0]
    for index, label in enumerate(labels):
        ax.bar(positions + (index - (len(labels) - 1) / 2) * width, [row[label] for row in rows], width,
               color=colours[label], label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(positions, [row["class"] for row in rows], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(labels), 6))
    return fig


def _heatmap_figure(rows: Sequence[Mapping], labels: Sequence[str], colorbar_label: str, title: str) -> Figure:
    values = np.array([[row[label] for row in rows] for label in labels], dtype=float)
    signed = np.nanmin(values) < 0  # gains: a diverging map centred on 0
    limit = np.nanmax(np.abs(values)) if signed else 1.0
    fig, axes = _figure(1, 1, width=max(5.0, 0.75 * len(rows) + 2.5), height=max(3.0, 0.3 * len(labels) + 1.2))
    ax = axes[0, 0]
    shown = ax.imshow(values, cmap="RdBu" if signed else "viridis", vmin=-limit if signed else 0.0, vmax=limit,
                      aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = abs(value) > 0.6 * limit if signed else value < 0.5
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(rows)), [row["class"] for row in rows], rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, label=colorbar_label)
    return fig


# ---------------------------------------------------------------- boundaries (BPKD Fig. 2, BCD Fig. 3, SKD Fig. 3)


def edge_masks(labels: torch.Tensor, num_classes: int, out_size: Sequence[int], edge_width: int = 7,
               ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """BPKD Sec. 3.2 GT edge masks: binary N×C×H×W at the label size and the average-pooled soft
    ``M_E`` (N×C×h×w at ``out_size``, the logit size)."""
    binary = bpkd_edge_masks(labels, num_classes, tuple(labels.shape[-2:]), edge_width, ignore_index)
    return binary, bpkd_edge_masks(labels, num_classes, tuple(out_size), edge_width, ignore_index)


def decoupled_logits(logits: torch.Tensor, soft_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BPKD's decoupling of N×C×h×w logits Z (Fig. 2a) shown as max-logit maps: the edge part
    ``max_c Z ⊙ M_E`` and the body part ``max_c Z ⊙ (1 − max_c M_E)`` (Eq. 4), each N×h×w."""
    if logits.shape != soft_masks.shape:
        raise ValueError(f"soft_masks must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(soft_masks.shape)}")
    body_mask = 1 - soft_masks.amax(dim=1, keepdim=True)
    return (logits * soft_masks).amax(dim=1), (logits * body_mask).amax(dim=1)


def decoupled_logit_maps(teacher: SegModel, samples: Samples, edge_width: int = 7) -> dict[str, torch.Tensor]:
    """Title → N×h×w map: the teacher's max logit at the logit size (``head_logits``), and its
    edge and body parts under the soft GT edge masks of ``samples`` (`decoupled_logits`)."""
    logits = forward_taps(teacher, samples.images, ("head_logits",))["head_logits"]
    _binary, soft = edge_masks(samples.labels, logits.shape[1], logits.shape[-2:], edge_width, samples.ignore_index)
    edge, body = decoupled_logits(logits, soft.to(logits.device))
    return {"Teacher max logit $\\max_c Z$": logits.amax(dim=1), "Edge part $\\max_c Z \\odot M_E$": edge,
            "Body part $\\max_c Z \\odot (1-\\max_c M_E)$": body}


def objective_from_run(run_dir: str | Path, device: str | torch.device = "auto") -> tuple[SegModel, DistillObjective]:
    """The student and the trained distillation objective of a distilled run (its teacher, BCD's
    fusion and boundary heads, SKD's discriminator, ...), both in eval mode on ``device``."""
    cfg = run_config(run_dir)
    if not cfg.distill.recipe:
        raise ValueError(f"run_dir: {run_dir} is not a distillation run (no distill.recipe)")
    device = resolve_device(str(device))
    state = load_checkpoint(run_dir)
    student = model_from_state(state, run_dir).to(device).eval()
    objective = distill_objective(cfg, student, state["dataset"], device).to(device)
    objective.load_state_dict(state["objective"])
    return student, objective.eval()


def run_using(run_dirs: Mapping[str, Path], methods: Sequence[str]) -> str | None:
    """The first label whose run's recipe uses one of ``methods`` (e.g. "bcd"), or None."""
    for label, run in run_dirs.items():
        recipe = Path(run) / "recipe.yaml"
        if recipe.exists() and {entry.method for entry in load_recipe(str(recipe))} & set(methods):
            return label
    return None


def find_method(objective: DistillObjective, kind: type[DistillMethod]) -> DistillMethod:
    """The first method of ``kind`` in the objective (also inside composite methods such as SKD)."""
    found = [module for module in objective.modules() if isinstance(module, kind)]
    if not found:
        raise ValueError(f"objective: its recipe has no {kind.name!r} method")
    return found[0]


@torch.no_grad()
def bcd_boundary_maps(student: SegModel, objective: DistillObjective, images: torch.Tensor) -> torch.Tensor:
    """BCD's learned student boundary map ``σ(student_boundary(student_fusion(features)))`` (Sec. IV-B),
    N×h×w at 1/8 of the input, in [0, 1]."""
    bcd = find_method(objective, BoundaryContextDistillation)
    batch = images.to(_device_of(student))
    student_out = student.forward_taps(batch, bcd.tap_names("student"))
    teacher_out = objective.teacher.forward_taps(batch, bcd.tap_names("teacher"))
    fused, _ = bcd.fused(bcd.select(student_out, "student"), bcd.select(teacher_out, "teacher"), batch)
    return bcd.boundary_maps(fused, "student")[:, 0].to(images.device)


@torch.no_grad()
def discriminator_scores(objective: DistillObjective, models: Mapping[str, SegModel],
                         images: torch.Tensor) -> dict[str, np.ndarray]:
    """SKD Fig. 3: D(Q|I) of the trained discriminator, per image, for each model's softmax map Q
    (the "teacher" entry reads the teacher tap, the others the student tap; resized to the
    teacher's logits as in training)."""
    holistic = find_method(objective, HolisticKD)
    batch = images.to(_device_of(objective.teacher))
    reference = holistic.select(objective.teacher.forward_taps(batch, holistic.tap_names("teacher")), "teacher")
    scores = {}
    for label, model in models.items():
        side = "teacher" if label == "teacher" else "student"
        logits = holistic.select(forward_taps(model, batch, sorted(holistic.tap_names(side))), side)["logits"]
        q = torch.softmax(resize_to(logits, reference["logits"]), dim=1)
        scores[label] = holistic.discriminator(q, batch).cpu().numpy()
    return scores


def score_figure(scores: Mapping[str, np.ndarray], reference: str = "teacher") -> Figure:
    """SKD Fig. 3a: box plots of the discriminator scores per model, and of each model's score
    minus ``reference``'s on the same image."""
    labels = list(scores)
    others = [label for label in labels if label != reference]
    fig, axes = _figure(1, 2, width=max(3.5, 0.7 * len(labels)), height=3.4)
    axes[0, 0].boxplot([scores[label] for label in labels], tick_labels=labels)
    axes[0, 0].set_ylabel("D(Q | I)")
    axes[0, 0].set_title("Discriminator score", fontsize="medium")
    axes[0, 1].boxplot([scores[label] - scores[reference] for label in others], tick_labels=others)
    axes[0, 1].axhline(0, color="grey", linestyle="--", linewidth=0.8)
    axes[0, 1].set_ylabel(f"D(Q | I) − D(Q_{reference} | I)")
    axes[0, 1].set_title(f"Score difference to the {reference}", fontsize="medium")
    for ax in axes[0]:
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(axis="y", alpha=0.3)
    return fig


def image_grid_figure(columns: Mapping[str, Sequence[np.ndarray]], title: str | None = None) -> Figure:
    """Rows = samples; one column of H×W×3 images per entry of ``columns`` (title → images)."""
    counts = {len(images) for images in columns.values()}
    if len(counts) != 1:
        raise ValueError(f"columns must hold the same number of images each, got {sorted(counts)}")
    fig, axes = _figure(counts.pop(), len(columns))
    for col, (name, images) in enumerate(columns.items()):
        axes[0, col].set_title(name, fontsize="small")
        for row, image in enumerate(images):
            axes[row, col].imshow(image)
            _hide_ticks(axes[row, col])
    if title:
        fig.suptitle(title)
    return fig


def overlay_columns(samples: Samples, label_maps: Mapping[str, torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """title → the images with each label map's class colours and boundaries overlaid
    (`kdlab.analysis.overlay_boundaries`), the ground truth first."""
    maps = {"Ground truth": samples.labels, **label_maps}
    return {name: [overlay_boundaries(rgb, label_map, samples.palette, ignore_index=samples.ignore_index)
                   for rgb, label_map in zip(samples.rgb, maps_)]
            for name, maps_ in maps.items()}


# ---------------------------------------------------------------- explorer (notebook 08)


@dataclass
class ExplorerData:
    """Everything the explorer shows, computed once: the samples and, per model, its predictions,
    first-layer entropy and CAM of ``cam_class``."""

    samples: Samples
    predictions: dict[str, torch.Tensor]
    entropy: dict[str, torch.Tensor]
    cams: dict[str, np.ndarray]
    cam_class: str


def explorer_data(models: Mapping[str, SegModel], samples: Samples, cam_class: str) -> ExplorerData:
    """Predictions, entropy maps and HiResCAMs of every model on ``samples``."""
    category = class_index(samples.class_names, cam_class)
    return ExplorerData(samples, predictions(models, samples.images), entropy_maps(models, samples.images),
                        cam_maps(models, samples.images, category), cam_class)


def edge_error_overlay(rgb: np.ndarray, pred, label, width: int = DEFAULT_BAND_WIDTH,
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The image in grey with the trimap-band pixels coloured green (correct) or red (wrong)."""
    pred, label = torch.as_tensor(np.asarray(pred))[None], torch.as_tensor(np.asarray(label))[None]
    band = trimap_band(label, width, ignore_index)[0].numpy()
    correct = (pred == label)[0].numpy()
    grey = np.repeat(rgb.mean(axis=-1, keepdims=True), 3, axis=-1) * 0.6
    colour = np.where(correct[..., None], (40, 200, 40), (230, 30, 30))
    return np.where(band[..., None], colour, grey).astype(np.uint8)


def _class_legend(ax, samples: Samples, label) -> None:
    """A legend, below ``ax``, of the classes present in ``label``."""
    present = [c for c in np.unique(np.asarray(label)) if c != samples.ignore_index]
    ax.legend(handles=[Patch(color=samples.palette[c] / 255, label=samples.class_names[c]) for c in present],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize="x-small", frameon=False)


def explorer_figure(data: ExplorerData, index: int = 0, model: str | None = None,
                    overlay: str = "prediction") -> Figure:
    """One image of the explorer: the image, its ground truth, and ``overlay`` (one of OVERLAYS) for ``model``."""
    samples = data.samples
    model = next(iter(data.predictions)) if model is None else model
    if model not in data.predictions:
        raise ValueError(f"model must be one of {list(data.predictions)}, got {model!r}")
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
    if not 0 <= index < len(samples.rgb):
        raise ValueError(f"index must be in [0, {len(samples.rgb)}), got {index}")
    rgb, pred = samples.rgb[index], data.predictions[model][index]
    fig, axes = _figure(1, 3, width=3.0, height=3.0)
    axes[0, 0].imshow(rgb)
    axes[0, 1].imshow(colorize(samples.labels[index], samples.palette, samples.ignore_index))
    _class_legend(axes[0, 1], samples, samples.labels[index])
    view, title = axes[0, 2], f"{model}: {overlay}"
    if overlay == "prediction":
        view.imshow(overlay_boundaries(rgb, pred, samples.palette, ignore_index=samples.ignore_index))
    elif overlay == "edges":
        view.imshow(edge_error_overlay(rgb, pred, samples.labels[index], ignore_index=samples.ignore_index))
        title += " (band: green ok, red wrong)"
    else:
        values = data.entropy[model][index] if overlay == "entropy" else data.cams[model][index]
        view.imshow(rgb)
        shown = view.imshow(_resize_map(values, rgb.shape[:2]), cmap="magma" if overlay == "entropy" else "jet",
                            alpha=0.55)
        fig.colorbar(shown, ax=view, shrink=0.8, label="nats" if overlay == "entropy" else f"CAM of {data.cam_class}")
    for ax, name in zip(axes[0], ("Image", "Ground truth", title)):
        ax.set_title(name, fontsize="small")
        _hide_ticks(ax)
    fig.suptitle(f"Validation image {index}")
    return fig


def explorer_widget(data: ExplorerData):
    """The interactive explorer: dropdowns for image, model and overlay over `explorer_figure`
    (an `ipywidgets.interactive`; display it in a notebook)."""
    import ipywidgets as widgets

    controls = {"index": widgets.Dropdown(options=list(range(len(data.samples.rgb))), value=0, description="image"),
                "model": widgets.Dropdown(options=list(data.predictions), description="model"),
                "overlay": widgets.Dropdown(options=OVERLAYS, value="prediction", description="overlay")}
    return widgets.interactive(lambda index, model, overlay: explorer_figure(data, index, model, overlay), **controls)
