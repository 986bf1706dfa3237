"""Shared fixtures: tiny models and a tiny embedded benchmark, built once per session."""

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=UserWarning)
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of two test processes (`make test`): a core each, for them
    os.environ["OMP_NUM_THREADS"] = "1"  # and every process they start (more threads than cores thrash)
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

TINY_DATA = ["data.image_size=64", "data.crop_size=64", "data.num_train=24", "data.num_val=6"]


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    from kdlab.data import ensure_embedded

    root = tmp_path_factory.mktemp("data") / "embedded"
    ensure_embedded(root, seed=0, image_size=64, num_train=24, num_val=6, progress=False)
    return root


@pytest.fixture
def tiny_overrides(tiny_data_root, tmp_path):
    """Overrides for a run that takes seconds: tiny data, a truncated student, a few iterations."""
    return [f"data.root={tiny_data_root}", *TINY_DATA, f"out_dir={tmp_path / 'runs'}",
            "model.arch=PSPNet", "model.encoder=resnet18", "model.encoder_depth=3",
            "train.iterations=4", "train.batch_size=2", "train.eval_interval=0",
            "train.checkpoint_interval=2", "train.log_interval=1", "eval.batch_size=6"]


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data_root, tmp_path_factory):
    """A DeepLabV3+-ResNet18 teacher trained for a few iterations on the tiny benchmark."""
    from kdlab.config import load_config
    from kdlab.engine import train

    out = tmp_path_factory.mktemp("teacher-runs")
    cfg = load_config(["configs/teacher.yaml"], [f"data.root={tiny_data_root}", *TINY_DATA, f"out_dir={out}",
                                                 "model.encoder=resnet18", "train.iterations=3", "train.batch_size=4",
                                                 "train.eval_interval=0"])
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The quick profile's runs, as 01_train trains them (two at a time), in a runs root of the session:
    the notebook and browser tests share them. Returns (runs root, seconds it took)."""
    workdir = tmp_path_factory.mktemp("quick")
    runs = workdir / "runs"
    tic = time.perf_counter()
    command = [sys.executable, "-m", "kdlab.figures", "--profile", "quick", "--only", "01_train", "--jobs", "2",
               "--runs-root", str(runs), "--figures-dir", str(workdir / "figures")]
    env = {**os.environ, "KDLAB_RUNS_ROOT": str(runs), "IPYTHONDIR": str(workdir / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(workdir / "runtime")}
    done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"training the quick profile failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return runs, time.perf_counter() - tic
