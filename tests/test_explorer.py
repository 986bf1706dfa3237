"""kdlab.explorer on a tiny teacher and a perturbed copy of it: every overlay, lazy CAMs, and a widget
whose image changes when a control does (no browser; tests/test_browser.py drives JupyterLab)."""

import copy

import pytest
import torch
from matplotlib import _pylab_helpers

from kdlab import explorer, inspection


@pytest.fixture(scope="module")
def data(tiny_teacher):
    teacher = inspection.load_model(tiny_teacher, "cpu")
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    samples = inspection.validation_samples(tiny_teacher, 2)
    return explorer.explorer_data({"teacher": teacher, "other": other}, samples, samples.class_names[1])


def test_explorer_figure_renders_every_overlay_and_names_bad_choices(data):
    assert not data.cams  # CAMs are computed when first shown
    for overlay in explorer.OVERLAYS:
        fig = explorer.explorer_figure(data, 1, "other", overlay)
        colour_bars = overlay in ("entropy", "CAM")
        assert len(fig.axes) == 3 + colour_bars, overlay
        assert fig.axes[2].get_title().startswith(f"other: {overlay}")
        assert [t.get_text() for t in fig.legends[0].get_texts()] == data.samples.class_names
    assert list(data.cams) == [("other", data.samples.class_names[1])]
    for kwargs, argument in (({"overlay": "gradients"}, "overlay"), ({"model": "nobody"}, "model"),
                             ({"index": 2}, "index"), ({"overlay": "CAM", "cam_class": "unicorn"}, "name")):
        with pytest.raises(ValueError, match=argument):
            explorer.explorer_figure(data, **kwargs)


def test_cams_are_computed_once_per_model_and_class(data):
    name = data.samples.class_names[2]
    cam = data.cam("teacher", name)
    assert cam.shape == (2, 64, 64) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert data.cam("teacher", name) is cam


def test_edge_errors_are_green_where_right_and_red_where_wrong(data):
    rgb, label = data.samples.rgb[0], data.samples.labels[0]
    right = explorer.edge_error_overlay(rgb, label, label, width=3)
    assert not (right == (230, 30, 30)).all(axis=-1).any() and (right == (40, 200, 40)).all(axis=-1).any()
    wrong = explorer.edge_error_overlay(rgb, (label + 1) % len(data.samples.class_names), label, width=3)
    assert ((wrong == (230, 30, 30)).all(axis=-1) == (right == (40, 200, 40)).all(axis=-1)).all()


def test_widget_shows_its_figure_and_redraws_it_when_a_control_changes(data):
    figures_before = _pylab_helpers.Gcf.get_num_fig_managers()
    widget = explorer.Explorer(data)
    assert "kdlab-explorer" in widget._dom_classes and "kdlab-explorer-image" in widget.image._dom_classes
    assert list(widget.controls) == ["image", "model", "overlay", "CAM class", "band width"]
    assert bytes(widget.image.value).startswith(b"\x89PNG")  # shown at once, before any change
    assert list(widget.controls["model"].options) == ["teacher", "other"]
    assert list(widget.controls["CAM class"].options) == data.samples.class_names
    changes = [("image", 1), ("model", "other"), ("overlay", "edges"), ("band width", 2), ("overlay", "CAM"),
               ("CAM class", data.samples.class_names[0]), ("overlay", "entropy")]
    for description, value in changes:
        before = bytes(widget.image.value)
        widget.controls[description].value = value
        assert bytes(widget.image.value) != before, description
        assert bytes(widget.image.value) == widget.render(), description
    fig = widget.figure()
    assert fig.axes[2].get_title() == "other: entropy" and fig.texts[0].get_text() == "Validation image 1"
    assert _pylab_helpers.Gcf.get_num_fig_managers() == figures_before  # no pyplot figure kept
