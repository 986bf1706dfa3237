"""The common base of the real-dataset loaders: list ids → (image path, label path, remap LUT).

A loader says only where its files are (``required``, ``entries``) and how its raw label values
map to train ids (``luts``); this base finds the dataset folder under ``root`` (the folder itself
or one of its parents named in ``root_candidates``), checks that every listed id has its image
and label, decodes with PIL and remaps through the LUT, rejecting values outside the dataset's
value set. Loaders only read: nothing is ever written under ``root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdlab.data.dataset import TransformedItems
from kdlab.errors import ConfigError, DataError

IGNORE_INDEX = 255
CLASSES_DIR = Path(__file__).resolve().parent.parent / "classes"


# ----------------------------------------------------------------------------- label tables
def lut_from(mapping: Mapping[int, int]) -> np.ndarray:
    """A 256-entry raw value → train id table; -1 marks a value outside the dataset's value set."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def identity_lut(num_classes: int) -> np.ndarray:
    """Labels already in train ids: 0..K-1 kept, 255 = ignore."""
    return lut_from({**{k: k for k in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX})


def reduce_zero_lut(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 (unlabelled) → 255, k → k-1 for k = 1..K (255 stays 255)."""
    return lut_from({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, num_classes + 1)}, IGNORE_INDEX: IGNORE_INDEX})


def value_set(lut: np.ndarray) -> str:
    """The raw values a LUT accepts, as ranges: '0-20, 255'."""
    values, parts = np.flatnonzero(lut >= 0), []
    for run in np.split(values, np.flatnonzero(np.diff(values) != 1) + 1):
        parts.append(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


@cache
def read_class_table(name: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names and palette from ``kdlab/data/classes/<name>.tsv`` (``name<TAB>r g b`` lines)."""
    names, colours = [], []
    for line in (CLASSES_DIR / f"{name}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            class_name, rgb = line.split("\t")
            names.append(class_name)
            colours.append([int(v) for v in rgb.split()])
    return tuple(names), np.array(colours, dtype=np.uint8)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (VOCdevkit's ``VOClabelcolormap``): bit 3k+c of the class index
    becomes bit 7-k of channel c (c = 0, 1, 2 for R, G, B)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, colour = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        cmap[index] = colour
    return cmap


# ----------------------------------------------------------------------------- decoding
def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: unreadable image ({err.__class__.__name__})") from err


def decode_image(path: Path) -> np.ndarray:
    """An RGB uint8 H×W×3 array (grey, palette and CMYK images are converted)."""
    with _open(path) as image:
        try:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except OSError as err:  # truncated file
            raise DataError(f"{path}: unreadable image ({err})") from err


def decode_label(path: Path) -> np.ndarray:
    """The raw label values, H×W: for palette PNGs the palette *index*, never the colour."""
    with _open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DataError(f"{path}: label maps must be single-channel index images, got mode {image.mode} "
                            f"(a colour rendering rather than the label ids?)")
        try:
            return np.asarray(image)
        except OSError as err:
            raise DataError(f"{path}: unreadable image ({err})") from err


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    id: str
    image: Path
    label: Path
    lut: str = "default"  # key into the loader's ``luts``


Entry = tuple[str, Path, Sequence[tuple[Path, str]]]  # id, image, label candidates (path, lut key) in preference


def _shallowest_missing(root: Path, path: Path) -> Path:
    """The first path from ``root`` down to ``path`` that does not exist."""
    if not root.exists():
        return root
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if not current.exists():
            return current
    return path


class SegDataset(TransformedItems):
    """A split of a real dataset, read in place.

    Attributes: ``ids`` (list of str), ``num_classes``, ``class_names``, ``palette`` (K×3 uint8),
    ``ignore_index`` (255), ``root`` (the resolved dataset folder), ``meta`` (the dict the engine
    records). ``load(i)`` gives the untransformed (uint8 H×W×3 image, uint8 H×W train-id label);
    ``size(i)`` the (H, W) from the image header; ``dataset[i]`` / ``dataset[i, seed]`` the
    transformed item dict ``{"image", "label", "id"}`` as ``SegmentationFolder`` gives it.
    """

    name: ClassVar[str]
    layout: ClassVar[str]  # the expected files, relative to the dataset folder, one line
    splits: ClassVar[Mapping[str, str]]  # split name → its folder or list name in the layout
    root_candidates: ClassVar[tuple[str, ...]] = (".",)  # where the dataset folder may sit under root
    train_split: ClassVar[str] = "train"  # the splits the papers train and evaluate on
    eval_split: ClassVar[str] = "val"
    class_names: ClassVar[tuple[str, ...]]
    palette: ClassVar[np.ndarray]
    luts: ClassVar[Mapping[str, np.ndarray]]
    ignore_index: ClassVar[int] = IGNORE_INDEX
    listing: Path | None = None  # the split file the ids were read from, if any

    def __init__(self, root: str | Path, split: str, transform=None, **options):
        if options:
            raise ConfigError(f"{self.name}: unexpected dataset option(s) {sorted(options)}")
        if split not in self.splits:
            raise ConfigError(f"{self.name}: unknown split {split!r}; choose one of {', '.join(self.splits)}")
        self.split, self.transform = split, transform
        self.root = self._resolve(Path(root), split)
        self.items = self._check(self.entries(split))
        if not self.items:
            raise DataError(f"{self.name}: split '{split}' in '{self.root}' lists no images; expected {self.layout}")
        self.ids = [item.id for item in self.items]

    # --- what a loader provides
    def required(self, split: str) -> list[tuple[str, ...]]:
        """Paths (relative to the dataset folder) that must exist for ``split``, in order; a tuple
        holds alternatives."""
        raise NotImplementedError

    def entries(self, split: str) -> Iterable[Entry]:
        """The split's (id, image path, label candidates), from a split file or a folder scan."""
        raise NotImplementedError

    # --- helpers for loaders
    def split_file_ids(self, path: Path) -> list[str]:
        """Ids listed one per line; a line may also be a DeepLab-style 'JPEGImages/<id>.jpg <label path>' pair."""
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: unreadable split file ({err.__class__.__name__})") from err
        tokens = [line.split()[0] for line in lines if line.strip()]
        return [Path(token).stem if "/" in token or token.endswith((".jpg", ".png")) else token for token in tokens]

    def first_existing(self, *relative: str) -> Path:
        for rel in relative:
            if (self.root / rel).exists():
                return self.root / rel
        return self.root / relative[0]

    # --- the common part
    def _resolve(self, root: Path, split: str) -> Path:
        best, best_score = None, None
        for candidate in self.root_candidates:
            base = root / candidate if candidate != "." else root
            for index, alternatives in enumerate(self.required(split)):
                if not any((base / alt).exists() for alt in alternatives):
                    missing = _shallowest_missing(root, base / alternatives[0])
                    break
            else:
                return base
            score = (index, len(missing.parts))
            if best_score is None or score > best_score:
                best, best_score = missing, score
        parents = " or ".join(f"{c}/" for c in self.root_candidates if c != ".")
        where = "root is the folder holding them" + (f", or a folder holding {parents}" if parents else "")
        raise DataError(f"{self.name}: no '{self.split}' split at '{root}': missing {best}; "
                        f"expected {self.layout} ({where})")

    def _check(self, entries: Iterable[Entry]) -> list[Item]:
        items = []
        for item_id, image, candidates in entries:
            label = next(((path, lut) for path, lut in candidates if path.is_file()), None)
            if label is None or not image.is_file():
                raise self.unpaired(item_id, image, [path for path, _ in candidates], label is not None)
            items.append(Item(item_id, image, *label))
        return sorted(items, key=lambda item: item.id)

    def unpaired(self, item_id: str, image: Path, labels: Sequence[Path], label_found: bool) -> DataError:
        """The error for an id whose image or label is missing; it names both."""
        state = lambda ok: "found" if ok else "missing"  # noqa: E731
        listed = f" (listed in {self.listing})" if self.listing else ""
        return DataError(f"{self.name}: id {item_id!r} of split '{self.split}'{listed} lacks its image or label: "
                         f"image {image} ({state(image.is_file())}), "
                         f"label {' or '.join(str(p) for p in labels)} ({state(label_found)})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def meta(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "palette": self.palette.tolist(), "ignore_index": self.ignore_index}

    def __len__(self) -> int:
        return len(self.items)

    def size(self, index: int) -> tuple[int, int]:
        """(H, W) of an image, from its header (no decoding)."""
        with _open(self.items[index].image) as image:
            width, height = image.size
        return height, width

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed uint8 image (H×W×3) and uint8 train-id label (H×W, 255 = ignore)."""
        item = self.items[index]
        image, raw = decode_image(item.image), decode_label(item.label)
        if raw.shape != image.shape[:2]:
            raise DataError(f"{item.label}: label size {raw.shape} differs from image size {image.shape[:2]} "
                            f"of {item.image}")
        lut = self.luts[item.lut]
        if raw.dtype != np.uint8:  # 16/32-bit PNGs: values past the table are out of the value set too
            if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
                outside = raw[(raw < 0) | (raw >= len(lut))]
                raise DataError(f"{item.label}: label value {int(outside.flat[0])} is outside {self.name}'s value "
                                f"set ({value_set(lut)})")
            raw = raw.astype(np.uint8)
        label = lut[raw]
        if (label < 0).any():
            raise DataError(f"{item.label}: label value {int(raw[label < 0].min())} is outside {self.name}'s value "
                            f"set ({value_set(lut)})")
        return image, label.astype(np.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.split!r}: {len(self)} images)"
