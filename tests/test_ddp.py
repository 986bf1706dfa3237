"""Data-parallel training: two CPU processes (gloo) under torchrun, as `torchrun -m kdlab` runs on GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlab.cli import main as cli_main
from kdlab.config import load_config
from kdlab.engine import IterationBatches, train
from kdlab.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
SCORES = ("mIoU", "mAcc", "aAcc", "trimap_mIoU", "edge_pixel_accuracy", "body_mIoU")
# A global batch of 4 (2 per rank); 6 validation images in batches of 2, so each rank scores some of them.
DDP_OVERRIDES = ["train.batch_size=4", "eval.batch_size=2"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "kdlab", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def one_process_scores(run: Path, tmp_path: Path) -> dict:
    """`kdlab eval RUN_DIR -c RUN_DIR/config.yaml` in this (single) process."""
    out = tmp_path / f"{run.name}-eval.json"
    assert cli_main(["eval", str(run), "-c", str(run / "config.yaml"), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def check_run(result: subprocess.CompletedProcess, run: Path, tmp_path: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads((run / "results.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]  # rank 0 alone logs
    assert result.stdout.count(" mAcc ") == 1  # rank 0 alone prints the results
    scores = one_process_scores(run, tmp_path)
    print(f"\n{run.name}: 2 processes " + " ".join(f"{k}={reported[k]:.6f}" for k in SCORES) +
          "\n" + " " * len(run.name) + "  1 process   " + " ".join(f"{k}={scores[k]:.6f}" for k in SCORES))
    for key in SCORES:
        assert scores[key] == pytest.approx(reported[key], abs=1e-9), key
    assert scores["IoU"] == pytest.approx(reported["IoU"], abs=1e-9, nan_ok=True)


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_process_training_resumes_exactly_and_scores_as_one_process(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *DDP_OVERRIDES]
    check_run(torchrun(["train", "-c", "configs/student.yaml", "name=ddp", *overrides], tmp_path),
              tmp_path / "runs" / "ddp", tmp_path)
    # Stopped after iteration 2 and resumed with the same world size: the same weights, bit for bit.
    stopped = torchrun(["train", "-c", "configs/student.yaml", "name=ddp-resumed", "--until", "2", *overrides],
                       tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    resumed = torchrun(["train", "--resume", str(tmp_path / "runs" / "ddp-resumed")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "runs" / "ddp"), weights(tmp_path / "runs" / "ddp-resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_distillation_with_trainable_parts_scores_as_one_process(tiny_overrides, tiny_teacher,
                                                                              tmp_path):
    # BCD: fusion convs, boundary head and a BatchNorm (SyncBN) in the objective, all trained; under the
    # matched weight rule, whose factor is computed from the terms averaged over the two processes.
    run = tmp_path / "runs" / "ddp-bcd"
    result = torchrun(["distill", "-c", "configs/student.yaml", "--recipe", "bcd", "--teacher", str(tiny_teacher),
                       "name=ddp-bcd", "distill.weight_rule=matched", *tiny_overrides, *DDP_OVERRIDES], tmp_path)
    check_run(result, run, tmp_path)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["bcd.context"] > 0 for r in log)
    start = json.loads((run / "start_terms.json").read_text())
    matched = start["bcd.boundary"]["weighted"] + start["bcd.context"]["weighted"]
    assert matched == pytest.approx(start["ce"]["value"], rel=1e-4)  # the global batch's terms = 1 x its CE


def test_global_batch_not_divisible_by_the_world_size_is_one_line_before_any_work(tiny_overrides, monkeypatch,
                                                                                   tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(["configs/student.yaml"], [*tiny_overrides, "train.batch_size=3"])
    with pytest.raises(ConfigError, match=r"train.batch_size: the global batch \(3\) must be divisible by the "
                                          r"number of processes \(2\)"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_ranks_take_disjoint_slices_of_the_same_global_batch():
    world = [IterationBatches(10, 4, seed=3, start=0, end=5, rank=r, world_size=2) for r in range(2)]
    alone = IterationBatches(10, 4, seed=3, start=0, end=5)
    for global_batch, *slices in zip(alone, *world):
        assert [pair for s in slices for pair in s] == global_batch
        assert all(len(s) == 2 for s in slices)


def test_a_user_input_error_under_torchrun_is_one_line_not_one_per_process(tmp_path):
    result = torchrun(["train", "-c", "configs/student.yaml", f"out_dir={tmp_path / 'runs'}", "train.lr=fast"], ROOT)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdlab: error:")]
    assert len(lines) == 1 and "train.lr" in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
