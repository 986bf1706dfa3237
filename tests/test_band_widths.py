"""Trimap bands that can see boundaries at 128 px: the narrow default widths and bands given as a
fraction of the image height (`eval.relative_band_widths`)."""

import pytest
import torch

from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.metrics import SegmentationMeter, confusion_matrix, relative_width, scores_from_confusion, trimap_band


def maps(height: int, width: int, seed: int):
    """A label of vertical stripes 16 px wide and a prediction that is right on 80 % of the pixels."""
    generator = torch.Generator().manual_seed(seed)
    label = (torch.arange(width) // 16 % 3).expand(1, height, width).clone()
    wrong = torch.rand(1, height, width, generator=generator) < 0.2
    return torch.where(wrong, (label + 1) % 3, label), label


def test_relative_width_scales_with_the_height():
    assert relative_width(7 / 1024, 1024) == 7 and relative_width(7 / 1024, 128) == 1
    assert relative_width(3 / 128, 128) == 3 and relative_width(3 / 128, 512) == 12
    assert relative_width(1e-4, 128) == 1  # never an empty band
    for bad in (0, 1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError):
            relative_width(bad, 128)


def test_relative_bands_follow_each_batchs_height():
    small, large = maps(64, 64, 0), maps(256, 64, 1)
    meter = SegmentationMeter(3, widths=(1, 2), relative_widths=(1 / 32,))
    for pred, label in (small, large):
        meter.update(pred, label)
    # 1/32 of 64 px is 2 px, of 256 px 8 px: the relative band sums those two bands
    expected = sum(confusion_matrix(p, l, 3, mask=trimap_band(l, w)) for (p, l), w in ((small, 2), (large, 8)))
    scores = meter.compute()
    assert scores["trimap_relative_curve"] == {1 / 32: pytest.approx(scores_from_confusion(expected)["mIoU"])}
    assert set(scores["trimap_curve"]) == {1, 2, 7}  # the pixel widths, the default band included


def test_a_meter_without_relative_widths_reports_an_empty_curve():
    meter = SegmentationMeter(3)
    meter.update(*maps(32, 32, 2))
    assert meter.compute()["trimap_relative_curve"] == {}
    with pytest.raises(ValueError):
        SegmentationMeter(3, relative_widths=(2.0,))


def test_the_default_bands_include_the_narrow_ones_and_relative_widths_are_checked():
    cfg = load_config(["configs/student.yaml"])
    assert {1, 2, 3, 7} <= set(cfg.eval.band_widths) and cfg.eval.relative_band_widths == []
    assert load_config(["configs/student.yaml"], ["eval.relative_band_widths=[0.0068]"]).eval.relative_band_widths == [0.0068]
    with pytest.raises(ConfigError, match="eval.relative_band_widths"):
        load_config(["configs/student.yaml"], ["eval.relative_band_widths=[1.5]"])
