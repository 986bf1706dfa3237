import csv
import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from kdlab.analysis import (
    class_activation_map,
    colorize,
    entropy_summary,
    first_layer_entropy,
    overlay_boundaries,
    plot_edge_masks,
    plot_map_grid,
    qualitative_grid,
    save_figure,
    write_table,
)

PALETTE = [(200, 0, 0), (0, 150, 0), (0, 0, 250)]
CLASS_NAMES = ["road", "car", "sky"]


@pytest.fixture
def image():
    return np.random.default_rng(0).random((13, 15, 3))


@pytest.fixture
def label():
    label = np.zeros((13, 15), dtype=np.int64)
    label[3:9, 4:11] = 1
    label[10:, :5] = 2
    label[0, :3] = 255
    return label


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


def test_colorize_maps_palette_and_blackens_ignore(label):
    rgb = colorize(label, PALETTE)
    assert rgb.shape == (13, 15, 3) and rgb.dtype == np.uint8
    for value in (0, 1, 2):
        assert (rgb[label == value] == PALETTE[value]).all()
    assert (rgb[label == 255] == 0).all()
    with pytest.raises(ValueError, match="label"):
        colorize(np.full((2, 2), 3), PALETTE)


def test_overlay_blends_colours_and_marks_boundaries(image, label):
    pred = np.where(label == 255, 0, label)
    overlay = overlay_boundaries(image, pred, PALETTE, alpha=0.5)
    assert overlay.shape == (13, 15, 3) and overlay.dtype == np.uint8
    boundaries = find_boundaries(pred, mode="outer")
    assert (overlay[boundaries] == 255).all()
    image_uint8 = np.round(image * 255)
    expected = np.round(0.5 * image_uint8 + 0.5 * np.asarray(PALETTE)[pred])
    assert np.abs(overlay[~boundaries] - expected[~boundaries]).max() <= 1


def test_plot_edge_masks_has_five_panels_and_two_colour_bars(image, label):
    one_hot = np.stack([label == c for c in range(3)]).astype(np.float32)
    binary = np.zeros_like(one_hot)
    binary[:, 2:10, 3:12] = one_hot[:, 2:10, 3:12]
    soft = F.adaptive_avg_pool2d(torch.from_numpy(binary)[None], (4, 5))[0]
    fig = plot_edge_masks(image, label, binary, soft, CLASS_NAMES)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 7
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Image", "Ground truth"]


def test_qualitative_grid_is_samples_by_columns(image, label):
    columns = {"Ground truth": [label, label], "Teacher": [label, label], "Student": [label, np.zeros_like(label)]}
    fig = qualitative_grid([image, image.transpose(2, 0, 1)], columns, PALETTE)
    assert len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["Image", "Ground truth", "Teacher", "Student"]
    with pytest.raises(ValueError, match="columns"):
        qualitative_grid([image], columns, PALETTE)


def test_plot_map_grid_has_one_shared_colour_bar():
    maps = {"teacher": np.ones((5, 7)), "student": torch.zeros(5, 7), "BPKD": np.full((5, 7), 0.5)}
    fig = plot_map_grid(maps, cmap="magma", title="Entropy")
    assert len(fig.axes) == 3 + 1
    assert {image.get_clim() for ax in fig.axes[:3] for image in ax.get_images()} == {(0.0, 1.0)}


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = plot_map_grid({"map": np.eye(5)}, cmap="viridis", title="t")
    png, pdf = save_figure(fig, "eye", tmp_path / "figures")
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == ["eye.pdf", "eye.png"]


def test_write_table_csv_and_markdown_share_columns(tmp_path):
    rows = [{"method": "CWD", "mIoU": 0.71234, "epochs": 2}, {"method": "BPKD", "mIoU": 0.7, "trimap": 0.55555}]
    csv_path, md_path = write_table(rows, "results", tmp_path, float_fmt=".3f")
    with open(csv_path, newline="") as handle:
        read_back = list(csv.reader(handle))
    assert read_back == [
        ["method", "mIoU", "epochs", "trimap"],
        ["CWD", "0.712", "2", ""],
        ["BPKD", "0.700", "", "0.556"],
    ]
    md_lines = md_path.read_text().splitlines()
    assert md_lines[0] == "| method | mIoU | epochs | trimap |"
    assert md_lines[2] == "| CWD | 0.712 | 2 |  |"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.csv", "results.md"]
