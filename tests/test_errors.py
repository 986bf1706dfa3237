"""One line, not a traceback, for a full disk, a read-only run directory, ImageNet weights asked for
offline and a config given as a teacher; a run that diverges at its first step leaves the comparison
notebook's figures working.

Disk full: a real 1 MiB tmpfs where ``mount`` works (we run as root in CI), else skipped; the same
errors are also raised by monkeypatching ``torch.save`` / ``Path.write_text``, which always runs.
Read-only: root ignores ``chmod``, so a read-only bind mount of the run directory (skipped where
``mount`` is refused) plus a monkeypatched ``tempfile.mkstemp`` raising EACCES / EROFS.
"""

import errno
import os
import subprocess
import urllib.error
from pathlib import Path

import pytest
import torch

from kdlab import cli
from kdlab.checkpoint import load_checkpoint, save_checkpoint
from kdlab.errors import CheckpointError, ConfigError, StorageError
from kdlab.paths import project_root
from kdlab.runtime import atomic_write_text

TORCH_DISK_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1450")


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards (skip where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: torch may still hold a file it failed to write


def _state(numel: int) -> dict:
    return {"model": {"w": torch.arange(numel, dtype=torch.float32)}, "model_spec": {}, "iteration": numel}


def _one_line(capsys) -> str:
    """The one error line on stderr (after any progress bar the run drew there), without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("kdlab: error:") == 1, err
    line = "kdlab: error:" + err.split("kdlab: error:")[1]
    first, *rest = line.splitlines()
    assert all("it/s]" in part for part in rest if part.strip()), err  # only the progress bar's last redraw
    return first


def test_checkpoint_on_a_full_disk_is_one_error_and_replaces_nothing(tiny_disk):
    path = tiny_disk / "checkpoints" / "last.pt"
    save_checkpoint(path, _state(1000))  # 4 kB: fits
    before = path.read_bytes()
    with pytest.raises(StorageError, match=r"last\.pt: disk full while writing last\.pt; nothing was replaced"):
        save_checkpoint(path, _state(400_000))  # 1.6 MB: does not
    assert path.read_bytes() == before
    assert load_checkpoint(path)["iteration"] == 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # its temporary file is gone
    free = os.statvfs(tiny_disk)
    assert free.f_bavail * free.f_frsize > 900_000  # and its space is free again (no file left open)
    with pytest.raises(StorageError, match="results.json: disk full"):
        atomic_write_text(tiny_disk / "results.json", "x" * 2_000_000)
    assert not (tiny_disk / "results.json").exists()


@pytest.mark.parametrize("failure", [TORCH_DISK_FULL, OSError(errno.ENOSPC, "No space left on device")])
def test_torch_save_disk_full_errors_are_translated(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(10))

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(StorageError, match="disk full while writing last.pt; nothing was replaced"):
        save_checkpoint(path, _state(20))
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_save_errors_are_not_disguised(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        save_checkpoint(tmp_path / "last.pt", _state(3))


def test_disk_full_during_training_is_one_line(tiny_overrides, monkeypatch, capsys):
    import kdlab.checkpoint

    def full(*args, **kwargs):
        raise TORCH_DISK_FULL

    monkeypatch.setattr(kdlab.checkpoint.torch, "save", full)
    assert cli.main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=full"]) == 2
    assert "last.pt: disk full while writing last.pt; nothing was replaced" in _one_line(capsys)


def test_a_full_disk_on_a_log_line_is_one_line(tiny_overrides, monkeypatch, capsys):
    import kdlab.engine

    def full(self, file, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kdlab.engine.RunDir, "append", full)
    assert cli.main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=full"]) == 2
    assert _one_line(capsys).startswith("kdlab: error: disk full; free some space")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_an_unwritable_directory_is_one_error_naming_it(tmp_path, monkeypatch, code):
    import tempfile

    def refused(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), os.path.join(dir, ".config.yaml.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(StorageError, match=rf"^{tmp_path}: cannot write \({os.strerror(code)}\); the directory is"):
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")


def test_resuming_a_read_only_run_directory_is_one_line(tiny_overrides, tmp_path, capsys):
    assert cli.main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=ro", "--until", "2"]) == 0
    run = tmp_path / "runs" / "ro"
    if not _mount("--bind", "-o", "ro", str(run), str(run)):
        pytest.skip("cannot bind-mount read-only here (needs root)")
    try:
        capsys.readouterr()
        assert cli.main(["train", "--resume", str(run)]) == 2
        line = _one_line(capsys)
        assert f"{run}" in line and "Read-only file system" in line
    finally:
        subprocess.run(["umount", "--lazy", str(run)], check=True)


def _offline_errors():
    errors = [urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
              ConnectionError("Connection refused"), TimeoutError("timed out")]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
        errors.append(LocalEntryNotFoundError("cannot find the requested files in the local cache"))
    except ImportError:
        pass
    try:
        import httpx
        errors.append(httpx.ConnectError("[Errno -3] Temporary failure in name resolution"))
    except ImportError:
        pass
    return errors


@pytest.mark.parametrize("failure", _offline_errors(), ids=lambda e: type(e).__name__)
def test_imagenet_weights_offline_is_one_config_error(monkeypatch, failure):
    import segmentation_models_pytorch.encoders as encoders

    from kdlab.models.zoo import ModelSpec, build_model

    def offline(*args, **kwargs):
        raise failure

    monkeypatch.setattr(encoders, "hf_hub_download", offline)
    with pytest.raises(ConfigError, match=r"^model.encoder_weights=imagenet: cannot download the resnet18 weights "
                                          r"\(\w+; offline\?\); use model.encoder_weights=null or put the weights"):
        build_model(ModelSpec(arch="PSPNet", encoder="resnet18", encoder_weights="imagenet", encoder_depth=3), 3)


def test_imagenet_weights_offline_on_the_command_line(tiny_overrides, monkeypatch, capsys):
    import segmentation_models_pytorch.encoders as encoders

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(encoders, "hf_hub_download", offline)
    assert cli.main(["train", "-c", "configs/student.yaml", *tiny_overrides, "model.encoder_weights=imagenet"]) == 2
    assert "model.encoder_weights=imagenet: cannot download" in _one_line(capsys)


def test_a_config_as_teacher_is_one_line_before_any_data(tiny_overrides, tmp_path, capsys):
    data = tmp_path / "never-generated"
    teacher = project_root() / "configs" / "teacher.yaml"
    code = cli.main(["distill", "-c", "configs/student.yaml", "--recipe", "kd", "--teacher", str(teacher),
                     *tiny_overrides, f"data.root={data}"])
    assert code == 2
    assert f"{teacher}: not a checkpoint (a YAML file: a config, not a trained model)" in _one_line(capsys)
    assert not data.exists()
    with pytest.raises(CheckpointError, match="not a checkpoint; give a .pt file"):
        load_checkpoint(project_root() / "README.md")


def test_a_run_diverging_at_its_first_step_keeps_the_comparison_figures(tmp_path, tiny_data_root):
    """What notebooks/02_comparison.ipynb does, with one method whose loss is inf at iteration 1."""
    from kdlab import inspection, pipeline
    from kdlab.plots import comparison, training_curves, trimap_curves

    recipe = tmp_path / "huge.yaml"
    recipe.write_text("methods:\n  - method: kd\n    weight: 1.0e+300\n")
    profile = tmp_path / "diverge.yaml"
    profile.write_text(f"""
base: [data.root={tiny_data_root}, data.image_size=64, data.crop_size=64, data.num_train=24, data.num_val=6,
       train.batch_size=2, train.eval_interval=0, train.checkpoint_interval=1, eval.batch_size=6]
teacher: {{config: configs/teacher.yaml, overrides: [train.iterations=1, model.encoder=resnet18]}}
student: {{config: configs/student.yaml, overrides: [train.iterations=2]}}
seeds: [0]
recipes: [{recipe}]
""")
    prof = pipeline.load_profile(str(profile), runs_root=tmp_path / "runs", device="cpu")
    runs = pipeline.ensure_comparison(prof, progress=False)
    teacher = prof.runs_dir / "teacher"
    (label,) = {label for label, _seed in runs} - {"baseline"}
    assert pipeline.read_results(runs[(label, 0)])["iteration"] == 1  # diverged at its first step
    rows = inspection.comparison_table(runs, teacher, "cpu", fps_repeats=1)
    assert [r["method"] for r in rows] == ["teacher", "baseline", label] and rows[2]["diverged"] == 1
    comparison.comparison_figure(rows)
    trimap_curves.trimap_curves_figure(inspection.trimap_curves(runs, teacher))
    terms = inspection.loss_terms_by_label(runs)
    assert list(terms) == ["baseline"]
    training_curves.training_curves_figure(terms)
