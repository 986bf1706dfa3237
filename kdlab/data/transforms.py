"""Paired image/label transforms for training and evaluation.

Every random transform draws from the `numpy.random.Generator` passed to it, so a sample's
augmentation is fixed by its seed (see `kdlab.engine.IterationBatches`): resumed runs and runs
with any number of workers see identical batches.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from kdlab.data.synthetic import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale:
    """Resize by a factor drawn uniformly from [low, high] (bilinear image, nearest label)."""

    def __init__(self, low: float = 0.5, high: float = 2.0):
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        factor = rng.uniform(self.low, self.high)
        h, w = label.shape
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        if size == (h, w):
            return image, label
        pil_size = (size[1], size[0])
        image = Image.fromarray(np.ascontiguousarray(image)).resize(pil_size, Image.Resampling.BILINEAR)
        label = Image.fromarray(np.ascontiguousarray(label)).resize(pil_size, Image.Resampling.NEAREST)
        return np.asarray(image), np.asarray(label)


class RandomCrop:
    """Crop `size`×`size` at a random position, padding image with 0 and label with ignore if smaller."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        h, w = label.shape
        pad_h, pad_w = max(self.size - h, 0), max(self.size - w, 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
            h, w = label.shape
        top = int(rng.integers(0, h - self.size + 1))
        left = int(rng.integers(0, w - self.size + 1))
        window = (slice(top, top + self.size), slice(left, left + self.size))
        return image[window], label[window]


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label


class ToTensor:
    """uint8 H×W×3 → normalised float32 3×H×W; label → int64 H×W."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        img = torch.tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return (img - self.mean) / self.std, torch.tensor(np.ascontiguousarray(label), dtype=torch.long)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label, rng: np.random.Generator):
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label


def train_transform(crop_size: int, scale: tuple[float, float] = (0.5, 2.0)) -> Compose:
    return Compose([RandomScale(*scale), RandomCrop(crop_size), RandomHorizontalFlip(), ToTensor()])


def eval_transform() -> Compose:
    return Compose([ToTensor()])


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised 3×H×W tensor back to uint8 H×W×3 for display."""
    img = image.detach().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
