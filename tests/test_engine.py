"""Supervised training, checkpoints, resume and evaluation on the tiny embedded benchmark."""

import json

import pytest
import torch

from kdlab.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from kdlab.config import load_config
from kdlab.engine import IterationBatches, evaluate_checkpoint, run_config, slide_inference, train
from kdlab.errors import CheckpointError, ConfigError


def test_training_writes_a_self_contained_run_directory(tiny_overrides):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=sup"])
    run = train(cfg, progress=False)
    assert run_config(run) == cfg  # the resolved config reproduces the run
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    assert all(r["ce"] > 0 and r["loss"] == r["ce"] for r in log)
    assert log[0]["lr"] == cfg.train.lr > log[-1]["lr"]  # poly decay
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["mIoU"] <= 1 and len(results["IoU"]) == 9
    state = load_checkpoint(run)
    assert state["iteration"] == 4 and state["dataset"]["num_classes"] == 9
    assert not list(run.rglob("*.tmp"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_overrides):
    straight = train(load_config(["configs/student.yaml"], tiny_overrides + ["name=straight"]), progress=False)
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=split"])
    partial = train(cfg, until=2, progress=False)
    assert load_checkpoint(partial)["iteration"] == 2 and not (partial / "results.json").exists()
    resumed = train(run_config(partial), resume=True, progress=False)
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((resumed / "log.jsonl").read_text().splitlines()) == 4


def test_existing_run_directory_is_not_overwritten(tiny_overrides):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=twice", "train.iterations=1"])
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg, progress=False)


def test_batches_depend_only_on_seed_and_iteration():
    sampler = IterationBatches(num_samples=10, batch_size=4, seed=3, start=0, end=6)
    batches = list(sampler)
    assert batches[4] == IterationBatches(10, 4, 3, start=4, end=6).batch(4)
    first_epoch = [i for b in batches[:2] for i, _ in b] + [i for i, _ in batches[2][:2]]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    assert len({seed for b in batches for _, seed in b}) == 24  # every sample has its own augmentation seed


def test_checkpoint_of_another_architecture_or_class_count_is_refused(tiny_overrides, tmp_path):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=ck", "train.iterations=1"])
    run = train(cfg, progress=False)
    state = load_checkpoint(run)
    state["model_spec"]["encoder"] = "resnet34"
    save_checkpoint(tmp_path / "other_arch.pt", state)  # a consistent checkpoint of another model
    with pytest.raises(CheckpointError, match="other_arch.pt"):
        model_from_checkpoint(tmp_path / "other_arch.pt")
    state = load_checkpoint(run)
    state["dataset"]["num_classes"] = 5
    save_checkpoint(tmp_path / "five.pt", state)
    with pytest.raises(CheckpointError, match="5 classes"):
        evaluate_checkpoint(tmp_path / "five.pt", cfg, progress=False)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    conv = torch.nn.Conv2d(3, 4, kernel_size=1)
    images = torch.randn(2, 3, 50, 70)
    tiled = slide_inference(conv, images, window=32, stride=20, num_classes=4)
    assert torch.allclose(tiled, conv(images), atol=1e-6)


def test_eval_command_scores_a_checkpoint(tiny_overrides, tmp_path):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=ev", "train.iterations=1"])
    run = train(cfg, progress=False)
    whole = evaluate_checkpoint(run, cfg, out=tmp_path / "scores.json", progress=False)
    slide = evaluate_checkpoint(run, load_config(["configs/student.yaml"], tiny_overrides + [
        "eval.mode=slide", "eval.window=48", "eval.stride=16"]), progress=False)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["mIoU"] == pytest.approx(whole["mIoU"])
    assert 0 <= slide["mIoU"] <= 1 and "trimap_curve" in whole
