"""`kdlab bench`: the cost of one training step of each recipe, measured so that methods can be told apart.

Configurations (rows): ``student`` (the supervised student step), ``floor`` (the student step plus a
teacher forward pass: what any distillation method pays at least), one row per recipe, and, with
``cohort=True`` and several recipes, the recipes trained as one cohort (one teacher pass per batch
for all of them; time per run).

Timing: every configuration is built once, in one process, on the same batch, and the
configurations are *interleaved*: round ``r`` runs one step of each, starting at configuration
``r mod K`` (ABC, BCA, CAB, ...), for ``warmup`` rounds that are discarded and then ``rounds``
measured ones. A drift of the machine's load then hits every configuration alike, and the ratio of
two steps taken in the same round cancels it: per recipe the report gives the median ms/step, its
IQR, and the median over rounds of the same-round ratios to the floor and to the student step.

Memory: each row runs once more in a fresh process (spawned), for its own peak: the peak RSS of
that process on CPU (``VmHWM``/``ru_maxrss``, so it includes the Python and torch runtime), the
peak of ``torch.cuda.max_memory_allocated`` on CUDA.

Input pipeline: images/s of the student baseline's training loader (decoding, augmentation,
collation; no model), when the configured dataset is at hand.

With ``train.compile`` set (``kdlab bench ... train.compile=inductor``), every student's encoder and
decoder is compiled (`SegModel.compile_for`); compilation happens in the warm-up rounds.

Weights are random: speed and memory do not depend on them. Sizes: ``sizes`` (a list of
``(height, width)``), by default the configured crop on CPU, and 512×512 and 512×1024 on CUDA.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from kdlab.config import RunConfig
from kdlab.data.synthetic import NUM_CLASSES
from kdlab.data.transforms import as_pair
from kdlab.distill import DistillObjective, TeacherPass, load_recipe, recipe_dir
from kdlab.engine import SupervisedObjective, build_optimizer, train_one_step, trainable_parameters
from kdlab.models.zoo import ModelSpec, build_model
from kdlab.runtime import atomic_write_text, resolve_device

STUDENT, FLOOR = "student", "floor"
CUDA_SIZES = ((512, 512), (512, 1024))


def _scaler(cfg: RunConfig, device: torch.device):
    try:
        from kdlab.engine import make_scaler
    except ImportError:  # an engine without make_scaler (older trees, for before/after runs)
        return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp)
    return make_scaler(cfg, device)


class _TeacherForward(SupervisedObjective):
    """Supervised step plus a teacher forward pass whose output is discarded: the floor."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, student, batch, iteration):
        with torch.no_grad():
            self.teacher(batch["image"])
        return super().forward(student, batch, iteration)


class _Row:
    """One configuration: its students (several for a cohort), objectives, optimizers and scalers."""

    def __init__(self, name: str, kinds: list[str], cfg: RunConfig, teacher_model, device):
        self.name, self.kinds = name, kinds
        # Each row has its own teacher pass (a cache per batch and iteration), so that every row
        # pays for its teacher forward; the recipes of a cohort share one, as in training.
        teacher = TeacherPass(teacher_model)
        self.runs = []
        for kind in kinds:
            student = build_model(cfg.model, NUM_CLASSES).to(device)
            if kind == STUDENT:
                objective = SupervisedObjective()
            elif kind == FLOOR:
                objective = _TeacherForward(teacher_model)
            else:
                objective = DistillObjective(teacher, student, load_recipe(kind), NUM_CLASSES, cfg.train.iterations)
            objective = objective.to(device)
            if cfg.train.compile:  # compiled in the warm-up rounds
                student.compile_for(objective.student_taps, cfg.train.compile)
            optimizer, _ = build_optimizer(trainable_parameters(student, objective), cfg)
            self.runs.append((student, objective, optimizer, _scaler(cfg, device)))

    def step(self, batch, iteration, cfg, device) -> None:
        for student, objective, optimizer, scaler in self.runs:
            train_one_step(student, objective, batch, optimizer, scaler, cfg, iteration, device)


def _row_plan(recipes: list[str], cohort: bool) -> list[tuple[str, list[str]]]:
    plan = [(STUDENT, [STUDENT]), (FLOOR, [FLOOR])] + [(r, [r]) for r in recipes]
    if cohort and len(recipes) > 1:
        plan.append((f"cohort of {len(recipes)}, per run", list(recipes)))
    return plan


def _setup(cfg: RunConfig, teacher_spec: dict):
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(0)
    device = resolve_device(cfg.train.device)
    teacher = build_model(ModelSpec(**teacher_spec), NUM_CLASSES).to(device).eval().requires_grad_(False)
    return device, teacher


def _batch(cfg: RunConfig, size: tuple[int, int], device) -> dict:
    gen = torch.Generator().manual_seed(0)
    n = cfg.train.batch_size
    return {"image": torch.randn(n, 3, *size, generator=gen).to(device),
            "label": torch.randint(0, NUM_CLASSES, (n, *size), generator=gen).to(device)}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(cfg: RunConfig, teacher_spec: dict, plan: list[tuple[str, list[str]]], size, rounds: int,
                      warmup: int, progress: bool = False) -> dict[str, list[float]]:
    """Seconds per step (per run, for a cohort) of every row of ``plan``, one entry per measured round;
    rounds rotate the starting row."""
    device, teacher = _setup(cfg, teacher_spec)
    rows = [_Row(name, kinds, cfg, teacher, device) for name, kinds in plan]
    batch = _batch(cfg, size, device)
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for r in range(warmup + rounds):
        start = r % len(rows)
        for row in rows[start:] + rows[:start]:
            _sync(device)
            tic = time.perf_counter()
            row.step(batch, r + 1, cfg, device)
            _sync(device)
            if r >= warmup:
                times[row.name].append((time.perf_counter() - tic) / len(row.kinds))
        if progress:
            print(f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}", flush=True)
    return times


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_child(cfg, teacher_spec, name, kinds, size, queue) -> None:
    device, teacher = _setup(cfg, teacher_spec)
    row = _Row(name, kinds, cfg, teacher, device)
    batch = _batch(cfg, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for it in range(2):
        row.step(batch, it + 1, cfg, device)
    _sync(device)
    queue.put(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib())


def peak_memory_mib(cfg: RunConfig, teacher_spec: dict, name: str, kinds: list[str], size) -> float:
    """Peak memory of two steps of one row in a fresh (spawned) process; NaN if that process fails."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_peak_child, args=(cfg, teacher_spec, name, kinds, size, queue))
    process.start()
    try:
        value = queue.get(timeout=3600)
    except Exception:
        value = float("nan")
    process.join()
    return value if process.exitcode == 0 else float("nan")


def pipeline_images_per_s(cfg: RunConfig, batches: int) -> float | None:
    """Images/s of the student baseline's training loader over ``batches`` batches (after one warm-up
    batch); None when the dataset is not at hand (it is never generated here)."""
    if batches < 1:
        return None
    try:
        from kdlab.engine import build_data, make_loader

        if cfg.data.name == "embedded":
            from kdlab.data.synthetic import copy_name, _generator_params
            from kdlab.paths import project_path

            d = cfg.data
            params = _generator_params(d.seed, d.image_size, d.num_train, d.num_val)
            if not (project_path(d.root) / copy_name(params) / "dataset.yaml").exists():
                return None
        train_set, _, _ = build_data(cfg)
        loader = iter(make_loader(train_set, cfg, 0, batches + 1))
        next(loader)
        tic = time.perf_counter()
        images = sum(len(b["image"]) for b in loader)
        return images / (time.perf_counter() - tic)
    except Exception:  # the pipeline figure is a side note: the benchmark does not fail on it
        return None


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(times: dict[str, list[float]]) -> list[dict]:
    """Per row: median and IQR of ms/step, and the medians of the same-round ratios to the floor and
    to the student step."""
    floor, student = times[FLOOR], times[STUDENT]
    records = []
    for name, values in times.items():
        ms = [1000 * v for v in values]
        records.append({
            "recipe": name,
            "ms": statistics.median(ms),
            "iqr_ms": _quantile(ms, 0.75) - _quantile(ms, 0.25),
            "ratio_to_floor": statistics.median(v / f for v, f in zip(values, floor)),
            "ratio_to_student": statistics.median(v / s for v, s in zip(values, student)),
            "rounds": len(values),
        })
    return records


def default_sizes(cfg: RunConfig) -> list[tuple[int, int]]:
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        return [tuple(s) for s in CUDA_SIZES]
    return [as_pair(cfg.data.crop_size)]


def markdown_table(records: list[dict], header: str) -> str:
    lines = [header, "", "| recipe | ms/step | IQR ms | × floor | × student | peak MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['recipe']} | {r['ms']:.1f} | {r['iqr_ms']:.1f} | {r['ratio_to_floor']:.3f} | "
                     f"{r['ratio_to_student']:.3f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def run_benchmarks(cfg: RunConfig, recipes: list[str] | None = None, rounds: int = 15, warmup: int = 2,
                   out: str | Path = "runs/bench.md", json_path: str | Path | None = None,
                   sizes: list[tuple[int, int]] | None = None, memory: bool = True, cohort: bool = True,
                   pipeline_batches: int = 10, progress: bool = True) -> list[dict]:
    """Measure, print and write the table (``out``, Markdown) and the records (``json_path``, default
    ``out`` with ``.json``): one record per row and size with ``recipe``, ``ms``, ``iqr_ms``,
    ``ratio_to_floor``, ``ratio_to_student``, ``peak_mib``, ``height``, ``width``, ``device`` and the
    run's ``batch``, ``threads``, ``date``, ``machine``; the student record also has
    ``pipeline_images_per_s``."""
    from kdlab.config import load_config

    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be ≥ 1 and warmup ≥ 0, got {rounds} and {warmup}")
    teacher_spec = vars(load_config(["configs/teacher.yaml"]).model)
    cfg.distill.check_finite = False  # random weights may diverge; the cost of a step is what is measured
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    recipes = list(recipes) if recipes else sorted(p.stem for p in recipe_dir().glob("*.yaml"))
    plan = _row_plan(recipes, cohort)
    sizes = [tuple(s) for s in sizes] if sizes else default_sizes(cfg)
    device = resolve_device(cfg.train.device)
    images_per_s = pipeline_images_per_s(cfg, pipeline_batches)
    run_info = {"device": str(device), "batch": cfg.train.batch_size, "threads": torch.get_num_threads(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"{platform.processor() or platform.machine()}, {platform.node()}"),
                "torch": torch.__version__, "compile": cfg.train.compile}
    records, tables = [], []
    for size in sizes:
        if progress:
            print(f"{size[0]}×{size[1]}: {len(plan)} rows × ({warmup} + {rounds}) interleaved rounds", flush=True)
        size_records = summarise(interleaved_times(cfg, teacher_spec, plan, size, rounds, warmup, progress))
        for rec, (name, kinds) in zip(size_records, plan):
            rec["peak_mib"] = peak_memory_mib(cfg, teacher_spec, name, kinds, size) if memory else float("nan")
            rec.update(height=size[0], width=size[1], **run_info)
            if name == STUDENT:
                rec["pipeline_images_per_s"] = images_per_s
            if progress:
                print(f"{rec['recipe']:24s} {rec['ms']:8.1f} ms  IQR {rec['iqr_ms']:6.1f}  "
                      f"×floor {rec['ratio_to_floor']:.3f}  ×student {rec['ratio_to_student']:.3f}  "
                      f"peak {rec['peak_mib']:7.0f} MiB", flush=True)
        records += size_records
        pipeline = f", input pipeline {images_per_s:.0f} images/s" if images_per_s else ""
        compiled = f", student compiled ({cfg.train.compile})" if cfg.train.compile else ""
        tables.append(markdown_table(size_records, (
            f"{size[0]}×{size[1]}: student {cfg.model.arch}/{cfg.model.encoder}, teacher "
            f"{teacher_spec['arch']}/{teacher_spec['encoder']}, batch {cfg.train.batch_size}, {run_info['device']}, "
            f"threads {run_info['threads']}{compiled}, medians of {rounds} interleaved rounds after {warmup} warm-up, "
            f"{run_info['date']}, {run_info['machine']}{pipeline}")))
    atomic_write_text(out, "\n".join(tables))
    json_path = Path(json_path) if json_path else Path(out).with_suffix(".json")
    atomic_write_text(json_path, json.dumps(records, indent=1))
    if progress:
        print(f"written: {out}, {json_path}")
    return records
