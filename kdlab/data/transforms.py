"""Paired image/label transforms for training and evaluation.

Every random transform draws from the `numpy.random.Generator` passed to it, so a sample's
augmentation is fixed by its seed (see `kdlab.engine.IterationBatches`): resumed runs and runs
with any number of workers see identical batches.

Two training pipelines (`train_transform`):

* kdlab's default (every paper option off): scale by a factor of the image, crop (padding image
  with 0 and label with ignore first), flip.
* mmseg's paper-scale pipeline (``base_size``, ``cat_max_ratio`` < 1 or ``photometric``), in
  mmseg's order: `RandomResize` to a base scale × a ratio (keep ratio), `RandomCrop` with
  ``cat_max_ratio`` (no padding yet), flip, `PhotoMetricDistortion`, normalisation, then `PadTo`
  the crop size with 0 (the mean colour after normalisation) and ignore, as mmseg's data
  preprocessor pads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdlab.data.synthetic import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """A size given as one side or as [height, width], as (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def keep_ratio_size(size: tuple[int, int], scale: Sequence[int]) -> tuple[int, int]:
    """(H, W) of an image of ``size`` rescaled as large as fits in ``scale`` = [long, short] with its
    aspect ratio kept (mmcv's ``imrescale``: the long side ≤ max(scale), the short side ≤ min(scale))."""
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """Image (bilinear) and label (nearest) resized to ``size`` = (H, W)."""
    if size == label.shape:
        return image, label
    pil_size = (size[1], size[0])
    image = Image.fromarray(np.ascontiguousarray(image)).resize(pil_size, Image.Resampling.BILINEAR)
    label = Image.fromarray(np.ascontiguousarray(label)).resize(pil_size, Image.Resampling.NEAREST)
    return np.asarray(image), np.asarray(label)


class RandomScale:
    """Resize by a factor drawn uniformly from [low, high] (bilinear image, nearest label)."""

    def __init__(self, low: float = 0.5, high: float = 2.0):
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        factor = rng.uniform(self.low, self.high)
        h, w = label.shape
        return resize_pair(image, label, (max(1, round(h * factor)), max(1, round(w * factor))))


class RandomResize:
    """mmseg's ``RandomResize(scale=base_size, ratio_range=(low, high), keep_ratio=True)``: a ratio
    drawn uniformly from [low, high] scales the base scale [long, short], and the image is resized
    as large as fits in it with its aspect ratio kept (bilinear image, nearest label)."""

    def __init__(self, base_size: Sequence[int], low: float = 0.5, high: float = 2.0):
        self.base_size = tuple(int(v) for v in base_size)
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        ratio = rng.uniform(self.low, self.high)
        scale = (int(self.base_size[0] * ratio), int(self.base_size[1] * ratio))
        return resize_pair(image, label, keep_ratio_size(label.shape, scale))


class RandomCrop:
    """Crop ``size`` (a side or (height, width)) at a random position.

    With ``cat_max_ratio`` < 1 (mmseg's RandomCrop), a crop in which one class covers
    ``cat_max_ratio`` or more of the valid (non-ignore) pixels, or that holds fewer than two
    classes, is drawn again, up to ``max_tries`` (10) times; the last draw is then kept unchecked.
    A side larger than the image keeps the whole side; with ``pad`` the crop is then padded at the
    bottom and right (image 0, label ignore) to ``size``, else it stays smaller (see `PadTo`).
    """

    def __init__(self, size: int | Sequence[int], cat_max_ratio: float = 1.0, pad: bool = True,
                 ignore_index: int = IGNORE_INDEX, max_tries: int = 10):
        self.size = as_pair(size)
        self.cat_max_ratio, self.pad, self.ignore_index, self.max_tries = cat_max_ratio, pad, ignore_index, max_tries

    def _window(self, h: int, w: int, rng: np.random.Generator) -> tuple[slice, slice]:
        crop_h, crop_w = self.size
        top = int(rng.integers(0, max(h - crop_h, 0) + 1))
        left = int(rng.integers(0, max(w - crop_w, 0) + 1))
        return slice(top, top + crop_h), slice(left, left + crop_w)

    def diverse(self, label: np.ndarray) -> bool:
        """Whether a crop's label passes the ``cat_max_ratio`` test."""
        values, counts = np.unique(label, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        h, w = label.shape
        window = self._window(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self.diverse(label[window]):
                    break
                window = self._window(h, w, rng)
        image, label = image[window], label[window]
        if self.pad:
            pad_h, pad_w = self.size[0] - label.shape[0], self.size[1] - label.shape[1]
            if pad_h or pad_w:
                image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
                label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return image, label


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label


def _hue(rgb: np.ndarray, value: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The HSV hue in degrees [0, 360) of float32 RGB, given its max (V) and max − min."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(delta, np.float32(1e-12))
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(delta > 0, (hue * np.float32(60)) % np.float32(360), np.float32(0))


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """float32 RGB of H in degrees, S in [0, 1], V in [0, 255]: channel n of (R, G, B) = (5, 3, 1) is
    V − V·S·clip(min(k, 4 − k), 0, 1) with k = (n + H / 60) mod 6."""
    sixth = hue / np.float32(60)
    chroma = value * saturation
    channels = []
    for n in (5, 3, 1):
        k = (sixth + n) % 6
        channels.append(value - chroma * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, -1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """mmseg's ``convert``: clipped to [0, 255], then truncated to uint8."""
    return np.clip(image, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image, each step with probability 1/2, in its order:
    brightness (+β, β ~ U(−32, 32)); contrast (×α, α ~ U(0.5, 1.5)) here or after hue (one draw picks);
    saturation (S ×α, α ~ U(0.5, 1.5), clipped); hue (+2k degrees, k an integer in [−18, 18), as
    OpenCV's 180-step hue and numpy's ``randint`` give mmseg). HSV is computed in floating point
    (mmseg rounds through OpenCV's uint8 HSV); every step ends in uint8 as mmseg's does."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range, self.hue_delta = contrast_range, saturation_range, hue_delta

    def brightness(self, image, rng):
        if rng.integers(2):
            image = _to_uint8(image.astype(np.float32) + rng.uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def contrast(self, image, rng):
        if rng.integers(2):
            image = _to_uint8(image.astype(np.float32) * rng.uniform(*self.contrast_range))
        return image

    def saturation(self, image, rng):
        if rng.integers(2):
            alpha = np.float32(rng.uniform(*self.saturation_range))
            # S × alpha, clipped to 1, at the same hue and value: every channel's distance below V scales
            # by S' / S = min(alpha, V / (V − min)).
            rgb = image.astype(np.float32)
            value = rgb.max(-1, keepdims=True)
            delta = value - rgb.min(-1, keepdims=True)
            ratio = np.minimum(alpha, value / np.maximum(delta, np.float32(1e-12)))
            image = _to_uint8(np.round(value - (value - rgb) * ratio))
        return image

    def hue(self, image, rng):
        if rng.integers(2):
            shift = np.float32(2 * int(rng.integers(-self.hue_delta, self.hue_delta)))
            rgb = image.astype(np.float32)
            value = rgb.max(-1)
            delta = value - rgb.min(-1)
            saturation = delta / np.maximum(value, np.float32(1e-12))
            hue = (_hue(rgb, value, delta) + shift) % np.float32(360)
            image = _to_uint8(np.round(_hsv_to_rgb(hue, saturation, value)))
        return image

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        image = self.brightness(np.ascontiguousarray(image), rng)
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            image = self.contrast(image, rng)
        image = self.hue(self.saturation(image, rng), rng)
        if not contrast_first:
            image = self.contrast(image, rng)
        return image, label


class ToTensor:
    """uint8 H×W×3 → normalised float32 3×H×W; label → int64 H×W."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        img = torch.tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return (img - self.mean) / self.std, torch.tensor(np.ascontiguousarray(label), dtype=torch.long)


class PadTo:
    """Pad a normalised image tensor (with 0, the mean colour) and its label (with ignore) at the bottom
    and right to at least ``size`` (a side or (height, width)), as mmseg's data preprocessor does."""

    def __init__(self, size: int | Sequence[int], ignore_index: int = IGNORE_INDEX):
        self.size, self.ignore_index = as_pair(size), ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        pad_h, pad_w = max(self.size[0] - label.shape[-2], 0), max(self.size[1] - label.shape[-1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, label


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label, rng: np.random.Generator):
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label


def train_transform(crop_size: int | Sequence[int], scale: tuple[float, float] = (0.5, 2.0),
                    base_size: Sequence[int] | None = None, cat_max_ratio: float = 1.0,
                    photometric: bool = False) -> Compose:
    """The training augmentation. With every paper option off (``base_size`` None, ``cat_max_ratio``
    1, ``photometric`` off) kdlab's default; else mmseg's pipeline (see the module docstring), with
    ``scale`` as its ratio range and ``base_size`` = [long, short] (None: the ratio scales the image)."""
    if base_size is None and cat_max_ratio >= 1.0 and not photometric:
        return Compose([RandomScale(*scale), RandomCrop(crop_size), RandomHorizontalFlip(), ToTensor()])
    resize = RandomResize(base_size, *scale) if base_size is not None else RandomScale(*scale)
    steps = [resize, RandomCrop(crop_size, cat_max_ratio, pad=False), RandomHorizontalFlip()]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return Compose([*steps, ToTensor(), PadTo(crop_size)])


def eval_transform() -> Compose:
    return Compose([ToTensor()])


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised 3×H×W tensor back to uint8 H×W×3 for display."""
    img = image.detach().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
