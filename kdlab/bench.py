"""`kdlab bench`: ms/iteration and peak memory of each recipe next to the student baseline.

Rows: the student baseline (supervised step), the student step plus a teacher forward pass
(the floor any distillation method pays), one row per recipe, and the recipes trained as one
cohort (one teacher pass per batch for all of them; time per run). Each row runs in its own
process so that peak memory (max RSS on CPU, max allocated on CUDA) belongs to that row alone.
Weights are random: speed and memory do not depend on them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch

from kdlab.config import RunConfig
from kdlab.distill import DistillObjective, TeacherPass, load_recipe, recipe_dir
from kdlab.engine import SupervisedObjective, build_optimizer, train_one_step
from kdlab.models.zoo import ModelSpec, build_model
from kdlab.runtime import atomic_write_text, resolve_device
from kdlab.data.synthetic import NUM_CLASSES




class _TeacherForward(SupervisedObjective):
    """Supervised step plus a teacher forward pass whose output is discarded."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)

    def forward(self, student, batch, iteration):
        with torch.no_grad():
            self.teacher(batch["image"])
        return super().forward(student, batch, iteration)


def _objective(kind: str, cfg: RunConfig, student, teacher: TeacherPass):
    if kind == "baseline":
        return SupervisedObjective()
    if kind == "teacher_forward":
        return _TeacherForward(teacher.model)
    return DistillObjective(teacher, student, load_recipe(kind), NUM_CLASSES, cfg.train.iterations)


def _measure(kinds: list[str], cfg: RunConfig, teacher_spec: dict, iterations: int, queue) -> None:
    """Median time of one step of each of `kinds` on the same batch (several kinds: a cohort sharing one
    teacher pass), per kind."""
    torch.manual_seed(0)
    device = resolve_device(cfg.train.device)
    teacher = TeacherPass(build_model(ModelSpec(**teacher_spec), NUM_CLASSES).to(device))
    runs = []
    for kind in kinds:
        student = build_model(cfg.model, NUM_CLASSES).to(device)
        objective = _objective(kind, cfg, student, teacher).to(device)
        params = [p for p in list(student.parameters()) + list(objective.parameters()) if p.requires_grad]
        optimizer, _ = build_optimizer(params, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp)
        runs.append((student, objective, optimizer, scaler))
    size, n = cfg.data.crop_size, cfg.train.batch_size
    batch = {"image": torch.randn(n, 3, size, size), "label": torch.randint(0, NUM_CLASSES, (n, size, size))}
    times = []
    for it in range(iterations + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        for student, objective, optimizer, scaler in runs:
            train_one_step(student, objective, batch, optimizer, scaler, cfg, it + 1, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    row = kinds[0] if len(kinds) == 1 else f"cohort of {len(kinds)}, per run"
    queue.put({"row": row, "ms_per_iter": 1000 * statistics.median(times[2:]) / len(kinds), "peak_mib": peak,
               "device": str(device)})


def measure_in_subprocess(kinds: list[str], cfg: RunConfig, teacher_spec: dict, iterations: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_measure, args=(kinds, cfg, teacher_spec, iterations, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        return {"row": "+".join(kinds), "ms_per_iter": float("nan"), "peak_mib": float("nan"), "device": "failed"}
    return queue.get()


def run_benchmarks(cfg: RunConfig, recipes: list[str] | None = None, iterations: int = 5,
                   out: str | Path = "runs/bench.md") -> list[dict]:
    from kdlab.config import load_config

    teacher_spec = vars(load_config(["configs/teacher.yaml"]).model)
    cfg.distill.check_finite = False  # random weights may diverge; the cost of a step is what is measured
    recipes = recipes or sorted(p.stem for p in recipe_dir().glob("*.yaml"))
    rows_to_measure = [[kind] for kind in ["baseline", "teacher_forward", *recipes]]
    if len(recipes) > 1:
        rows_to_measure.append(recipes)  # every recipe in one cohort: what sharing the teacher pass saves
    rows = []
    for kinds in rows_to_measure:
        row = measure_in_subprocess(kinds, cfg, teacher_spec, iterations)
        rows.append(row)
        print(f"{row['row']:22s} {row['ms_per_iter']:8.1f} ms/iter  peak {row['peak_mib']:8.0f} MiB  ({row['device']})",
              flush=True)
    base = rows[0]["ms_per_iter"]
    lines = [f"Student {cfg.model.arch}/{cfg.model.encoder}, teacher {teacher_spec['arch']}/{teacher_spec['encoder']}, "
             f"batch {cfg.train.batch_size}, crop {cfg.data.crop_size}, median of {iterations} steps, "
             f"threads {torch.get_num_threads()}", "",
             "| row | ms/iter | × baseline | peak MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {r['row']} | {r['ms_per_iter']:.1f} | {r['ms_per_iter'] / base:.2f} | {r['peak_mib']:.0f} |" for r in rows]
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(Path(out).with_suffix(".json"), json.dumps(rows, indent=1))
    print(f"written: {out}")
    return rows
