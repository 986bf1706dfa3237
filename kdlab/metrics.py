"""Segmentation metrics: confusion matrix, mIoU / mAcc / aAcc and trimap (boundary band) scores.

Follows METHODS.md section 6: one confusion matrix over the whole split (rows: label,
columns: prediction), ignore index 255, classes absent from both prediction and label
reported as NaN and left out of the means; the trimap band of width ``w`` is the set of
pixels within chessboard distance ``< w`` of a label boundary (BPKD Sec. 4, DeepLab's
trimap), never containing ignore pixels. Metrics are fractions in [0, 1]; a metric over
an empty set is NaN.
"""

from collections.abc import Sequence

import torch

from kdlab.morphology import dilate

DEFAULT_WIDTHS = (1, 2, 3, 5, 7, 10, 15, 20)
DEFAULT_BAND_WIDTH = 7


def _check_label_map(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
        raise ValueError(f"{name} must be an N×H×W tensor, got {getattr(tensor, 'shape', type(tensor))}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")


def _check_pred_label(pred: torch.Tensor, label: torch.Tensor) -> None:
    _check_label_map(pred, "pred")
    _check_label_map(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")


def _valid_pixels(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Checks the class indices of ``pred`` and ``label`` and returns the non-ignore mask."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _check_pred_label(pred, label)
    valid = label != ignore_index
    if bool((valid & ((label < 0) | (label >= num_classes))).any()):
        raise ValueError(f"label holds values outside [0, {num_classes}) that are not ignore_index={ignore_index}")
    if bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"pred holds values outside [0, {num_classes})")
    return valid


def _count_pairs(pred: torch.Tensor, label: torch.Tensor, num_classes: int, keep: torch.Tensor) -> torch.Tensor:
    """C×C int64 counts of (label, pred) pairs over the pixels where ``keep`` is True.

    Pixels not kept go to one extra trash bin instead of being indexed out, so that
    counting never waits for the device (no boolean indexing).
    """
    trash_bin = num_classes * num_classes
    pairs = torch.where(keep, label.long() * num_classes + pred.long(), trash_bin)
    counts = torch.bincount(pairs.flatten(), minlength=trash_bin + 1)
    return counts[:trash_bin].reshape(num_classes, num_classes)


def confusion_matrix(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """C×C int64 confusion matrix (rows: label, columns: prediction) on the input's device.

    Ignore pixels are not counted; ``mask`` (bool N×H×W, optional) further restricts the
    counted pixels. Raises ValueError for label values outside [0, C) other than
    ``ignore_index`` and for predictions outside [0, C).
    """
    keep = _valid_pixels(pred, label, num_classes, ignore_index)
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != label.shape:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(label.shape)}")
        keep = keep & mask
    return _count_pairs(pred, label, num_classes, keep)


def scores_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU / Acc of a confusion matrix (rows: label).

    Per-class IoU is NaN for a class absent from both label and prediction; per-class
    accuracy (recall) is NaN for a class absent from the label. NaN classes are left out
    of the means; an empty matrix gives NaN everywhere.
    """
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square C×C matrix, got shape {tuple(cm.shape)}")
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise ValueError(f"class_names has {len(class_names)} names for {cm.shape[0]} classes")
    cm = cm.detach().to("cpu", torch.float64)
    true_positives = cm.diagonal()
    label_totals = cm.sum(dim=1)
    pred_totals = cm.sum(dim=0)
    # 0 / 0 is NaN in tensor division: absent classes become NaN without a special case.
    iou = true_positives / (label_totals + pred_totals - true_positives)
    acc = true_positives / label_totals
    return {
        "mIoU": iou.nanmean().item(),
        "mAcc": acc.nanmean().item(),
        "aAcc": (true_positives.sum() / cm.sum()).item(),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
        "classes": list(class_names) if class_names is not None else [str(c) for c in range(cm.shape[0])],
    }


def _boundary_pixels(label: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixels with a 4-neighbour holding a valid label different from their own.

    Ignore pixels next to a valid pixel count, so void rings seed the band (METHODS.md 6).
    """
    valid = label != ignore_index
    boundary = torch.zeros_like(valid)
    differs = label[:, :, 1:] != label[:, :, :-1]  # horizontal neighbour pairs
    boundary[:, :, :-1] |= differs & valid[:, :, 1:]
    boundary[:, :, 1:] |= differs & valid[:, :, :-1]
    differs = label[:, 1:, :] != label[:, :-1, :]  # vertical neighbour pairs
    boundary[:, :-1, :] |= differs & valid[:, 1:, :]
    boundary[:, 1:, :] |= differs & valid[:, :-1, :]
    return boundary


def _dilate(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within chessboard distance < width of ``mask``: a (2w−1)×(2w−1) max filter."""
    return dilate(mask.bool(), 2 * width - 1)


def relative_width(fraction: float, height: int) -> int:
    """The band width in pixels of ``fraction`` of an image ``height`` px tall: round(f × H), at least 1
    (the papers' 7 px at 1024 px is f = 7/1024: 1 px at 128 px)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
    return max(1, round(fraction * height))


def trimap_band(label: torch.Tensor, width: int, ignore_index: int = 255) -> torch.Tensor:
    """Bool N×H×W trimap band of ``width``: boundary pixels dilated by a (2w−1) square, minus ignore."""
    _check_label_map(label, "label")
    _check_width(width)
    return _dilate(_boundary_pixels(label, ignore_index), width) & (label != ignore_index)


def trimap_miou(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, width: int, ignore_index: int = 255
) -> float:
    """mIoU restricted to the trimap band of ``width`` (NaN if the band is empty)."""
    band = trimap_band(label, width, ignore_index)
    return scores_from_confusion(confusion_matrix(pred, label, num_classes, ignore_index, mask=band))["mIoU"]


def edge_pixel_accuracy(pred: torch.Tensor, label: torch.Tensor, width: int, ignore_index: int = 255) -> float:
    """Pixel accuracy restricted to the trimap band of ``width`` (NaN if the band is empty)."""
    _check_pred_label(pred, label)
    band = trimap_band(label, width, ignore_index)
    correct = (band & (pred.long() == label.long())).sum()
    return (correct / band.sum()).item()


class SegmentationMeter:
    """Accumulates whole-image, trimap-band and body confusion matrices over a split, on the device.

    ``update`` counts one batch: the whole image, the band of every width in ``widths``
    (the label boundary is found once and dilated per width) and the body, i.e. the
    valid pixels outside the band of ``band_width``. ``relative_widths`` are bands given as
    fractions of the label height, `relative_width` px in each batch (batches hold one image
    size), scored as ``trimap_relative_curve`` (fraction → mIoU). ``compute`` turns the sums into scores.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        band_width: int = DEFAULT_BAND_WIDTH,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        relative_widths: Sequence[float] = (),
    ):
        for width in (*widths, band_width):
            _check_width(width)
        for fraction in relative_widths:
            relative_width(fraction, 1)  # checks it
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.num_classes = num_classes
        self.widths = tuple(sorted(set(widths) | {band_width}))
        self.band_width = band_width
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.relative_widths = tuple(sorted(set(relative_widths)))
        self.reset()

    def reset(self) -> None:
        """Forgets every counted pixel."""
        classes = self.num_classes
        self.whole = torch.zeros(classes, classes, dtype=torch.int64)
        self.bands = torch.zeros(len(self.widths), classes, classes, dtype=torch.int64)
        self.body = torch.zeros(classes, classes, dtype=torch.int64)
        self.relative_bands = torch.zeros(len(self.relative_widths), classes, classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Adds one batch of integer N×H×W predictions and labels."""
        valid = _valid_pixels(pred, label, self.num_classes, self.ignore_index)
        device = label.device
        self.whole, self.bands, self.body = self.whole.to(device), self.bands.to(device), self.body.to(device)
        self.relative_bands = self.relative_bands.to(device)
        boundary = _boundary_pixels(label, self.ignore_index)
        self.whole += _count_pairs(pred, label, self.num_classes, valid)
        for index, width in enumerate(self.widths):
            band = _dilate(boundary, width) & valid
            self.bands[index] += _count_pairs(pred, label, self.num_classes, band)
            if width == self.band_width:
                self.body += _count_pairs(pred, label, self.num_classes, valid & ~band)
        for index, fraction in enumerate(self.relative_widths):
            band = _dilate(boundary, relative_width(fraction, label.shape[-2])) & valid
            self.relative_bands[index] += _count_pairs(pred, label, self.num_classes, band)

    def merge(self, reduce, device: torch.device | None = None) -> None:
        """Sums the counts of every process: ``reduce`` sums a tensor in place over the processes
        (e.g. ``torch.distributed.all_reduce``); the counts move to ``device`` first (NCCL: the GPU)."""
        for name in ("whole", "bands", "body", "relative_bands"):
            counts = getattr(self, name).to(device or getattr(self, name).device)
            reduce(counts)
            setattr(self, name, counts)

    def compute(self) -> dict:
        """Scores of everything counted since the last reset (fractions; NaN over empty sets)."""
        whole = scores_from_confusion(self.whole, self.class_names)
        band_scores = {width: scores_from_confusion(cm) for width, cm in zip(self.widths, self.bands)}
        band = band_scores[self.band_width]
        return {
            **whole,
            "trimap_mIoU": band["mIoU"],
            "edge_pixel_accuracy": band["aAcc"],
            "trimap_IoU": band["IoU"],
            "body_mIoU": scores_from_confusion(self.body)["mIoU"],
            "trimap_curve": {width: scores["mIoU"] for width, scores in band_scores.items()},
            "trimap_relative_curve": {fraction: scores_from_confusion(cm)["mIoU"]
                                      for fraction, cm in zip(self.relative_widths, self.relative_bands)},
        }
