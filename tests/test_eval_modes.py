"""Paper-scale evaluation: keep-ratio test resize, [h, w] sliding windows, multi-scale + flip, and
mmseg's per-class table in percent."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdlab.cli import main
from kdlab.config import load_config
from kdlab.data import open_dataset, eval_transform
from kdlab.engine import build_data, eval_size, evaluate, predict, predict_scores, slide_inference, train
from kdlab.errors import ConfigError
from kdlab.metrics import SegmentationMeter
from kdlab.tables import scores_table


def eval_cfg(**options):
    base = dict(mode="whole", window=128, stride=96, resize=None, scales=[1.0], flip=False)
    return SimpleNamespace(**{**base, **options})


def symmetric_conv(classes=4, seed=0):
    """A 3×3 convolution whose kernels are mirror-symmetric left to right: flip-equivariant."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, classes, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return conv.eval()


def test_eval_size_fits_the_resize_scale_with_the_ratio_kept():
    assert eval_size((1024, 2048), [2048, 1024]) == (1024, 2048)
    assert eval_size((512, 683), [2048, 512]) == (512, 683)
    assert eval_size((375, 500), [2048, 512]) == (512, 683)
    assert eval_size((1024, 2048), [2048, 1024], 0.5) == (512, 1024)
    assert eval_size((30, 40), None) == (30, 40) and eval_size((30, 40), None, 1.5) == (45, 60)


def test_keep_ratio_resize_predicts_at_the_labels_size():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1).eval()
    images = torch.randn(2, 3, 30, 40)
    with torch.no_grad():
        scores = predict_scores(conv, images, eval_cfg(resize=[80, 60]), 5)
        resized = F.interpolate(images, size=(60, 80), mode="bilinear", align_corners=False)
        expected = F.interpolate(conv(resized), size=(30, 40), mode="bilinear", align_corners=False)
    assert scores.shape == (2, 5, 30, 40)
    assert torch.allclose(scores, expected, atol=1e-6)  # logits resized back, no softmax for one pass
    assert predict(conv, images, eval_cfg(resize=[80, 60]), 5).shape == (2, 30, 40)


def test_evaluate_with_a_test_resize_scores_at_the_original_label_size(tiny_data_root):
    cfg = load_config([], [f"data.root={tiny_data_root}", "data.image_size=64", "data.num_train=24", "data.num_val=6",
                           "eval.resize=[96, 96]", "eval.batch_size=4", "train.device=cpu"])
    _, val_set, meta = build_data(cfg)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, meta["num_classes"], kernel_size=3, padding=1)
    scores = evaluate(conv, val_set, cfg, torch.device("cpu"), meta["num_classes"], progress=False)
    meter = SegmentationMeter(meta["num_classes"], widths=tuple(cfg.eval.band_widths))
    with torch.no_grad():
        for i in range(len(val_set)):
            item = val_set[i]
            big = F.interpolate(item["image"][None], size=(96, 96), mode="bilinear", align_corners=False)
            logits = F.interpolate(conv(big), size=item["label"].shape, mode="bilinear", align_corners=False)
            meter.update(logits.argmax(1), item["label"][None])
    expected = meter.compute()
    assert scores["mIoU"] == pytest.approx(expected["mIoU"]) and scores["aAcc"] == pytest.approx(expected["aAcc"])


def test_flip_on_a_flip_equivariant_model_changes_nothing():
    conv = symmetric_conv()
    images = torch.randn(2, 3, 17, 23)
    with torch.no_grad():
        single = predict_scores(conv, images, eval_cfg(), 4)
        flipped = predict_scores(conv, images, eval_cfg(flip=True), 4)
    assert torch.allclose(flipped, single.softmax(1), atol=1e-6)
    assert torch.equal(predict(conv, images, eval_cfg(flip=True), 4), single.argmax(1))


def test_multi_scale_and_flip_average_the_softmax_of_every_pass():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).eval()  # not flip-equivariant
    images = torch.randn(1, 3, 20, 28)
    cfg = eval_cfg(scales=[0.5, 1.0, 1.5], flip=True, resize=[40, 20])
    with torch.no_grad():
        scores = predict_scores(conv, images, cfg, 4)
        passes = []
        for size in ((10, 14), (20, 28), (30, 42)):  # [40, 20] x scale, fitted with the ratio kept
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False) if size != (20, 28) else images
            for flip in (False, True):
                y = conv(x.flip(-1)).flip(-1) if flip else conv(x)
                y = F.interpolate(y, size=(20, 28), mode="bilinear", align_corners=False) if size != (20, 28) else y
                passes.append(y.softmax(1))
        expected = torch.stack(passes).mean(0)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(scores.sum(1), torch.ones(1, 20, 28), atol=1e-5)


def test_multi_scale_on_a_pointwise_model_of_a_flat_image_gives_the_single_scale_prediction():
    conv = torch.nn.Conv2d(3, 4, kernel_size=1).eval()
    images = torch.zeros(1, 3, 24, 32)
    images[:, :, :, :16] = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    images[:, :, :, 16:] = torch.tensor([-0.5, 2.0, 1.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        single = predict(conv, images, eval_cfg(), 4)
        multi = predict(conv, images, eval_cfg(scales=[0.5, 1.0, 1.5, 2.0], flip=True), 4)
    assert torch.equal(single[..., :14], multi[..., :14]) and torch.equal(single[..., 18:], multi[..., 18:])


def test_sliding_windows_take_height_width_pairs():
    conv = torch.nn.Conv2d(3, 4, kernel_size=1)
    images = torch.randn(1, 3, 50, 90)
    with torch.no_grad():
        tiled = slide_inference(conv, images, window=[32, 64], stride=[21, 42], num_classes=4)
        larger = slide_inference(conv, images, window=[64, 128], stride=[40, 80], num_classes=4)  # > the image
        assert torch.allclose(tiled, conv(images), atol=1e-6) and torch.allclose(larger, conv(images), atol=1e-6)
        slide = eval_cfg(mode="slide", window=[32, 64], stride=[21, 42], resize=[120, 60], flip=True)
        assert predict(conv, images, slide, 4).shape == (1, 50, 90)


def test_invalid_eval_options_fail_when_the_config_loads():
    cfg = load_config([], ["eval.window=[512, 1024]", "eval.stride=[341, 682]", "eval.resize=[2048, 1024]",
                           "eval.scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]", "eval.flip=true"])
    assert cfg.eval.window == [512, 1024] and cfg.eval.scales[0] == 0.5
    for bad, key in (("eval.window=[512]", "eval.window"), ("eval.window=0", "eval.window"),
                     ("eval.stride=[0, 5]", "eval.stride"), ("eval.stride=200", "eval.stride"),
                     ("eval.resize=[2048]", "eval.resize"), ("eval.scales=[]", "eval.scales"),
                     ("eval.scales=[1.0, -1]", "eval.scales")):
        with pytest.raises(ConfigError, match=key):
            load_config([], [bad])


def test_a_run_with_an_invalid_eval_window_fails_before_training(tiny_overrides, tmp_path):
    assert main(["train", "-c", "configs/student.yaml", *tiny_overrides, "name=bad", "eval.window=[64, 0]"]) == 2
    assert not (tmp_path / "runs" / "bad").exists()


def test_mmseg_style_table_in_percent():
    scores = {"IoU": [0.97923, float("nan"), 0.5], "Acc": [0.98851, None, 0.6], "classes": ["0", "1", "2"],
              "aAcc": 0.95981, "mIoU": 0.739615, "mAcc": 0.794255}
    table = scores_table(scores, ["road", "sidewalk", "traffic light"])
    lines = table.splitlines()
    assert "| Class         |   IoU |   Acc |" in lines
    assert "| road          | 97.92 | 98.85 |" in lines
    assert "| sidewalk      |   nan |   nan |" in lines
    assert "| traffic light | 50.00 | 60.00 |" in lines
    assert lines[lines.index("|  aAcc |  mIoU |  mAcc |") + 2] == "| 95.98 | 73.96 | 79.43 |"
    assert "| 0 " in scores_table(scores)  # without names: the dict's own
    with pytest.raises(ValueError):
        scores_table(scores, ["road"])


def test_eval_command_writes_and_prints_the_table(tiny_overrides, tmp_path, capsys):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=tab", "train.iterations=1"])
    run = train(cfg, progress=False)
    out = tmp_path / "scores.json"
    assert main(["eval", str(run), "-c", "configs/student.yaml", *tiny_overrides, "eval.resize=[96, 96]",
                 "eval.scales=[0.75, 1.0]", "eval.flip=true", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    table = (tmp_path / "scores.md").read_text()
    assert table in printed and "| grass" in table
    assert " | ".join(f"{100 * saved[key]:5.2f}" for key in ("aAcc", "mIoU", "mAcc")) in table
    assert len(saved["class_names"]) == len(saved["IoU"]) == 9 and not math.isnan(saved["mIoU"])
