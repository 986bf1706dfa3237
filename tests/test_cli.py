"""The `kdlab` command line: one-line errors naming the culprit, exit status 2, nothing half-written."""

import json
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


def test_console_entry_point_exits_nonzero_on_bad_input_before_importing_torch():
    """A typo'd option costs a tenth of a second, not the 5-10 s of importing torch and the models."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "kdlab.cli", "train", "train.iterations=many"],
                            capture_output=True, text=True)
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert result.returncode == 2
    assert [line for line in lines if not line.startswith("import time:")] == [
        "kdlab: error: train.iterations: expected int, got 'many'"]
    assert "kdlab.config" in imported and "torch" not in imported


def test_resume_continues_the_directory_it_is_given_and_refuses_what_it_cannot_honour(capsys, tiny_overrides,
                                                                                    tmp_path):
    import shutil

    assert main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=orig", "--until", "2"]) == 0
    original = tmp_path / "runs" / "orig"
    copy = shutil.copytree(original, tmp_path / "copy")
    before = (original / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(copy), "train.iterations=250", "train.lr=0.5"]) == 2
    line = _error_line(capsys)
    assert "cannot honour train.iterations=250 train.lr=0.5" in line
    assert main(["train", "--resume", str(copy), "train.threads=1"]) == 0
    assert (copy / "results.json").exists() and not (original / "results.json").exists()
    assert (original / "log.jsonl").read_text() == before, "the original run was not advanced"


def test_one_writer_per_run_directory(tiny_overrides, tmp_path, capsys):
    import fcntl

    assert main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=busy", "--until", "2"]) == 0
    run = tmp_path / "runs" / "busy"
    with open(run / ".lock", "a+") as held:  # another process training it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = subprocess.run([sys.executable, "-m", "kdlab.cli", "train", "--resume", str(run)],
                                capture_output=True, text=True)
    assert result.returncode == 2 and "another kdlab process is training this run" in result.stderr
    assert len((run / "log.jsonl").read_text().splitlines()) == 2


def test_a_run_that_failed_before_its_first_checkpoint_starts_over(tiny_overrides, tmp_path, capsys):
    from kdlab.config import dump_config, load_config

    cfg = load_config(["configs/student.yaml"], [*tiny_overrides, "name=orphan"])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg))  # what a crash at step 1 leaves
    (cfg.run_dir / "log.jsonl").write_text('{"iteration": 1, "loss": 9.0}\n')
    assert main(["train", "--resume", str(cfg.run_dir)]) == 0
    assert (cfg.run_dir / "results.json").exists()
    assert "9.0" not in (cfg.run_dir / "log.jsonl").read_text()


def test_a_log_line_torn_by_a_kill_is_dropped_on_resume(capsys, tiny_overrides, tmp_path):
    assert main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=torn", "--until", "2"]) == 0
    run = tmp_path / "runs" / "torn"
    with open(run / "log.jsonl", "a") as log:
        log.write('{"iteration": 3, "lo')  # what a kill or a full disk mid-append leaves
    assert main(["train", "--resume", str(run)]) == 0
    iterations = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4]
