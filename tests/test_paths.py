"""Paths in profiles, configs and recipes are under the project root, whatever the working directory."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import cli, pipeline
from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.paths import project_path, project_root

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the project, as a notebook kernel's notebooks/ or a user's home."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("KDLAB_RUNS_ROOT", raising=False)
    return cwd


def test_project_paths_do_not_depend_on_the_working_directory(elsewhere):
    assert project_root() == ROOT
    assert project_path("runs") == ROOT / "runs" and project_path("/abs/x") == Path("/abs/x")
    cfg = load_config(["configs/student.yaml"])
    assert cfg.run_dir == ROOT / "runs" / "student"


def test_a_profile_resolves_its_configs_runs_and_figures_against_the_project(elsewhere):
    prof = pipeline.load_profile("default")
    assert prof.runs_dir == ROOT / "runs" / "default" and prof.figures_dir == str(ROOT / "figures")
    cfg = pipeline.student_config(prof, 0, "bpkd")
    assert cfg.run_dir == ROOT / "runs" / "default" / "bpkd-s0"
    assert not list(elsewhere.iterdir()), "nothing is created in the working directory"


def test_the_runs_root_follows_the_environment_and_the_quick_figures_follow_the_runs(elsewhere, monkeypatch, tmp_path):
    monkeypatch.setenv("KDLAB_RUNS_ROOT", str(tmp_path / "mine"))
    prof = pipeline.load_profile("quick")
    assert prof.runs_dir == tmp_path / "mine" / "quick"
    assert prof.figures_dir == str(tmp_path / "mine" / "quick" / "figures")


def test_a_missing_project_root_says_how_to_set_it(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLAB_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="KDLAB_ROOT=.*not a kdlab project root"):
        project_root()


def test_paths_typed_on_the_command_line_are_relative_to_the_working_directory(elsewhere):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "-c", "configs/student.yaml", "out_dir=mine", "data.root=data/x",
                              "train.lr=0.5"])
    args.overrides = [cli._typed_override(text) for text in args.overrides]
    cfg = cli._config(args)
    assert cfg.out_dir == str(elsewhere / "mine") and cfg.data.root == str(elsewhere / "data" / "x")
    assert cfg.train.lr == 0.5 and cfg.model.encoder_depth == 3  # the project's student.yaml was found


def test_a_run_is_the_same_run_on_another_device_or_after_its_runs_root_moved(tmp_path):
    cfg = load_config(["configs/student.yaml"], [f"out_dir={tmp_path}"])
    for section, key, value in (("train", "device", "cpu"), ("train", "threads", 1), (None, "out_dir", "/moved")):
        moved = copy.deepcopy(cfg)
        setattr(getattr(moved, section) if section else moved, key, value)
        assert pipeline.config_changes(cfg, moved) == []
    changed = copy.deepcopy(cfg)
    changed.train.lr = 0.5
    assert pipeline.config_changes(cfg, changed) == ["train.lr"]


def _finished_run_and_a_changed_config(tiny_data_root, runs_root):
    prof = pipeline.load_profile("quick", runs_root)
    overrides = [f"data.root={tiny_data_root}", "train.iterations=1"]
    cfg = pipeline.student_config(prof, 0, overrides=overrides)
    pipeline.ensure_run(cfg, progress=False)
    (cfg.run_dir / "notes.txt").write_text("a user's file")
    return cfg, pipeline.student_config(prof, 0, overrides=[*overrides, "train.lr=0.02"])


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_whose_config_changed_is_kept_unless_retraining_is_asked(tiny_data_root, tmp_path):
    cfg, changed = _finished_run_and_a_changed_config(tiny_data_root, tmp_path / "runs")
    before = _snapshot(tmp_path / "runs")
    assert pipeline.run_state(changed) == "stale"
    with pytest.raises(ConfigError, match=r"baseline-s0: finished under another config \(train.lr\).*--retrain"):
        pipeline.ensure_run(changed, progress=False)
    with pytest.raises(ConfigError, match="--retrain"):
        pipeline.ensure_runs([changed], progress=False)
    assert _snapshot(tmp_path / "runs") == before


def test_a_stale_run_is_moved_aside_never_deleted_when_retraining(tiny_data_root, tmp_path, capsys):
    cfg, changed = _finished_run_and_a_changed_config(tiny_data_root, tmp_path / "runs")
    pipeline.ensure_run(changed, progress=False, retrain=True)
    aside = cfg.run_dir.with_name("baseline-s0.stale-1")
    assert (aside / "notes.txt").read_text() == "a user's file" and (aside / "results.json").exists()
    assert pipeline.run_state(changed) == "done"
    assert "train.lr" in capsys.readouterr().out


def test_make_figures_refuses_a_stale_finished_run_before_any_notebook(tiny_data_root, tmp_path):
    prof = pipeline.load_profile("quick", tmp_path / "runs")
    teacher = pipeline.run_config(prof, prof.teacher, "teacher", [f"data.root={tiny_data_root}", "train.iterations=1"])
    pipeline.ensure_run(teacher, progress=False)
    before = _snapshot(tmp_path / "runs")
    done = subprocess.run([sys.executable, "-m", "kdlab.figures", "--profile", "quick", "--runs-root",
                           str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "quick/teacher: finished under another config (data.root" in lines[0], lines
    assert "--retrain" in lines[0]
    assert _snapshot(tmp_path / "runs") == before
