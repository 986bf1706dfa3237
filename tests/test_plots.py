"""kdlab.plots on hand-made inputs: colours and overlays, grids, each figure family, atomic output."""

import csv
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from kdlab.plots import save_figure, write_table
from kdlab.plots._common import (NotebookFigure, colorize, figure_bytes, image_grid_figure, label_colours,
                                 map_grid_figure, overlay_boundaries)
from kdlab.plots.ablations import is_sweep, sweep_figure
from kdlab.plots.comparison import COMPARISON_METRICS, comparison_figure
from kdlab.plots.edge_masks import edge_masks_figure
from kdlab.plots.per_class import per_class_figure
from kdlab.plots.qualitative import qualitative_figure

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


def _visible_axes(fig: Figure) -> int:
    return sum(ax.axison or ax.has_data() or bool(ax.images) for ax in fig.axes)


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


def test_edge_masks_figure_has_five_panels_and_two_colour_bars(image, label):
    one_hot = np.stack([label == c for c in range(3)]).astype(np.float32)
    binary = np.zeros_like(one_hot)
    binary[:, 2:10, 3:12] = one_hot[:, 2:10, 3:12]
    soft = F.adaptive_avg_pool2d(torch.from_numpy(binary)[None], (4, 5))[0]
    fig = edge_masks_figure(image, label, binary, soft, CLASS_NAMES, PALETTE)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 7
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Image", "Ground truth"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == CLASS_NAMES  # classes present


def test_qualitative_figure_is_samples_by_columns(image, label):
    columns = {"Ground truth": [label, label], "Teacher": [label, label], "Student": [label, np.zeros_like(label)]}
    fig = qualitative_figure([image, image.transpose(2, 0, 1)], columns, PALETTE)
    assert len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["Image", "Ground truth", "Teacher", "Student"]
    np.testing.assert_array_equal(fig.axes[7].images[0].get_array(), colorize(np.zeros_like(label), PALETTE))
    with pytest.raises(ValueError, match="label_maps"):
        qualitative_figure([image], columns, PALETTE)


def test_image_grid_needs_columns_of_one_length(image):
    with pytest.raises(ValueError, match="columns"):
        image_grid_figure({"a": [image], "b": [image, image]})
    with pytest.raises(ValueError, match="columns"):
        image_grid_figure({"a": []})


def test_map_grid_has_one_shared_colour_bar(image):
    rgb = np.stack([image, image]).astype(np.float32)
    maps = {"teacher": np.ones((2, 5, 7)), "student": torch.zeros(2, 5, 7), "BPKD": np.full((2, 13, 15), 0.5)}
    fig = map_grid_figure(rgb, maps, cmap="magma", title="Entropy")
    assert len(fig.axes) == 2 * 4 + 1
    shown = [im for row in range(2) for ax in fig.axes[4 * row + 1:4 * row + 4] for im in ax.get_images()]
    assert {im.get_clim() for im in shown} == {(0.0, 1.0)} and all(im.get_array().shape == (13, 15) for im in shown)
    with pytest.raises(ValueError, match="maps"):
        map_grid_figure(rgb, {"one": np.ones((1, 5, 7))})


def test_figures_show_themselves_as_png_without_pyplot():
    fig = comparison_figure([{"method": "a", **{k: 0.5 for k in COMPARISON_METRICS},
                              **{f"{k}_std": 0.1 for k in COMPARISON_METRICS}}])
    assert isinstance(fig, NotebookFigure) and fig._repr_png_().startswith(b"\x89PNG")
    assert figure_bytes(fig, "svg").lstrip().startswith(b"<?xml")


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = map_grid_figure(np.zeros((1, 5, 5, 3)), {"map": np.eye(5)[None]}, title="t")
    png, pdf = save_figure(fig, "eye", tmp_path / "figures")
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == ["eye.pdf", "eye.png"]
    assert stat.S_IMODE(png.stat().st_mode) == 0o644


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


def test_many_methods_get_distinct_colours_wider_panels_and_a_heat_map():
    methods = [f"method{i}" for i in range(15)]
    colours = label_colours(["teacher", "baseline", *methods])
    assert len(set(colours.values())) == 17
    rows = [{"method": m, **{k: 0.5 for k in COMPARISON_METRICS},
             **{f"{k}_std": 0.0 for k in COMPARISON_METRICS}} for m in methods]
    fig = comparison_figure(rows)
    assert _visible_axes(fig) == len(COMPARISON_METRICS) and fig.get_size_inches()[0] < 12
    gains = [{"class": c, **{m: 0.1 * i - 0.5 for i, m in enumerate(methods)}} for c in ("road", "car")]
    fig = per_class_figure(gains, "gain", "gains")
    heat = fig.axes[0]
    assert heat.images and [t.get_text() for t in heat.get_yticklabels()] == methods
    assert len(heat.texts) == 2 * len(methods) and heat.texts[0].get_text() == "-0.50"


def test_sweep_figure_draws_the_swept_values_and_the_baseline():
    rows = [{"method": "baseline", "mIoU": 0.3, "mIoU_std": float("nan"), "trimap_mIoU": 0.2,
             "trimap_mIoU_std": float("nan")}]
    assert not is_sweep(rows)
    with pytest.raises(ValueError, match="rows"):
        sweep_figure(rows)
    rows += [{"method": f"bpkd@edge_width={w}", "mIoU": 0.3 + w / 100, "mIoU_std": 0.01, "trimap_mIoU": 0.25,
              "trimap_mIoU_std": 0.0} for w in (3, 7, 11)]
    fig = sweep_figure(rows, title="edge width")
    assert is_sweep(rows) and len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "edge_width"
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["baseline", "bpkd"]


def test_a_group_of_matched_recipes_is_not_a_sweep_and_a_matched_sweep_is_one():
    rows = [{"method": m, "mIoU": 0.3, "mIoU_std": 0.0, "trimap_mIoU": 0.2, "trimap_mIoU_std": 0.0}
            for m in ("baseline", "bpkd_prm@matched", "bpkd_bel@matched")]
    assert not is_sweep(rows)
    rows[1:] = [{**rows[1], "method": f"bpkd@edge_width={w}@matched", "mIoU": 0.3 + w / 100} for w in (2, 5)]
    fig = sweep_figure(rows)
    assert [p[0] for p in fig.axes[0].lines[0].get_xydata()] == [2.0, 5.0]
    assert "bpkd@matched" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]

