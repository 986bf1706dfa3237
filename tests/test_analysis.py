"""kdlab.analysis: entropy, CAMs, edge masks and scores over seeds, on hand-made tensors."""

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from kdlab.analysis import (
    class_activation_map,
    decoupled_logits,
    edge_masks,
    entropy_summary,
    first_layer_entropy,
    gains_over,
    mean_std_over_seeds,
)


@pytest.fixture(scope="module")
def tiny_fpn():
    torch.manual_seed(0)
    return smp.FPN("resnet18", encoder_weights=None, classes=3)


def test_entropy_of_constant_features_is_log_c():
    features = torch.full((2, 5, 9, 11), 3.0)
    entropy = first_layer_entropy(features)
    assert entropy.shape == (2, 9, 11)
    assert torch.allclose(entropy, torch.full_like(entropy, math.log(5)))


def test_entropy_of_one_dominant_channel_is_zero():
    features = torch.zeros(1, 4, 7, 5)
    features[:, 2] = 100.0
    assert first_layer_entropy(features).abs().max() < 1e-6


def test_entropy_of_two_channels_by_hand():
    features = torch.zeros(1, 2, 3, 5)
    features[:, 1] = math.log(3)  # softmax = (1/4, 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(first_layer_entropy(features), torch.full((1, 3, 5), expected))


def test_entropy_rejects_non_4d_features():
    with pytest.raises(ValueError, match="features"):
        first_layer_entropy(torch.zeros(4, 7, 5))


def test_entropy_summary_resizes_band_by_nearest():
    entropy = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    band = torch.zeros(2, 3, 5, dtype=torch.bool)
    band[0, 1, 2] = band[1, 0, 4] = True
    band_2x = band.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    expected_band_mean = (entropy[0, 1, 2] + entropy[1, 0, 4]).item() / 2
    for mask in (band, band_2x):
        summary = entropy_summary(entropy, mask)
        assert summary["mean_all"] == pytest.approx(entropy.mean().item())
        assert summary["mean_band"] == pytest.approx(expected_band_mean)
    assert math.isnan(entropy_summary(entropy, torch.zeros_like(band))["mean_band"])


@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_cam_shape_range_and_cleanup(tiny_fpn, method):
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        category = int(tiny_fpn(images).argmax(dim=1).flatten().mode().values)  # a predicted class
    tiny_fpn.train()
    cam = class_activation_map(tiny_fpn, images, tiny_fpn.encoder.layer4, category, method=method)
    assert isinstance(cam, np.ndarray) and cam.shape == (1, 64, 64)
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert tiny_fpn.training, "the model's mode must be restored"
    assert not tiny_fpn.encoder.layer4._forward_hooks, "grad-cam hooks must be released"


def test_cam_of_empty_region_is_zero(tiny_fpn):
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    # The target sums the class logit over no pixel: zero gradient, so a zero map.
    empty = torch.zeros(1, 64, 64, dtype=torch.bool)
    cam = class_activation_map(tiny_fpn, images, tiny_fpn.encoder.layer4, 0, mask=empty)
    assert not cam.any()


def test_cam_rejects_bad_arguments_and_restores_mode(tiny_fpn):
    images = torch.randn(1, 3, 64, 64)
    tiny_fpn.train()
    with pytest.raises(ValueError, match="method"):
        class_activation_map(tiny_fpn, images, tiny_fpn.encoder.layer4, 0, method="scorecam")
    with pytest.raises(ValueError, match="category"):
        class_activation_map(tiny_fpn, images, tiny_fpn.encoder.layer4, 3)
    with pytest.raises(ValueError, match="mask"):
        class_activation_map(tiny_fpn, images, tiny_fpn.encoder.layer4, 0, mask=np.ones((1, 32, 32), dtype=bool))
    assert tiny_fpn.training


def test_edge_masks_are_binary_at_label_size_and_average_pooled_at_out_size():
    labels = torch.randint(0, 4, (2, 8, 12), generator=torch.Generator().manual_seed(0))
    labels[0, :2, :3] = 255
    binary, soft = edge_masks(labels, 4, (4, 6), edge_width=3)
    assert binary.shape == (2, 4, 8, 12) and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(soft, F.avg_pool2d(binary, 2))


def test_decoupled_logits_match_a_loop():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, 11, generator=generator)
    masks = torch.rand(2, 5, 9, 11, generator=generator)
    edge, body = decoupled_logits(logits, masks)
    for n in range(2):
        for y in range(9):
            for x in range(11):
                m = [masks[n, c, y, x].item() for c in range(5)]
                z = [logits[n, c, y, x].item() for c in range(5)]
                assert edge[n, y, x].item() == pytest.approx(max(zc * mc for zc, mc in zip(z, m)), abs=1e-6)
                assert body[n, y, x].item() == pytest.approx(max(zc * (1 - max(m)) for zc in z), abs=1e-6)
    with pytest.raises(ValueError, match="soft_masks"):
        decoupled_logits(logits, masks[:, :4])


def test_mean_std_over_seeds_ignores_missing_values():
    mean, std = mean_std_over_seeds([[0.2, None, None, 1.0], [0.4, 0.5, None, float("nan")], [0.9, 0.7, None, 3.0]])
    np.testing.assert_allclose(mean, [0.5, 0.6, np.nan, 2.0])
    np.testing.assert_allclose(std, [np.std([0.2, 0.4, 0.9], ddof=1), np.std([0.5, 0.7], ddof=1), np.nan,
                                     np.std([1.0, 3.0], ddof=1)])
    mean, std = mean_std_over_seeds([[0.25, 0.5]])
    assert mean.tolist() == [0.25, 0.5] and np.isnan(std).all()  # one seed: no std


def test_gains_over_subtract_the_reference_and_leave_out_the_teacher():
    rows = [{"class": "road", "teacher": 0.9, "baseline": 0.5, "kd": 0.6, "cwd": 0.4},
            {"class": "car", "teacher": 0.8, "baseline": 0.2, "kd": float("nan"), "cwd": 0.3}]
    gains = gains_over(rows)
    assert [list(gain) for gain in gains] == [["class", "kd", "cwd"]] * 2
    assert gains[0]["kd"] == pytest.approx(0.1) and gains[1]["cwd"] == pytest.approx(0.1)
    assert math.isnan(gains[1]["kd"])
    with pytest.raises(ValueError, match="reference"):
        gains_over(rows, reference="student")
