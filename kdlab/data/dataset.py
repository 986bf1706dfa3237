"""Datasets in the layout contract shared by the embedded benchmark and real-dataset loaders::

    <root>/dataset.yaml              name, num_classes, class_names, palette, ignore_index
    <root>/<split>/images/<id>.png   RGB uint8
    <root>/<split>/labels/<id>.png   uint8 class indices, 255 = ignore
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdlab.config import read_yaml
from kdlab.errors import DataError

LAYOUT = "{root}/dataset.yaml, {root}/<split>/images/<id>.png, {root}/<split>/labels/<id>.png"
_META_KEYS = ("name", "num_classes", "class_names", "palette", "ignore_index")


def read_meta(root: Path) -> dict:
    path = root / "dataset.yaml"
    if not path.is_file():
        raise DataError(f"dataset root '{root}' not found or incomplete; expected {LAYOUT.format(root=root)}")
    meta = read_yaml(path, error=DataError)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}")
    return meta


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if mode == "L" and image.mode not in ("L", "P"):
                raise DataError(f"{path}: label maps must be single-channel PNGs, got mode {image.mode}")
            return np.asarray(image.convert(mode) if mode == "RGB" else image)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: unreadable image ({err.__class__.__name__})") from err


class TransformedItems:
    """``dataset[i]`` / ``dataset[i, seed]``: ``load(i)`` through ``transform``, which draws from a
    generator seeded per sample (see `kdlab.engine.IterationBatches`), as ``{"image", "label", "id"}``."""

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(index)
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        return {"image": image, "label": label, "id": self.ids[index]}


class SegmentationFolder(TransformedItems):
    """A split of a dataset in the layout contract; items are dicts with image, label and id.

    An item key is an index, or an (index, seed) pair whose seed fixes the random augmentation.
    Labels are checked on load: a value ≥ num_classes that is not the ignore index is an error.
    """

    def __init__(self, root: str | Path, split: str, transform=None):
        self.root, self.split, self.transform = Path(root), split, transform
        self.meta = read_meta(self.root)
        self.num_classes = int(self.meta["num_classes"])
        self.ignore_index = int(self.meta["ignore_index"])
        image_dir, label_dir = self.root / split / "images", self.root / split / "labels"
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DataError(f"split '{split}' not found in '{self.root}'; expected {LAYOUT.format(root=self.root)}")
        images = {p.stem: p for p in image_dir.glob("*.png")}
        labels = {p.stem: p for p in label_dir.glob("*.png")}
        for stem in sorted(set(images) ^ set(labels)):
            orphan = images.get(stem) or labels[stem]
            other = "label" if stem in images else "image"
            raise DataError(f"{orphan}: no matching {other} file")
        if not images:
            raise DataError(f"{image_dir}: no images")
        self.ids = sorted(images)
        self._images, self._labels = images, labels

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 image (H×W×3) and label (H×W), checked."""
        item = self.ids[index]
        image = _read_png(self._images[item], "RGB")
        label = _read_png(self._labels[item], "L")
        if image.shape[:2] != label.shape:
            raise DataError(f"{self._labels[item]}: label size {label.shape} differs from image size {image.shape[:2]}")
        bad = np.unique(label[(label >= self.num_classes) & (label != self.ignore_index)])
        if bad.size:
            raise DataError(f"{self._labels[item]}: label value {int(bad[0])} is not a class "
                            f"(0..{self.num_classes - 1}) or ignore ({self.ignore_index})")
        return image, label

    def size(self, index: int) -> tuple[int, int]:
        """(H, W) of an image, from its header (no decoding)."""
        with Image.open(self._images[self.ids[index]]) as image:
            width, height = image.size
        return height, width

