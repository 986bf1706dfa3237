"""SIGKILL at random moments, one of them inside a checkpoint write, then ``kdlab train --resume``
until the run finishes: the final weights equal an uninterrupted run's bit for bit, and the log has
every iteration once.

Nothing in kdlab knows about this test: the kill inside a save is timed by watching the checkpoint
directory for the temporary file ``torch.save`` is writing (``.last.pt.*.tmp`` with bytes in it) and
killing at once; the leftover file proves the kill landed mid-save.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdlab.checkpoint import load_checkpoint
from kdlab.paths import project_root

ITERATIONS = 8


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdlab", "train", *args], cwd=project_root(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and any loader workers it started
    except ProcessLookupError:
        pass
    proc.wait()


def _finish(proc: subprocess.Popen) -> None:
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()


def _mid_save_files(checkpoints: Path) -> list[Path]:
    try:
        names = os.listdir(checkpoints)
    except FileNotFoundError:
        return []
    return [checkpoints / n for n in names if n.startswith(".last.pt.") and n.endswith(".tmp")]


def _written(files: list[Path]) -> list[Path]:
    """The files with bytes in them (a file may vanish while we look: its save just finished)."""
    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
    return [p for p in files if size(p) > 0]


def _log_iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines() if line]


def test_sigkill_anywhere_then_resume_equals_the_uninterrupted_run(tiny_overrides, tmp_path):
    settings = [o for o in tiny_overrides if not o.startswith(("out_dir=", "train.iterations=",
                                                               "train.checkpoint_interval="))]
    settings += [f"train.iterations={ITERATIONS}", "train.checkpoint_interval=1", "name=kr"]
    fresh = ["-c", "configs/student.yaml", *settings]

    tic = time.perf_counter()
    _finish(_start([*fresh, f"out_dir={tmp_path / 'reference'}"]))
    duration = time.perf_counter() - tic
    reference = tmp_path / "reference" / "kr"

    run = tmp_path / "killed" / "kr"
    fresh.append(f"out_dir={tmp_path / 'killed'}")

    def next_attempt() -> subprocess.Popen:
        # Killed before its config was written, a run is started again as it was; otherwise resumed.
        return _start(["--resume", str(run)] if (run / "config.yaml").exists() else fresh)

    # 1. Kill inside a checkpoint write: as soon as torch.save has put bytes in its temporary file.
    mid_save = []
    while not mid_save and not (run / "results.json").exists():
        proc = next_attempt()
        while proc.poll() is None:
            if _written(_mid_save_files(run / "checkpoints")):
                _kill(proc)
                mid_save = _written(_mid_save_files(run / "checkpoints"))
                break
        if proc.returncode not in (None, 0, -signal.SIGKILL):
            _finish(proc)
    assert mid_save, "no kill landed inside a checkpoint write"
    if (run / "checkpoints" / "last.pt").exists():  # the checkpoint in place is an intact older one
        assert load_checkpoint(run)["iteration"] < ITERATIONS

    # 2. Kills after random delays over a whole run's time (seeded), each followed by a resume.
    rng = random.Random(13)
    for delay in sorted(rng.uniform(0.2, 1.0) * duration for _ in range(3)):
        if (run / "results.json").exists():
            break
        proc = next_attempt()
        time.sleep(delay)
        if proc.poll() is None:
            _kill(proc)

    # 3. Resume until it finishes.
    while not (run / "results.json").exists():
        _finish(next_attempt())

    assert _mid_save_files(run / "checkpoints") == []  # the save after a resume removed the leftover
    assert _log_iterations(run) == list(range(1, ITERATIONS + 1))
    ours, theirs = load_checkpoint(run), load_checkpoint(reference)
    assert ours["iteration"] == theirs["iteration"] == ITERATIONS
    assert ours["model"].keys() == theirs["model"].keys()
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    assert json.loads((run / "results.json").read_text())["mIoU"] == json.loads((reference / "results.json").read_text())["mIoU"]
