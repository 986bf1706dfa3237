"""What the analysis notebooks (02–08) read from the runs `kdlab.pipeline` trained.

- runs and models: `comparison_runs`, `load_model(s)`, `validation_samples`, `forward_taps`, `predictions`;
- method comparison (BPKD Table 1, BCD Table III, SKD Table 1): `comparison_table` (mean ± std over
  seeds plus `cost_columns`: parameters that run, GMACs, FPS), `trimap_curves`, `loss_terms_by_label`;
- first-layer entropy (BPKD Fig. 1): `entropy_maps`, `entropy_points`;
- class activation maps (BPKD Fig. 4): `last_encoder_block(_name)`, `class_index`, `cam_maps`;
- per-class scores (BPKD Fig. 6 / Table 8, SKD Fig. 4): `per_class_table`;
- trained distillation parts (BPKD Fig. 2, BCD Fig. 3, SKD Fig. 3): `decoupled_logit_maps`,
  `objective_from_run`, `run_using`, `bcd_boundary_maps`, `discriminator_scores`.

The math is `kdlab.analysis`; the figures and tables are `kdlab.plots`. Models run in eval mode on
the device they live on; maps come back on the device of the images passed in.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlab.analysis import (class_activation_map, decoupled_logits, edge_masks, entropy_summary,
                            first_layer_entropy, mean_std_over_seeds)
from kdlab.checkpoint import OBJECTIVE, load_checkpoint, load_model_weights, model_from_state
from kdlab.data import denormalize
from kdlab.distill import DistillObjective, distill_objective, load_recipe
from kdlab.engine import IGNORE_INDEX, RunDir, build_data, eval_size, run_config
from kdlab.losses.base import DistillMethod, resize_to
from kdlab.losses.bcd import BoundaryContextDistillation
from kdlab.losses.skd_holistic import HolisticKD
from kdlab.metrics import DEFAULT_BAND_WIDTH, trimap_band
from kdlab.models.zoo import SegModel
from kdlab.pipeline import read_results, summary_rows
from kdlab.runtime import resolve_device

# Log entries that are not loss terms (BCD logs its temperature τ as "bcd.temperature").
NOT_LOSS_TERMS = ("iteration", "lr", "time_s", "grad_norm", "temperature")


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


def count_gmacs(model: nn.Module, image_size: int | Sequence[int]) -> float:
    """Giga multiply–accumulates of one forward pass on one image of ``image_size``, as the papers
    report cost (BPKD's "54.53 G" for PSPNet-R18 at 512×1024): torch's FlopCounterMode counts a
    multiply–add as two FLOPs, so MACs are half its count."""
    image = _image_batch(model, image_size)
    with evaluation(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() / 2e9


def count_running_parameters(model: nn.Module, image_size: int | Sequence[int]) -> int:
    """Parameters of the modules that run in a forward pass: smp's truncated encoders keep layers
    that never run (the ``encoder_depth=3`` PSPNet holds layer3 and layer4), which a plain count
    would report."""
    ran: set[nn.Module] = set()
    handles = [module.register_forward_hook(lambda m, _i, _o: ran.add(m)) for module in model.modules()]
    try:
        with evaluation(model), torch.no_grad():
            model(_image_batch(model, image_size))
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in {p for m in ran for p in m.parameters(recurse=False)})


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
    """Parameters that run (millions), GMACs and FPS of ``model`` on one image of ``image_size``."""
    return {"params_M": count_running_parameters(model, image_size) / 1e6, "GMACs": count_gmacs(model, image_size),
            "FPS": measure_fps(model, image_size, repeats=fps_repeats)}


def test_size(run_dir: str | Path) -> tuple[int, int]:
    """(H, W) at which a run's evaluation predicts its first validation image: the image's size
    after ``eval.resize`` (keep-ratio, e.g. Cityscapes 2048×1024, ADE20K to fit 2048×512)."""
    cfg = run_config(run_dir)
    _train_set, val_set, _meta = build_data(cfg)
    return eval_size(val_set.size(0), cfg.eval.resize)


def comparison_table(runs: Mapping[tuple[str, int], Path], teacher: str | Path, device: str | torch.device = "auto",
                     fps_repeats: int = 20) -> list[dict]:
    """`kdlab.pipeline.summary_rows` (teacher, baseline, methods: mean and std over seeds, Δ mIoU vs
    the baseline) plus the cost columns of each label's model at the dataset's test size (`test_size`)."""
    image_size = test_size(teacher)
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


def results_by_label(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None) -> dict[str, list[dict]]:
    """label → results.json of each of its finished seeds; "teacher" first when given."""
    by_label = {"teacher": [read_results(teacher)]} if teacher is not None else {}
    for (label, _seed), run in runs.items():
        results = read_results(run)
        if "error" not in results:  # diverged runs have no per-class scores
            by_label.setdefault(label, []).append(results)
    return by_label


def trimap_curves(runs: Mapping[tuple[str, int], Path], teacher: str | Path | None = None) -> dict[str, dict]:
    """label → {"widths", "mean", "std"}: trimap mIoU against band width, over seeds."""
    curves = {}
    for label, results in results_by_label(runs, teacher).items():
        widths = sorted(int(width) for width in results[0]["trimap_curve"])
        mean, std = mean_std_over_seeds([[r["trimap_curve"][str(w)] for w in widths] for r in results])
        curves[label] = {"widths": widths, "mean": mean, "std": std}
    return curves


def eval_curve(run_dir: str | Path, metric: str = "mIoU") -> dict[str, np.ndarray]:
    """A run's learning curve from its eval.jsonl: ``{"iteration", metric}`` arrays, in iteration
    order (the run's `train.eval_interval` evaluations and its final one)."""
    path = RunDir(Path(run_dir)).eval_log
    if not path.exists():
        raise ValueError(f"run_dir: {run_dir} has no eval.jsonl (trained with train.eval_interval=0?)")
    records = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                     key=lambda record: record["iteration"])
    by_iteration = {record["iteration"]: record.get(metric, np.nan) for record in records}  # the last of repeats
    return {"iteration": np.array(list(by_iteration)), metric: np.array(list(by_iteration.values()), dtype=np.float64)}


def loss_terms(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The loss terms of a run's log.jsonl: name → values by iteration, plus "iteration"."""
    records = [json.loads(line) for line in RunDir(Path(run_dir)).log.read_text().splitlines() if line]
    if not records:
        raise ValueError(f"run_dir: {run_dir} has an empty log.jsonl")
    names = [name for name in records[0] if name.rsplit(".", 1)[-1] not in NOT_LOSS_TERMS]
    terms = {name: np.array([record.get(name, np.nan) for record in records], dtype=np.float64) for name in names}
    return {"iteration": np.array([record["iteration"] for record in records]), **terms}


def loss_terms_by_label(runs: Mapping[tuple[str, int], Path]) -> dict[str, list[dict[str, np.ndarray]]]:
    """label → the `loss_terms` of each of its seeds; a run that logged no iteration (diverged at its
    first step) is left out, and so is a label none of whose seeds logged one."""
    by_label: dict[str, list[dict]] = {}
    for (label, _seed), run in runs.items():
        log = RunDir(Path(run)).log
        if log.exists() and log.read_text().strip():
            by_label.setdefault(label, []).append(loss_terms(run))
    return by_label


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
    means = {label: mean_std_over_seeds([r[key] for r in results])[0] for label, results in by_label.items()}
    return [{"class": name, **{label: float(mean[index]) for label, mean in means.items()}}
            for index, name in enumerate(class_names)]


# ---------------------------------------------------------------- boundaries (BPKD Fig. 2, BCD Fig. 3, SKD Fig. 3)


def decoupled_logit_maps(teacher: SegModel, samples: Samples, edge_width: int = 7) -> dict[str, torch.Tensor]:
    """Title → N×h×w map: the teacher's max logit at the logit size (``head_logits``), and its
    edge and body parts under the soft GT edge masks of ``samples`` (`kdlab.analysis.decoupled_logits`)."""
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
    load_model_weights(objective, state["objective"], run_dir, OBJECTIVE)
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
