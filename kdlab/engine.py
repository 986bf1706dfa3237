"""Training and evaluation loop shared by supervised training and distillation.

Small named pieces in the style of torchvision's segmentation reference:
`build_data`, `make_loader`, `train_one_step`, `evaluate`, `train`. What a step optimises is an
*objective* (`SupervisedObjective` here, `kdlab.distill.DistillObjective` for KD): a module that
names the student taps it needs and returns a dict of named terms whose ``"loss"`` entry is
minimised, so logs and notebooks plot terms without knowing the method.
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # text bars: notebook widget bars stay invisible in headless papermill runs

from kdlab.checkpoint import (CHECKPOINT_NAME, check_dataset_match, load_checkpoint, load_model_weights,
                              save_checkpoint)
from kdlab.config import RunConfig, config_from_dict, config_to_dict, dump_config, read_yaml
from kdlab.data import IGNORE_INDEX, SegmentationFolder, ensure_embedded, eval_transform, train_transform
from kdlab.errors import CheckpointError, ConfigError, KdlabError
from kdlab.metrics import SegmentationMeter
from kdlab.models.zoo import SegModel, build_model, validate_spec
from kdlab.paths import project_path
from kdlab.runtime import atomic_write_text, resolve_device, restore_rng_state, rng_state, seed_everything



# ----------------------------------------------------------------------------- data
def dataset_root(cfg: RunConfig) -> Path:
    """The directory holding the ready dataset. For the embedded benchmark, `data.root` is kdlab's cache and
    this is the copy for `cfg`'s generator parameters inside it, generated on first use; a non-empty
    `data.root` that kdlab did not create is a DataError, with nothing written (see `ensure_embedded`)."""
    d = cfg.data
    if d.name == "embedded":
        return ensure_embedded(project_path(d.root), seed=d.seed, image_size=d.image_size, num_train=d.num_train,
                               num_val=d.num_val)
    if d.name == "folder":
        return project_path(d.root)
    raise ConfigError(f"data.name: unknown dataset {d.name!r}; choose 'embedded' or 'folder'")


def build_data(cfg: RunConfig) -> tuple[SegmentationFolder, SegmentationFolder, dict]:
    root = dataset_root(cfg)
    train_set = SegmentationFolder(root, "train", transform=train_transform(
        cfg.data.crop_size, scale=(cfg.data.scale_min, cfg.data.scale_max)))
    val_set = SegmentationFolder(root, "val", transform=eval_transform())
    return train_set, val_set, dataset_meta(train_set)


def dataset_meta(dataset: SegmentationFolder) -> dict:
    meta = dataset.meta
    return {"name": meta["name"], "num_classes": int(meta["num_classes"]),
            "class_names": list(meta["class_names"]), "palette": [list(c) for c in meta["palette"]]}


class IterationBatches(torch.utils.data.Sampler):
    """Yields, for iterations start..end-1, the batch of (index, augmentation seed) pairs.

    The batch of iteration `it` depends only on (seed, it): data order is a fresh permutation
    per epoch and each sample's augmentation has its own seed, so a resumed run sees exactly
    the batches an uninterrupted run would, whatever the number of workers.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int, end: int):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start, self.end = start, end

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def batch(self, it: int) -> list[tuple[int, int]]:
        positions = range(it * self.batch_size, (it + 1) * self.batch_size)
        epochs = {pos // self.num_samples for pos in positions}  # a batch spans at most a few epochs
        orders = {epoch: self._permutation(epoch).tolist() for epoch in epochs}
        return [(orders[pos // self.num_samples][pos % self.num_samples], self.seed * 1_000_003 + pos)
                for pos in positions]

    def __iter__(self):
        for it in range(self.start, self.end):
            yield self.batch(it)

    def __len__(self) -> int:
        return self.end - self.start


def make_loader(dataset, cfg: RunConfig, start: int, end: int) -> torch.utils.data.DataLoader:
    sampler = IterationBatches(len(dataset), cfg.train.batch_size, cfg.train.seed, start, end)
    # Its own generator: creating the iterator must not draw from the global RNG (dropout's).
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                       pin_memory=torch.cuda.is_available(), generator=torch.Generator())


# ----------------------------------------------------------------------------- objectives
def segmentation_ce(student: dict, batch: dict) -> torch.Tensor:
    """Cross-entropy of the full-resolution logits against the labels (ignore = 255)."""
    return F.cross_entropy(student["logits"].float(), batch["label"], ignore_index=IGNORE_INDEX)


class SupervisedObjective(nn.Module):
    """Cross-entropy alone: the teacher and the student baseline."""

    student_taps: tuple[str, ...] = ()

    def forward(self, student: dict, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        ce = segmentation_ce(student, batch)
        return {"loss": ce, "ce": ce}


# ----------------------------------------------------------------------------- steps
def poly_lambda(iterations: int, power: float) -> Callable[[int], float]:
    return lambda it: max(0.0, 1.0 - it / iterations) ** power


class NonFiniteLoss(KdlabError):
    """A loss term became NaN or inf."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


def check_finite(terms: dict[str, float], iteration: int) -> None:
    # Individual terms first: the aggregates ("loss", "kd") only echo them.
    bad = sorted((name for name, value in terms.items() if not math.isfinite(value)),
                 key=lambda name: name in ("loss", "kd"))
    if bad:
        raise NonFiniteLoss(f"iteration {iteration}: loss term {bad[0]!r} is {terms[bad[0]]} "
                            f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in terms.items())})", iteration)


def train_one_step(model: SegModel, objective: nn.Module, batch: dict, optimizer, scaler, cfg: RunConfig,
                   iteration: int, device: torch.device) -> dict[str, float]:
    model.train()
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.autocast(device.type, enabled=scaler.is_enabled()):
        student = model.forward_taps(batch["image"], objective.student_taps)
        terms = objective(student, batch, iteration)
    values = dict(zip(terms, torch.stack([t.detach().float() for t in terms.values()]).tolist()))
    if cfg.distill.check_finite:
        check_finite(values, iteration)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"]).backward()
    if cfg.train.grad_clip:
        scaler.unscale_(optimizer)
        values["grad_norm"] = float(nn.utils.clip_grad_norm_(
            [p for group in optimizer.param_groups for p in group["params"]], cfg.train.grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return values


# ----------------------------------------------------------------------------- evaluation
def slide_inference(model: nn.Module, images: torch.Tensor, window: int, stride: int,
                    num_classes: int) -> torch.Tensor:
    """Average logits of overlapping windows (for images larger than the training crop)."""
    n, _, h, w = images.shape
    logits = images.new_zeros(n, num_classes, h, w)
    counts = images.new_zeros(1, 1, h, w)
    rows = range(0, max(h - window, 0) + 1, stride)
    cols = range(0, max(w - window, 0) + 1, stride)
    tops = sorted(set(list(rows) + [max(h - window, 0)]))
    lefts = sorted(set(list(cols) + [max(w - window, 0)]))
    for top in tops:
        for left in lefts:
            crop = images[:, :, top:top + window, left:left + window]
            logits[:, :, top:top + window, left:left + window] += model(crop).float()
            counts[:, :, top:top + window, left:left + window] += 1
    return logits / counts


def predict(model: nn.Module, images: torch.Tensor, cfg_eval, num_classes: int) -> torch.Tensor:
    if cfg_eval.mode == "slide":
        return slide_inference(model, images, cfg_eval.window, cfg_eval.stride, num_classes).argmax(1)
    if cfg_eval.mode == "whole":
        return model(images).argmax(1)
    raise ConfigError(f"eval.mode: unknown mode {cfg_eval.mode!r}; choose 'whole' or 'slide'")


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: RunConfig, device: torch.device, num_classes: int,
             progress: bool = True) -> dict:
    """Scores of `model` over the split: one confusion matrix (plus trimap bands) on the device."""
    model.eval()
    meter = SegmentationMeter(num_classes, widths=tuple(cfg.eval.band_widths))
    indices = range(len(dataset) if cfg.eval.max_images is None else min(len(dataset), cfg.eval.max_images))
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda" and cfg.train.amp):
            pred = predict(model, images, cfg.eval, num_classes)
        meter.update(pred, labels)
    return meter.compute()


# ----------------------------------------------------------------------------- run directory
class RunDir:
    """<out_dir>/<name>/: config.yaml, log.jsonl, eval.jsonl, checkpoints/last.pt, results.json."""

    def __init__(self, path: Path):
        self.path = path
        self.config = path / "config.yaml"
        self.log = path / "log.jsonl"
        self.eval_log = path / "eval.jsonl"
        self.checkpoint = path / "checkpoints" / CHECKPOINT_NAME
        self.results = path / "results.json"

    def lock(self) -> None:
        """Hold this run directory's lock (``.lock``, released when the process ends): one writer at a time."""
        self._lock = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"{self.path}: another kdlab process is training this run; wait for it to finish") from None

    def append(self, file: Path, record: dict) -> None:
        with open(file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_logs(self, iteration: int) -> None:
        """Drop log lines past `iteration` (written after the checkpoint a resume starts from)."""
        for file in (self.log, self.eval_log):
            if file.exists():
                kept = [line for line in file.read_text().splitlines()
                        if line and json.loads(line)["iteration"] <= iteration]
                atomic_write_text(file, "".join(line + "\n" for line in kept))


def is_orphan(run: RunDir) -> bool:
    """A run directory whose run stopped before its first checkpoint: nothing in it to continue."""
    return run.config.exists() and not run.checkpoint.exists() and not run.results.exists()


def prepare_run_dir(cfg: RunConfig, resume: bool) -> RunDir:
    """The run directory of ``cfg``, locked for this process: the one to continue (``resume``), or a
    new one. A directory that an earlier attempt left without a checkpoint starts over (its logs are
    rewritten; nothing else in it is touched)."""
    run = RunDir(cfg.run_dir)
    if resume and not is_orphan(run):
        if not run.checkpoint.is_file():
            raise CheckpointError(f"{run.checkpoint}: nothing to resume (no checkpoint in {run.path})")
        run.lock()
        return run
    if run.config.exists() and not is_orphan(run):
        raise ConfigError(f"{run.path}: run directory already exists; pass --resume to continue it "
                          f"or choose another name (name=...)")
    run.path.mkdir(parents=True, exist_ok=True)
    run.lock()
    run.truncate_logs(0)
    atomic_write_text(run.config, dump_config(cfg))
    return run


def run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory was started with, placed in that directory (a copied or
    moved run continues where it is): the directory alone reproduces the run."""
    run_dir = project_path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not a run directory (no config.yaml)")
    return replace(config_from_dict(read_yaml(path)), out_dir=str(run_dir.parent), name=run_dir.name)


# ----------------------------------------------------------------------------- the loop
def build_optimizer(params, cfg: RunConfig):
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(cfg.train.iterations, cfg.train.poly_power))
    return optimizer, scheduler


def checkpoint_state(model, objective, optimizer, scheduler, scaler, cfg, meta, iteration) -> dict:
    return {
        "model": model.state_dict(), "model_spec": asdict(model.spec), "dataset": meta,
        "config": config_to_dict(cfg), "iteration": iteration, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
        "objective": objective.state_dict(),
        "objective_extra": objective.extra_state() if hasattr(objective, "extra_state") else {},
    }


def restore_training_state(path, model, objective, optimizer, scheduler, scaler, meta) -> int:
    state = load_checkpoint(path)
    check_dataset_match(state, meta, path)
    load_model_weights(model, state["model"], path)
    objective.load_state_dict(state["objective"])
    if hasattr(objective, "load_extra_state"):
        objective.load_extra_state(state["objective_extra"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return int(state["iteration"])


ObjectiveFactory = Callable[..., nn.Module]
"""``factory(cfg, model, meta, device, shared)`` builds a run's objective. Optional attributes:
``check(cfg)`` validates the config before any data is built, and ``shared(cfg, meta, device)``
builds what every run of a cohort shares (the distillation teacher), once per cohort."""


def supervised_objective(cfg, model, meta, device, shared=None) -> nn.Module:
    return SupervisedObjective()


@dataclass
class Trainee:
    """One run of a cohort: its model, objective, optimiser state, run directory and global-RNG state."""

    cfg: RunConfig
    run: RunDir
    model: SegModel
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    meta: dict
    start: int
    rng: dict = field(default_factory=dict)

    @contextmanager
    def own_rng(self):
        """Run the block with this run's global RNG (dropout, ...), as if it trained alone."""
        restore_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = rng_state()

    def save(self, iteration: int) -> None:
        save_checkpoint(self.run.checkpoint, checkpoint_state(self.model, self.objective, self.optimizer,
                                                              self.scheduler, self.scaler, self.cfg, self.meta,
                                                              iteration))


def cohort_key(cfg: RunConfig) -> RunConfig:
    """What the runs of one cohort share: everything but the run name and the recipe."""
    return replace(cfg, name="", distill=replace(cfg.distill, recipe=None))


def _setup_trainee(cfg: RunConfig, model: SegModel, shared, objective_factory: ObjectiveFactory, meta: dict,
                   device: torch.device, resume: bool, start_rng: dict) -> Trainee:
    restore_rng_state(start_rng)  # the state a run alone would have here: every member starts alike
    objective = objective_factory(cfg, model, meta, device, shared).to(device)
    run = prepare_run_dir(cfg, resume)
    for name, text in getattr(objective, "run_files", {}).items():
        atomic_write_text(run.path / name, text)
    params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer, scheduler = build_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp)
    start = 0
    if resume and run.checkpoint.is_file():  # an orphan (no checkpoint yet) starts over
        start = restore_training_state(run.checkpoint, model, objective, optimizer, scheduler, scaler, meta)
        run.truncate_logs(start)
    return Trainee(cfg, run, model, objective, optimizer, scheduler, scaler, meta, start, rng_state())


def _build_cohort(cfgs: list[RunConfig], resume: bool, objective_factory: ObjectiveFactory,
                  device: torch.device) -> tuple[list[Trainee], SegmentationFolder, SegmentationFolder]:
    first = cfgs[0]
    seed_everything(first.train.seed)
    train_set, val_set, meta = build_data(first)
    model = build_model(first.model, meta["num_classes"]).to(device)
    shared = objective_factory.shared(first, meta, device) if hasattr(objective_factory, "shared") else None
    start_rng = rng_state()
    trainees = [_setup_trainee(cfg, copy.deepcopy(model) if i else model, shared, objective_factory, meta,
                               device, resume, start_rng) for i, cfg in enumerate(cfgs)]
    starts = {t.start for t in trainees}
    if len(starts) > 1:
        raise ConfigError(f"a cohort resumes from one iteration; its checkpoints are at {sorted(starts)}")
    return trainees, train_set, val_set


def _step(t: Trainee, batch: dict, iteration: int, device: torch.device, tic: float, progress: bool,
          val_set, end: int) -> dict[str, float]:
    """One optimisation step of one run, with its logging, evaluation and checkpointing."""
    cfg = t.cfg
    with t.own_rng():
        lr = t.optimizer.param_groups[0]["lr"]
        values = train_one_step(t.model, t.objective, batch, t.optimizer, t.scaler, cfg, iteration, device)
        t.scheduler.step()
        t.run.append(t.run.log, {"iteration": iteration, "lr": lr, "time_s": round(time.perf_counter() - tic, 3),
                                 **values})
        if iteration == t.start + 1:
            report_start_terms(t.run, values, getattr(t.objective, "weights", {}), progress)
        if cfg.train.eval_interval and iteration % cfg.train.eval_interval == 0 and iteration < end:
            t.run.append(t.run.eval_log, {"iteration": iteration, **summary(evaluate(
                t.model, val_set, cfg, device, t.meta["num_classes"], progress))})
        if iteration % cfg.train.checkpoint_interval == 0 and iteration < end:
            t.save(iteration)
    return values


def _finish(t: Trainee, end: int, val_set, device: torch.device, tic: float, cohort_size: int,
            progress: bool) -> Path:
    with t.own_rng():
        t.save(end)
    if end == t.cfg.train.iterations:
        scores = evaluate(t.model, val_set, t.cfg, device, t.meta["num_classes"], progress)
        t.run.append(t.run.eval_log, {"iteration": end, **summary(scores)})
        results = {"iteration": end, "train_time_s": round(time.perf_counter() - tic, 2), "cohort_size": cohort_size,
                   "class_names": t.meta["class_names"], **scores}
        atomic_write_text(t.run.results, json.dumps(results, indent=1, default=_jsonable))
    return t.run.path


def train_cohort(cfgs: list[RunConfig], resume: bool = False, until: int | None = None,
                 objective_factory: ObjectiveFactory = supervised_objective,
                 progress: bool = True) -> list[Path | NonFiniteLoss]:
    """Train runs that differ only in name and recipe on one data stream, one step of each per batch.

    Each run draws its own global RNG and ends bit for bit where it would alone; what the factory
    shares (the teacher) runs once per batch for all of them. A run whose loss turns NaN/inf drops
    out (its error is returned in its place) and the others go on. `until` stops after that
    iteration (checkpoints written) so that a later `resume` continues; the schedule always spans
    ``train.iterations``. ``train_time_s`` in results.json is the wall time from the cohort's start
    to the run's results (its evaluation included).
    """
    first = cfgs[0]
    others = [cfg.name for cfg in cfgs[1:] if cohort_key(cfg) != cohort_key(first)]
    if others:
        raise ConfigError(f"runs {others} differ from {first.name!r} in more than name and recipe: "
                          f"train them in separate cohorts")
    if first.train.threads:
        torch.set_num_threads(first.train.threads)
    device = resolve_device(first.train.device)
    validate_spec(first.model)  # before the dataset is generated, which can take a while
    if hasattr(objective_factory, "check"):
        for cfg in cfgs:
            objective_factory.check(cfg)
    trainees, train_set, val_set = _build_cohort(cfgs, resume, objective_factory, device)
    start = trainees[0].start
    end = min(first.train.iterations, until) if until is not None else first.train.iterations
    outcomes: dict[str, Path | NonFiniteLoss] = {}
    loader = make_loader(train_set, first, start, end)
    desc = first.name if len(cfgs) == 1 else f"{len(cfgs)} runs (seed {first.train.seed})"
    bar = tqdm(total=end, initial=start, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    tic = time.perf_counter()
    for iteration, batch in enumerate(loader, start=start + 1):
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        for t in [t for t in trainees if t.cfg.name not in outcomes]:
            try:
                values = _step(t, batch, iteration, device, tic, progress, val_set, end)
            except NonFiniteLoss as err:
                outcomes[t.cfg.name] = err
                continue
            if len(cfgs) == 1 and (iteration % first.train.log_interval == 0 or iteration == 1):
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
        bar.update(1)
    bar.close()
    for t in trainees:
        if t.cfg.name not in outcomes:
            outcomes[t.cfg.name] = _finish(t, end, val_set, device, tic, len(cfgs), progress)
    return [outcomes[cfg.name] for cfg in cfgs]


def train(cfg: RunConfig, resume: bool = False, until: int | None = None,
          objective_factory: ObjectiveFactory = supervised_objective, progress: bool = True) -> Path:
    """Train `cfg.model` (from scratch or from the run directory's checkpoint) and evaluate it: a cohort
    of one (`train_cohort`). A NaN/inf loss term raises `NonFiniteLoss`."""
    (outcome,) = train_cohort([cfg], resume, until, objective_factory, progress)
    if isinstance(outcome, NonFiniteLoss):
        raise outcome
    return outcome


def report_start_terms(run: RunDir, values: dict[str, float], weights: dict[str, float], progress: bool) -> None:
    """Every term's magnitude at the first step, raw and weighted (start_terms.json + one printed line),
    so that a term whose weight assumes another scale is visible before it wrecks the run."""
    table = {name: {"value": value, "weight": weights.get(name, 1.0 if name == "ce" else 0.0),
                    "weighted": value * weights.get(name, 1.0 if name == "ce" else 0.0)}
             for name, value in values.items() if name not in ("loss", "kd", "grad_norm")}
    atomic_write_text(run.path / "start_terms.json", json.dumps(table, indent=1))
    if progress:
        tqdm.write("start terms: " + ", ".join(f"{k}={v['value']:.3g} (x{v['weight']:g} = {v['weighted']:.3g})"
                                               for k, v in table.items()))


def summary(scores: dict) -> dict:
    """The scalar entries of a score dict (what goes in eval.jsonl)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float))}


def _jsonable(value):
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def evaluate_checkpoint(checkpoint: str | Path, cfg: RunConfig, out: str | Path | None = None,
                        progress: bool = True) -> dict:
    """Scores of a saved model on the validation split of `cfg`'s dataset (class names must match)."""
    from kdlab.checkpoint import model_from_state, resolve_checkpoint_path

    path = resolve_checkpoint_path(checkpoint)
    device = resolve_device(cfg.train.device)
    _, val_set, meta = build_data(cfg)
    state = load_checkpoint(path)
    check_dataset_match(state, meta, path)
    model = model_from_state(state, path)
    scores = evaluate(model.to(device), val_set, cfg, device, meta["num_classes"], progress)
    if out is not None:
        atomic_write_text(out, json.dumps({"checkpoint": str(path), "class_names": meta["class_names"], **scores},
                                          indent=1, default=_jsonable))
    return scores
