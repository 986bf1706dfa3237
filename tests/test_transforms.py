"""mmseg's paper-scale training pipeline: RandomResize to a base scale, RandomCrop with cat_max_ratio,
PhotoMetricDistortion, padding with ignore; every draw from the Generator passed in (exact resume)."""

import json

import numpy as np
import pytest
import torch

from kdlab.config import load_config
from kdlab.checkpoint import load_checkpoint
from kdlab.data.synthetic import IGNORE_INDEX
from kdlab.data.transforms import (PadTo, PhotoMetricDistortion, RandomCrop, RandomHorizontalFlip, RandomResize,
                                   RandomScale, ToTensor, as_pair, keep_ratio_size, train_transform)
from kdlab.engine import build_data, loader_workers, run_config, train
from kdlab.errors import ConfigError


class CountingRng:
    """A Generator that counts its draws."""

    def __init__(self, seed=0):
        self.rng, self.calls = np.random.default_rng(seed), []

    def __getattr__(self, name):
        method = getattr(self.rng, name)

        def call(*args, **kwargs):
            self.calls.append((name, args))
            return method(*args, **kwargs)
        return call


class ScriptedRng:
    """Returns scripted values in order and records what each draw asked for."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def _next(self, name, args):
        self.calls.append((name, args))
        return self.values.pop(0)

    def integers(self, *args):
        return self._next("integers", args)

    def uniform(self, *args):
        return self._next("uniform", args)


def random_pair(h=40, w=60, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, classes, (h, w)).astype(np.uint8)


# ----------------------------------------------------------------------------- defaults unchanged
def test_default_pipeline_is_kdlabs_own_when_every_paper_option_is_off():
    steps = train_transform(64, (0.5, 2.0)).transforms
    assert [type(s) for s in steps] == [RandomScale, RandomCrop, RandomHorizontalFlip, ToTensor]
    assert steps[1].pad and steps[1].cat_max_ratio == 1.0 and steps[1].size == (64, 64)
    paper = train_transform([32, 48], base_size=[96, 64], cat_max_ratio=0.75, photometric=True).transforms
    assert [type(s) for s in paper] == [RandomResize, RandomCrop, RandomHorizontalFlip, PhotoMetricDistortion,
                                        ToTensor, PadTo]
    assert not paper[1].pad and paper[1].size == (32, 48)


def test_sizes_are_a_side_or_a_height_width_pair():
    assert as_pair(7) == (7, 7) and as_pair([512, 1024]) == (512, 1024)
    image, label = random_pair(40, 60)
    out_image, out_label = RandomCrop([16, 24])(image, label, np.random.default_rng(0))
    assert out_label.shape == (16, 24) and out_image.shape == (16, 24, 3)


# ----------------------------------------------------------------------------- RandomResize
def test_keep_ratio_size_fits_the_long_and_short_sides():
    assert keep_ratio_size((1024, 2048), (2048, 1024)) == (1024, 2048)
    assert keep_ratio_size((375, 500), (2048, 512)) == (512, 683)  # ADE20K: the short side limits
    assert keep_ratio_size((512, 4096), (2048, 512)) == (256, 2048)  # a panorama: the long side limits
    assert keep_ratio_size((1024, 2048), [1024, 2048]) == (1024, 2048)  # [long, short] in either order


@pytest.mark.parametrize("shape", [(1024, 2048), (375, 500), (90, 40)])
def test_random_resize_to_a_base_scale_keeps_the_ratio(shape):
    image, label = np.zeros((*shape, 3), np.uint8), np.zeros(shape, np.uint8)
    transform = RandomResize([256, 128], 0.5, 2.0)
    ratios = []
    for seed in range(20):
        ratio = np.random.default_rng(seed).uniform(0.5, 2.0)  # the one draw RandomResize makes
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        h, w = out_label.shape
        assert out_image.shape == (h, w, 3)
        assert (h, w) == keep_ratio_size(shape, (int(256 * ratio), int(128 * ratio)))
        assert max(h, w) <= int(256 * ratio) and min(h, w) <= int(128 * ratio)
        assert abs(h / shape[0] - w / shape[1]) <= 1.0 / min(shape)  # one factor for both sides, up to rounding
        ratios.append(max(h, w) / max(shape))
    assert max(ratios) / min(ratios) > 2  # the scale varies over the ratio range


# ----------------------------------------------------------------------------- RandomCrop with cat_max_ratio
def test_cat_max_ratio_redraws_a_crop_ten_times_then_keeps_the_last():
    label = np.full((50, 50), 3, np.uint8)  # one class everywhere: every crop fails the test
    image = np.zeros((50, 50, 3), np.uint8)
    rng = CountingRng(0)
    RandomCrop(20, cat_max_ratio=0.75)(image, label, rng)
    assert len(rng.calls) == 2 * 11  # the first window and 10 redraws, each a (top, left) pair
    label[:, 25:] = IGNORE_INDEX  # ignore does not count as a second class
    rng = CountingRng(0)
    RandomCrop(20, cat_max_ratio=0.75)(image, label, rng)
    assert len(rng.calls) == 22
    rng = CountingRng(0)
    RandomCrop(20)(image, label, rng)  # cat_max_ratio 1.0: no test, one window
    assert len(rng.calls) == 2


def test_cat_max_ratio_keeps_the_first_crop_that_passes():
    label = np.zeros((60, 60), np.uint8)
    label[40:, 40:] = 1  # one corner holds a second class
    label[50:, 50:] = 2
    label[:5] = IGNORE_INDEX
    image = np.zeros((60, 60, 3), np.uint8)
    crop = RandomCrop(24, cat_max_ratio=0.75)
    passed = 0
    for seed in range(40):
        rng = CountingRng(seed)
        _, out = crop(image, label, rng)
        windows = len(rng.calls) // 2
        if windows < 11:
            passed += 1
            assert crop.diverse(out)
            values, counts = np.unique(out[out != IGNORE_INDEX], return_counts=True)
            assert len(values) > 1 and counts.max() / counts.sum() < 0.75
        # the crop is the last window drawn: replaying the draws gives it
        replay = np.random.default_rng(seed)
        for _ in range(windows):
            top, left = int(replay.integers(0, 37)), int(replay.integers(0, 37))
        assert np.array_equal(out, label[top:top + 24, left:left + 24])
    assert 0 < passed < 40


def test_cat_max_ratio_is_deterministic_for_a_seed():
    image, label = random_pair(80, 100, classes=3)
    label[:, :70] = 0
    crop = RandomCrop([30, 40], cat_max_ratio=0.75)
    a = crop(image, label, np.random.default_rng(7))
    b = crop(image, label, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- padding
def test_paper_pipeline_pads_with_ignore_and_the_mean_colour():
    image, label = random_pair(10, 12)
    transform = train_transform([16, 20], scale=(1.0, 1.0), cat_max_ratio=0.75, photometric=True)
    for seed in range(10):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 16, 20) and out_label.shape == (16, 20)
        assert (out_label[10:] == IGNORE_INDEX).all() and (out_label[:, 12:] == IGNORE_INDEX).all()
        assert (out_image[:, 10:] == 0).all() and (out_image[:, :, 12:] == 0).all()  # 0 after normalisation
        assert (out_label[:10, :12] != IGNORE_INDEX).all()


def test_pad_to_leaves_larger_images_alone():
    image, label = torch.ones(3, 8, 9), torch.zeros(8, 9, dtype=torch.long)
    out_image, out_label = PadTo([6, 12])(image, label, None)
    assert out_image.shape == (3, 8, 12) and (out_label[:, 9:] == IGNORE_INDEX).all()
    assert (out_image[:, :, 9:] == 0).all() and (out_image[:, :, :9] == 1).all()


# ----------------------------------------------------------------------------- PhotoMetricDistortion
def test_photometric_distortion_draws_in_mmsegs_order_and_ranges():
    image = np.array([[[100, 150, 200], [250, 10, 60]]], np.uint8)
    label = np.array([[1, 2]], np.uint8)
    # brightness on (+20), contrast last (mode 0), saturation off, hue off, contrast on (x1.5)
    rng = ScriptedRng([1, 20.0, 0, 0, 0, 1, 1.5])
    out, out_label = PhotoMetricDistortion()(image, label, rng)
    expected = np.clip(np.clip(image.astype(np.float32) + 20, 0, 255).astype(np.uint8) * 1.5, 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected) and out_label is label
    assert rng.calls == [("integers", (2,)), ("uniform", (-32, 32)), ("integers", (2,)), ("integers", (2,)),
                         ("integers", (2,)), ("integers", (2,)), ("uniform", (0.5, 1.5))]
    # brightness off, contrast first (mode 1) and on, saturation on, hue on
    rng = ScriptedRng([0, 1, 1, 0.5, 1, 1.5, 1, 5])
    PhotoMetricDistortion()(image, label, rng)
    assert rng.calls == [("integers", (2,)), ("integers", (2,)), ("integers", (2,)), ("uniform", (0.5, 1.5)),
                         ("integers", (2,)), ("uniform", (0.5, 1.5)), ("integers", (2,)), ("integers", (-18, 18))]


def test_saturation_and_hue_keep_grey_and_value():
    distortion = PhotoMetricDistortion()
    grey = np.full((4, 4, 3), 90, np.uint8)
    assert np.array_equal(distortion.saturation(grey, ScriptedRng([1, 1.5])), grey)
    assert np.array_equal(distortion.hue(grey, ScriptedRng([1, 17])), grey)
    colour = np.array([[[200, 100, 50]]], np.uint8)
    less = distortion.saturation(colour, ScriptedRng([1, 0.5]))
    assert less.max() == 200 and less.min() == 125  # S halves: min = V (1 - S / 2)
    full = distortion.saturation(colour, ScriptedRng([1, 1.5]))
    assert full.max() == 200 and full.min() == 0  # S x 1.5 clipped to 1
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert np.array_equal(distortion.hue(red, ScriptedRng([1, 60])), [[[0, 255, 0]]])  # +60 x 2 degrees = green
    assert np.array_equal(distortion.hue(red, ScriptedRng([1, -60])), [[[0, 0, 255]]])


def test_photometric_distortion_ranges_and_determinism():
    image, label = random_pair(24, 32)
    distortion = PhotoMetricDistortion()
    grey = np.full((8, 8, 3), 128, np.uint8)
    shifts = set()
    for seed in range(200):
        out = distortion.brightness(grey, np.random.default_rng(seed))
        assert len(np.unique(out)) == 1
        shifts.add(int(out[0, 0, 0]) - 128)
        first, _ = distortion(image, label, np.random.default_rng(seed))
        again, _ = distortion(image, label, np.random.default_rng(seed))
        assert np.array_equal(first, again) and first.dtype == np.uint8 and first.shape == image.shape
    assert 0 in shifts and min(shifts) >= -32 and max(shifts) <= 32 and min(shifts) < -20 and max(shifts) > 20
    changed = sum(not np.array_equal(distortion(image, label, np.random.default_rng(s))[0], image) for s in range(100))
    assert 85 < changed < 100  # all four steps off: 1/16 of the seeds
    factors = [distortion.contrast(grey, np.random.default_rng(s))[0, 0, 0] / 128 for s in range(200)]
    assert min(factors) >= 0.5 - 1 / 128 and max(factors) <= 1.5 and min(factors) < 0.6 and max(factors) > 1.4


def test_paper_pipeline_is_a_function_of_the_seed():
    image, label = random_pair(70, 90)
    transform = train_transform([32, 48], scale=(0.5, 2.0), base_size=[120, 80], cat_max_ratio=0.75, photometric=True)
    for seed in range(5):
        a, b = transform(image, label, np.random.default_rng(seed)), transform(image, label, np.random.default_rng(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].shape == (3, 32, 48) and a[1].shape == (32, 48)
    c = transform(image, label, np.random.default_rng(99))
    assert not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------- config and engine
def test_paper_options_are_checked_when_the_config_loads():
    cfg = load_config([], ["data.crop_size=[512, 1024]", "data.base_size=[2048, 1024]", "data.cat_max_ratio=0.75",
                           "data.photometric=true"])
    assert cfg.data.crop_size == [512, 1024] and cfg.data.base_size == [2048, 1024]
    for bad in ("data.crop_size=[512]", "data.crop_size=[0, 4]", "data.base_size=[2048, 0]", "data.cat_max_ratio=1.5",
                "data.cat_max_ratio=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config([], [bad])


def test_build_data_applies_the_paper_options(tiny_data_root):
    cfg = load_config([], [f"data.root={tiny_data_root}", "data.image_size=64", "data.num_train=24", "data.num_val=6",
                           "data.crop_size=[40, 56]", "data.base_size=[96, 64]", "data.cat_max_ratio=0.75",
                           "data.photometric=true"])
    train_set, _, _ = build_data(cfg)
    item = train_set[3, 12345]
    assert item["image"].shape == (3, 40, 56) and item["label"].shape == (40, 56)
    again = train_set[3, 12345]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])


def test_loader_workers_default_to_zero_on_the_embedded_benchmark_only():
    assert loader_workers(load_config([], [])) == 0
    assert loader_workers(load_config([], ["data.num_workers=3"])) == 3
    assert 1 <= loader_workers(load_config([], ["data.name=cityscapes"])) <= 4
    assert loader_workers(load_config([], ["data.name=cityscapes", "data.num_workers=0"])) == 0


def test_resume_is_exact_with_the_paper_pipeline(tiny_overrides):
    paper = ["data.crop_size=[48, 56]", "data.base_size=[96, 64]", "data.cat_max_ratio=0.75", "data.photometric=true",
             "eval.resize=[80, 80]", "eval.flip=true"]
    straight = train(load_config(["configs/student.yaml"], tiny_overrides + paper + ["name=straight"]), progress=False)
    partial = train(load_config(["configs/student.yaml"], tiny_overrides + paper + ["name=split"]), until=2,
                    progress=False)
    assert load_checkpoint(partial)["iteration"] == 2
    cfg = run_config(partial)
    cfg.data.num_workers = 1  # workers do not change the batches
    resumed = train(cfg, resume=True, progress=False)
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (straight, resumed)]
    assert logs[0] == logs[1]
