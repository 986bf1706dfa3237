"""Notebook 08's explorer, and its figure `explorer_snapshot`.

`Explorer` is an ipywidgets box: controls for the validation image, the model, the overlay
(its prediction, its trimap-band errors, its first-layer entropy or its HiResCAM), the CAM
class and the error band's width, over an `ipywidgets.Image` showing `explorer_figure` as
PNG bytes. Every change of a control renders a fresh figure (no pyplot, so none is kept);
JupyterLab shows the image widget as it is updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np
import torch

from kdlab.analysis import class_activation_map
from kdlab.data import IGNORE_INDEX
from kdlab.inspection import Samples, class_index, entropy_maps, last_encoder_block, predictions
from kdlab.metrics import DEFAULT_BAND_WIDTH, trimap_band
from kdlab.models.zoo import SegModel
from kdlab.plots._common import (NotebookFigure, class_patches, colorize, figure_bytes, hide_ticks, new_figure,
                                 overlay_boundaries, resize_map)

OVERLAYS = ("prediction", "edges", "entropy", "CAM")
MAX_BAND_WIDTH = 20


@dataclass
class ExplorerData:
    """What the explorer shows: the samples, and per model its predictions and first-layer entropy
    (computed once) and its CAM of each class (computed when first shown, then kept)."""

    samples: Samples
    models: dict[str, SegModel]
    predictions: dict[str, torch.Tensor]
    entropy: dict[str, torch.Tensor]
    cam_class: str
    cams: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def cam(self, model: str, class_name: str) -> np.ndarray:
        """N×H×W HiResCAM of ``class_name`` for ``model`` at its last encoder block."""
        key = (model, class_name)
        if key not in self.cams:
            category = class_index(self.samples.class_names, class_name)
            net = self.models[model]
            self.cams[key] = class_activation_map(net, self.samples.images, last_encoder_block(net), category)
        return self.cams[key]


def explorer_data(models: Mapping[str, SegModel], samples: Samples, cam_class: str | None = None) -> ExplorerData:
    """Predictions and entropy maps of every model on ``samples``; ``cam_class`` (default: the first
    class) is the CAM class shown first."""
    cam_class = samples.class_names[0] if cam_class is None else cam_class
    class_index(samples.class_names, cam_class)
    return ExplorerData(samples, dict(models), predictions(models, samples.images),
                        entropy_maps(models, samples.images), cam_class)


def edge_error_overlay(rgb: np.ndarray, pred, label, width: int = DEFAULT_BAND_WIDTH,
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The image in grey with the trimap-band pixels (``width`` px) green where ``pred`` is right
    and red where it is wrong."""
    pred, label = torch.as_tensor(np.asarray(pred))[None], torch.as_tensor(np.asarray(label))[None]
    band = trimap_band(label, width, ignore_index)[0].numpy()
    correct = (pred == label)[0].numpy()
    grey = np.repeat(rgb.mean(axis=-1, keepdims=True), 3, axis=-1) * 0.6
    colour = np.where(correct[..., None], (40, 200, 40), (230, 30, 30))
    return np.where(band[..., None], colour, grey).astype(np.uint8)


def explorer_figure(data: ExplorerData, index: int = 0, model: str | None = None, overlay: str = "prediction",
                    cam_class: str | None = None, band_width: int = DEFAULT_BAND_WIDTH) -> NotebookFigure:
    """One view of the explorer: the image, its ground truth, and ``overlay`` (one of OVERLAYS) for
    ``model`` (default: the first); the CAM is of ``cam_class`` (default: ``data.cam_class``), the
    error band ``band_width`` px wide. The legend names every class."""
    samples = data.samples
    model = next(iter(data.predictions)) if model is None else model
    cam_class = data.cam_class if cam_class is None else cam_class
    if model not in data.predictions:
        raise ValueError(f"model must be one of {list(data.predictions)}, got {model!r}")
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
    if not 0 <= index < len(samples.rgb):
        raise ValueError(f"index must be in [0, {len(samples.rgb)}), got {index}")
    rgb, label, pred = samples.rgb[index], samples.labels[index], data.predictions[model][index]
    fig, axes = new_figure(1, 3, width=3.0, height=3.0)
    axes[0, 0].imshow(rgb)
    axes[0, 1].imshow(colorize(label, samples.palette, samples.ignore_index))
    view, title = axes[0, 2], f"{model}: {overlay}"
    if overlay == "prediction":
        view.imshow(overlay_boundaries(rgb, pred, samples.palette, ignore_index=samples.ignore_index))
    elif overlay == "edges":
        view.imshow(edge_error_overlay(rgb, pred, label, band_width, samples.ignore_index))
        title += f" ({band_width} px band:\ngreen right, red wrong)"
    else:
        entropy = overlay == "entropy"
        values = data.entropy[model][index] if entropy else data.cam(model, cam_class)[index]
        view.imshow(rgb)
        scale = {"cmap": "magma"} if entropy else {"cmap": "jet", "vmin": 0.0, "vmax": 1.0}
        shown = view.imshow(resize_map(values, rgb.shape[:2]), alpha=0.55, **scale)
        fig.colorbar(shown, ax=view, shrink=0.8, label="nats" if entropy else f"CAM of {cam_class}")
    for ax, name in zip(axes[0], ("Image", "Ground truth", title)):
        ax.set_title(name, fontsize="small")
        hide_ticks(ax)
    fig.legend(handles=class_patches(samples.class_names, samples.palette), loc="outside lower center",
               ncols=min(len(samples.class_names), 6), fontsize="small", frameon=False)
    fig.suptitle(f"Validation image {index}")
    return fig


class Explorer(widgets.VBox):
    """The live explorer: display it in a notebook. ``controls`` maps each control's description
    ("image", "model", "overlay", "CAM class", "band width") to its widget; the figure is the
    ``kdlab-explorer-image`` Image widget inside this ``kdlab-explorer`` box."""

    def __init__(self, data: ExplorerData):
        style = {"description_width": "initial"}
        controls = [
            widgets.Dropdown(options=[(str(i), i) for i in range(len(data.samples.rgb))], value=0,
                             description="image", style=style),
            widgets.Dropdown(options=list(data.predictions), description="model", style=style),
            widgets.Dropdown(options=OVERLAYS, value="prediction", description="overlay", style=style),
            widgets.Dropdown(options=data.samples.class_names, value=data.cam_class, description="CAM class",
                             style=style),
            widgets.IntSlider(value=DEFAULT_BAND_WIDTH, min=1, max=MAX_BAND_WIDTH, description="band width",
                              continuous_update=False, style=style),
        ]
        image = widgets.Image(format="png")
        image.add_class("kdlab-explorer-image")
        super().__init__([widgets.HBox(controls[:3]), widgets.HBox(controls[3:]), image])
        self.add_class("kdlab-explorer")
        self.explorer_data, self.image = data, image
        self.controls = {control.description: control for control in controls}
        for control in controls:
            control.observe(self.redraw, names="value")
        self.redraw()

    def figure(self) -> NotebookFigure:
        """A new figure of the current view."""
        c = self.controls
        return explorer_figure(self.explorer_data, c["image"].value, c["model"].value, c["overlay"].value,
                               c["CAM class"].value, c["band width"].value)

    def render(self) -> bytes:
        """The current view as PNG bytes, of one size for every view (the figure is dropped once rendered)."""
        return figure_bytes(self.figure(), tight=False)

    def redraw(self, _change=None) -> None:
        self.image.value = self.render()
