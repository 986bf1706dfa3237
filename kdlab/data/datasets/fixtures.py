"""Tiny dataset trees in each real dataset's on-disk format, for tests and dry runs.

``write_fixture(name, root)`` writes, under ``root``, the folders a user gets by unpacking the
dataset (``root/VOCdevkit/VOC2012/...``, ``root/ADEChallengeData2016/...``, ...), with random
images of odd sizes (PNG or JPEG as the real dataset has them) and label maps that hold every
raw value of the dataset's value set, ignore and remapped values included. It returns the
dataset folder and what was written, so a test can check the decoded labels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kdlab.data.datasets.base import IGNORE_INDEX, voc_colormap
from kdlab.data.datasets.loaders import ADE20K, CamVid, Cityscapes, COCOStuff10k, PascalContext59

SIZES = ((23, 37), (31, 17), (19, 29))  # (H, W), used in turn


def raw_values(loader: type, lut: str = "default") -> np.ndarray:
    """Every raw label value the loader accepts."""
    return np.flatnonzero(loader.luts[lut] >= 0)


@dataclass
class Fixture:
    folder: Path  # the dataset folder; its parent ``root`` is accepted as well
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split → id → raw label written
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split → id → image written

    def ids(self, split: str) -> list[str]:
        return sorted(self.labels.get(split, {}))


class _Tree:
    def __init__(self, folder: Path, seed: int, sizes):
        self.fixture, self.rng, self.sizes, self.count = Fixture(folder), np.random.default_rng(seed), sizes, 0

    def _image(self, h, w):
        """Smooth random colour ramps (JPEG keeps them to within a few levels), with a little noise."""
        y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
        start, slope = self.rng.uniform(30, 120, (2, 3)), self.rng.uniform(-60, 60, (2, 3))
        image = start[0] + slope[0] * y[..., None] + slope[1] * x[..., None] + self.rng.normal(0, 2, (h, w, 3))
        return np.clip(image + start[1], 0, 255).round().astype(np.uint8)

    def pair(self, split, item_id, image_path: Path, label_path: Path, values, palette=None, border=False, raw=None):
        """Write one image and its label (an index PNG; a palette PNG when ``palette`` is given)."""
        if raw is None:
            h, w = self.sizes[self.count % len(self.sizes)]
            self.count += 1
            # every value at least once when the map is large enough, in random places
            raw = np.resize(self.rng.permutation(np.asarray(values)), h * w).reshape(h, w).astype(np.uint8)
            self.rng.shuffle(raw.reshape(-1))
            if border:  # VOC's 255 "void" outline
                raw[0, :] = raw[-1, :] = raw[:, 0] = raw[:, -1] = IGNORE_INDEX
            image = self._image(h, w)
        else:  # the same sample under a second label path (VOC's SegmentationClassAug)
            image = next(images[item_id] for images in self.fixture.images.values() if item_id in images)
        for path in (image_path, label_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        if not image_path.exists():
            options = {"quality": 95, "subsampling": 0} if image_path.suffix == ".jpg" else {}
            Image.fromarray(image).save(image_path, **options)
        label = Image.fromarray(raw)  # mode L: the raw values as grey levels
        if palette is not None:  # mode P: the same values as palette indices
            label.putpalette(palette.reshape(-1).tolist())
        label.save(label_path)
        self.fixture.labels.setdefault(split, {})[item_id] = raw
        self.fixture.images.setdefault(split, {})[item_id] = image
        return raw


def _lines(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _cityscapes(tree: _Tree, counts):
    folder = tree.fixture.folder
    for split, count in counts.items():
        for i in range(count):
            city = ("aachen", "bochum")[i % 2]
            base = f"{city}_{i:06d}_000019"
            train_ids = split == "train" and i == 0  # one image with a labelTrainIds map, the others labelIds
            tail, lut = ("_gtFine_labelTrainIds.png", "train_ids") if train_ids else ("_gtFine_labelIds.png", "ids")
            tree.pair(split, f"{city}/{base}", folder / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png",
                      folder / "gtFine" / split / city / f"{base}{tail}", raw_values(Cityscapes, lut))


def _voc(tree: _Tree, counts):
    folder, sets = tree.fixture.folder, tree.fixture.folder / "ImageSets" / "Segmentation"
    values, palette = np.arange(21), voc_colormap(256)
    ids = {split: [f"{year}_{i:06d}" for i in range(counts.get(split, 0))]
           for year, split in ((2007, "train"), (2008, "val"))}
    extra = [f"2011_{i:06d}" for i in range(counts.get("train_aug", 0))]  # SBD-only ids
    for split in ("train", "val"):
        for item_id in ids[split]:
            tree.pair(split, item_id, folder / "JPEGImages" / f"{item_id}.jpg",
                      folder / "SegmentationClass" / f"{item_id}.png", values, palette=palette, border=True)
        _lines(sets / f"{split}.txt", ids[split])
    for item_id in ids["train"]:  # the augmented set holds the VOC train labels too, as grey index PNGs
        tree.pair("train_aug", item_id, folder / "JPEGImages" / f"{item_id}.jpg",
                  folder / "SegmentationClassAug" / f"{item_id}.png", values, raw=tree.fixture.labels["train"][item_id])
    for item_id in extra:
        tree.pair("train_aug", item_id, folder / "JPEGImages" / f"{item_id}.jpg",
                  folder / "SegmentationClassAug" / f"{item_id}.png", values, border=True)
    # DeepLab's list format: "<image path> <label path>" per line
    _lines(sets / "train_aug.txt", [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids["train"] + extra])


def _scanned(loader, image_name, label_name):
    def write(tree: _Tree, counts):
        folder = tree.fixture.folder
        for split, count in counts.items():
            folder_name = loader.splits[split]
            for i in range(count):
                item_id = image_name.format(split=split, folder=folder_name, i=i + 1)
                tree.pair(split, item_id, folder / loader.image_dir.format(split=folder_name) /
                          f"{item_id}{loader.image_tail}",
                          folder / loader.label_dir.format(split=folder_name) / label_name.format(id=item_id),
                          raw_values(loader))
    return write


def _coco(tree: _Tree, counts):
    _scanned(COCOStuff10k, "COCO_{folder}_{i:012d}", "{id}_labelTrainIds.png")(tree, counts)
    lists = {split: tree.fixture.ids(split) for split in counts}
    for split, ids in lists.items():
        _lines(tree.fixture.folder / "imageLists" / f"{split}.txt", ids)
    _lines(tree.fixture.folder / "imageLists" / "all.txt", sorted(i for ids in lists.values() for i in ids))


def _context(tree: _Tree, counts):
    folder = tree.fixture.folder
    for j, (split, count) in enumerate(counts.items()):
        ids = [f"{2008 + j}_{i:06d}" for i in range(count)]
        for item_id in ids:
            tree.pair(split, item_id, folder / "JPEGImages" / f"{item_id}.jpg",
                      folder / "SegmentationClassContext" / f"{item_id}.png", raw_values(PascalContext59))
        _lines(folder / "ImageSets" / "SegmentationContext" / f"{split}.txt", ids)


# name → (dataset folder under root, writer, default image counts per split)
WRITERS = {
    "cityscapes": ("cityscapes", _cityscapes, {"train": 3, "val": 2}),
    "voc_aug": ("VOCdevkit/VOC2012", _voc, {"train": 2, "val": 2, "train_aug": 2}),
    "ade20k": ("ADEChallengeData2016", _scanned(ADE20K, "ADE_{split}_{i:08d}", "{id}.png"), {"train": 3, "val": 2}),
    "camvid": ("CamVid", _scanned(CamVid, "0001TP_{split}_{i:06d}", "{id}.png"), {"train": 3, "val": 2, "test": 2}),
    "pascal_context59": ("VOCdevkit/VOC2010", _context, {"train": 3, "val": 2}),
    "coco_stuff10k": ("coco_stuff10k", _coco, {"train": 3, "test": 2}),
}


def write_fixture(name: str, root: str | Path, counts: dict[str, int] | None = None, seed: int = 0,
                  sizes=SIZES) -> Fixture:
    """Write a tiny ``name`` dataset under ``root``; ``counts`` = images per split (VOC's
    ``train_aug`` count is of the SBD-only ids added to train)."""
    subfolder, writer, default_counts = WRITERS[name]
    tree = _Tree(Path(root) / subfolder if subfolder != "." else Path(root), seed, sizes)
    writer(tree, dict(default_counts if counts is None else counts))
    return tree.fixture
