"""The `kdlab` command line: one-line errors naming the culprit, exit status 2, nothing half-written."""

import subprocess
import sys

import pytest

from kdlab.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv, expected", [
    (["train", "train.lrr=0.1"], "train.lrr"),
    (["train", "model.arch=UNetX"], "model.arch"),
    (["train", "model.encoder=resnet1800"], "model.encoder"),
    (["train", "-c", "configs/missing.yaml"], "configs/missing.yaml"),
    (["train", "data.name=folder", "data.root=/nonexistent/ds"], "/nonexistent/ds"),
    (["distill", "--recipe", "telepathy", "--teacher", "x"], "telepathy"),
])
def test_bad_input_is_one_line_naming_the_culprit(argv, expected, capsys, tmp_path):
    assert main(argv + [f"out_dir={tmp_path}"]) == 2
    line = _error_line(capsys)
    assert line.startswith("kdlab: error:") and expected in line
    assert not any(tmp_path.iterdir())  # no run directory left behind


def test_missing_teacher_checkpoint_is_named(capsys, tmp_path, tiny_overrides):
    assert main(["distill", "-c", "configs/student.yaml", "--recipe", "kd", "--teacher", str(tmp_path / "none.pt"),
                 *tiny_overrides]) == 2
    assert "none.pt" in _error_line(capsys)


def test_train_eval_and_resume_from_the_command_line(capsys, tiny_overrides, tmp_path):
    assert main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=cli", "--until", "2"]) == 0
    run = tmp_path / "runs" / "cli"
    assert "stopped early" in capsys.readouterr().out
    assert main(["train", "--resume", str(run)]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["eval", str(run), "-c", "configs/student.yaml", *tiny_overrides, "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").exists()


def test_data_preview_writes_a_png(tiny_overrides, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--count", "3", "--out", str(out), *tiny_overrides]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_console_entry_point_exits_nonzero_on_bad_input():
    result = subprocess.run([sys.executable, "-m", "kdlab.cli", "train", "train.iterations=many"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "train.iterations" in result.stderr
