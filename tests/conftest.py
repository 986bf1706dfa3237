"""Shared fixtures: tiny models and a tiny embedded benchmark, built once per session."""

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from filelock import FileLock

warnings.filterwarnings("ignore", category=UserWarning)
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of two test processes (`make test`): a core each, for them
    os.environ["OMP_NUM_THREADS"] = "1"  # and every process they start (more threads than cores thrash)
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

# The longest test files first, the rest in their usual order. `make test` hands whole files to its two
# processes in collection order (`--dist loadfile --no-loadscope-reorder`); every notebook (~5 of the
# suite's ~9 min on 2 cores) handed out last would run alone at the end.
LONGEST_FIRST = ("test_notebooks.py", "test_paper_configs.py", "test_distill.py", "test_ddp.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


TINY_DATA = ["data.image_size=64", "data.crop_size=64", "data.num_train=24", "data.num_val=6"]


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    from kdlab.data import ensure_embedded

    root = tmp_path_factory.mktemp("data") / "embedded"
    ensure_embedded(root, seed=0, image_size=64, num_train=24, num_val=6, progress=False)
    return root


def _tiny_overrides(data_root: Path, out_dir: Path) -> list[str]:
    return [f"data.root={data_root}", *TINY_DATA, f"out_dir={out_dir}",
            "model.arch=PSPNet", "model.encoder=resnet18", "model.encoder_depth=3",
            "train.iterations=4", "train.batch_size=2", "train.eval_interval=0",
            "train.checkpoint_interval=2", "train.log_interval=1", "eval.batch_size=6"]


@pytest.fixture
def tiny_overrides(tiny_data_root, tmp_path):
    """Overrides for a run that takes seconds: tiny data, a truncated student, a few iterations."""
    return _tiny_overrides(tiny_data_root, tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_overrides_in(tiny_data_root):
    """`tiny_overrides` with runs in a directory of the caller's choice (for module-scoped fixtures)."""
    return lambda out_dir: _tiny_overrides(tiny_data_root, out_dir)


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
def quick_runs(tmp_path_factory, worker_id):
    """The quick profile's runs, as 01_train trains them (two at a time), in a runs root of the session:
    the notebook and browser tests share them (only reading them, so both may run at once). Trained once
    per session: under xdist the first test process to ask trains them and the other waits for them.
    Returns (runs root, seconds it took to train them)."""
    base = tmp_path_factory.getbasetemp()
    workdir = (base if worker_id == "master" else base.parent) / "quick-runs"
    runs, seconds = workdir / "runs", workdir / "train-seconds"
    with FileLock(f"{workdir}.lock"):
        if not seconds.exists():
            seconds.parent.mkdir(exist_ok=True)
            seconds.write_text(str(_train_quick_profile(workdir, runs)))
    return runs, float(seconds.read_text())


def _train_quick_profile(workdir: Path, runs: Path) -> float:
    tic = time.perf_counter()
    command = [sys.executable, "-m", "kdlab.figures", "--profile", "quick", "--only", "01_train", "--jobs", "2",
               "--runs-root", str(runs), "--figures-dir", str(workdir / "figures")]
    env = {**os.environ, "KDLAB_RUNS_ROOT": str(runs), "IPYTHONDIR": str(workdir / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(workdir / "runtime")}
    done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"training the quick profile failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return time.perf_counter() - tic
