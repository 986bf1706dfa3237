"""Analysis math of BPKD Sec. 1–4 (Figs. 1, 2, 4) and of the result tables: tensors in, tensors out.

- first-layer feature entropy (BPKD Fig. 1): `first_layer_entropy`, `entropy_summary`;
- class activation maps (BPKD Fig. 4): `class_activation_map` (HiResCAM / Grad-CAM);
- boundaries (BPKD Fig. 2): `edge_masks`, `decoupled_logits`;
- scores over seeds and classes: `mean_std_over_seeds`, `gains_over`;
- learning curves (issue 15's convergence rule): `late_gain`.

Nothing here reads runs or draws: `kdlab.inspection` feeds these from trained runs and
`kdlab.plots` draws what they return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.losses.functional import bpkd_edge_masks
from kdlab.data import IGNORE_INDEX

CAM_METHODS = {"hirescam": "HiResCAM", "gradcam": "GradCAM"}  # grad-cam's classes, imported when used (~1 s)


# ---------------------------------------------------------------- entropy (BPKD Fig. 1)


def first_layer_entropy(features: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy ``−Σ_c p ln p`` of ``p = softmax_c(F)`` (METHODS.md 6, BPKD Fig. 1).

    ``features``: float N×C×H×W output of the first convolution block; returns N×H×W
    on the input's device, in nats (between 0 and ln C).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or not features.is_floating_point():
        raise ValueError(f"features must be a float N×C×H×W tensor, got {getattr(features, 'shape', features)}")
    log_p = F.log_softmax(features, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_summary(entropy: torch.Tensor, band: torch.Tensor) -> dict:
    """Mean entropy over all pixels and over the trimap band (NaN when the band is empty).

    ``band`` (bool N×H×W, from ``kdlab.metrics.trimap_band``) is resized to the entropy
    map's size by nearest neighbour when the two differ.
    """
    if entropy.dim() != 3:
        raise ValueError(f"entropy must be an N×H×W map, got shape {tuple(entropy.shape)}")
    if band.dim() != 3 or band.dtype != torch.bool or band.shape[0] != entropy.shape[0]:
        raise ValueError(f"band must be a bool N×H×W mask with N={entropy.shape[0]}, got {tuple(band.shape)}")
    if band.shape != entropy.shape:
        band = F.interpolate(band[:, None].float(), size=entropy.shape[-2:], mode="nearest")[:, 0] > 0.5
    band = band.to(entropy.device)
    return {
        "mean_all": entropy.mean().item(),
        "mean_band": ((entropy * band).sum() / band.sum()).item(),
    }


# ---------------------------------------------------------------- class activation maps (BPKD Fig. 4)


def class_activation_map(
    model: torch.nn.Module,
    images: torch.Tensor,
    target_layer: torch.nn.Module,
    category: int,
    method: str = "hirescam",
    mask: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """N×H×W CAM in [0, 1] of ``category`` at ``target_layer`` (HiResCAM by default, METHODS.md 6).

    The target is the sum of the class logit over ``mask`` (bool N×H×W at the output
    size); by default the model's own predicted region of the class (argmax == category).
    ``model`` must return one N×C×H×W tensor. The model's train/eval mode is restored.
    """
    import pytorch_grad_cam

    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {sorted(CAM_METHODS)}, got {method!r}")
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    images = images.to(next(model.parameters()).device)
    was_training = model.training
    try:
        model.eval()
        targets = _segmentation_targets(model, images, category, mask)
        with cam_class(model=model, target_layers=[target_layer]) as cam, torch.enable_grad():
            maps = cam(input_tensor=images, targets=targets)
    finally:
        model.train(was_training)
    # grad-cam's __exit__ swallows IndexError; ``maps`` is then unbound and this line raises.
    return maps


def _segmentation_targets(model, images, category, mask) -> list:
    """One grad-cam target per image: the ``category`` logit summed over ``mask`` or the predicted region."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with torch.no_grad():
        logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise ValueError("model must return one N×C×H×W tensor of logits")
    if not 0 <= category < logits.shape[1]:
        raise ValueError(f"category must be in [0, {logits.shape[1]}), got {category}")
    if mask is None:
        mask = logits.argmax(dim=1) == category
    mask = torch.as_tensor(mask).detach().cpu().numpy().astype(np.float32)
    expected_shape = (logits.shape[0], *logits.shape[2:])
    if mask.shape != expected_shape:
        raise ValueError(f"mask must have shape N×H×W = {expected_shape}, got {mask.shape}")
    return [SemanticSegmentationTarget(category, region) for region in mask]


# ---------------------------------------------------------------- boundaries (BPKD Fig. 2)


def edge_masks(labels: torch.Tensor, num_classes: int, out_size: Sequence[int], edge_width: int = 7,
               ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """BPKD Sec. 3.2 GT edge masks: binary N×C×H×W at the label size and the average-pooled soft
    ``M_E`` (N×C×h×w at ``out_size``, the logit size)."""
    binary = bpkd_edge_masks(labels, num_classes, tuple(labels.shape[-2:]), edge_width, ignore_index)
    return binary, bpkd_edge_masks(labels, num_classes, tuple(out_size), edge_width, ignore_index)


def decoupled_logits(logits: torch.Tensor, soft_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BPKD's decoupling of N×C×h×w logits Z (Fig. 2a) shown as max-logit maps: the edge part
    ``max_c Z ⊙ M_E`` and the body part ``max_c Z ⊙ (1 − max_c M_E)`` (Eq. 4), each N×h×w."""
    if logits.shape != soft_masks.shape:
        raise ValueError(f"soft_masks must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(soft_masks.shape)}")
    body_mask = 1 - soft_masks.amax(dim=1, keepdim=True)
    return (logits * soft_masks).amax(dim=1), (logits * body_mask).amax(dim=1)


# ---------------------------------------------------------------- scores over seeds and classes


def mean_std_over_seeds(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over the first axis (seeds) of JSON numbers (None for NaN), ignoring NaN:
    NaN where no value is finite, and the std NaN where fewer than two are, as in
    `kdlab.pipeline.summary_rows`."""
    values = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    zeroed = np.where(finite, values, 0.0)
    mean = np.where(counts > 0, zeroed.sum(axis=0) / np.maximum(counts, 1), np.nan)
    squares = np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0)
    return mean, np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), np.nan)


def gains_over(rows: Sequence[Mapping], reference: str = "baseline",
               exclude: Sequence[str] = ("teacher",)) -> list[dict]:
    """Per-class gain of every label of a per-class table (rows {"class", <label>: score}) over
    ``reference`` (``exclude`` left out)."""
    if not rows or reference not in rows[0]:
        raise ValueError(f"reference: no column {reference!r} in rows")
    labels = [k for k in rows[0] if k not in ("class", reference, *exclude)]
    return [{"class": row["class"], **{label: row[label] - row[reference] for label in labels}} for row in rows]


# ---------------------------------------------------------------- learning curves


def late_gain(iterations: Sequence[int], values: Sequence[float], fraction: float = 0.25) -> float:
    """What a curve gained over the last ``fraction`` of its iterations: the final value minus the
    value at the last evaluation at or before ``(1 − fraction) × final iteration``. A schedule has
    plateaued when the baseline's late gain (mIoU) is under 1 point (issue 15)."""
    iterations, values = np.asarray(iterations, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if iterations.ndim != 1 or iterations.shape != values.shape or len(iterations) < 2:
        raise ValueError(f"iterations and values must be two 1-D sequences of one length >= 2, got "
                         f"{iterations.shape} and {values.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    earlier = np.flatnonzero(iterations <= (1 - fraction) * iterations[-1])
    if not len(earlier):
        raise ValueError(f"no evaluation at or before {(1 - fraction):.0%} of iteration {iterations[-1]:g}")
    return float(values[-1] - values[earlier[-1]])
