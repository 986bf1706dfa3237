"""Two shapes of dataset folder, so that each loader is a handful of class attributes.

``ListedDataset``: ids come from a split file (VOC, PASCAL-Context); image and label paths are
built from the id. ``ScannedDataset``: ids come from a scan of the split's image folder
(Cityscapes, ADE20K, CamVid, COCO-Stuff); the label path is built from the image name.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable

from kdlab.data.datasets.base import Entry, SegDataset


class ListedDataset(SegDataset):
    image_dir: ClassVar[str] = "JPEGImages"
    image_suffix: ClassVar[str] = ".jpg"
    label_dir: ClassVar[str]
    label_suffix: ClassVar[str] = ".png"
    split_file: ClassVar[str]  # template: "{split}" is replaced by the split's list name

    def split_files(self, split: str) -> tuple[str, ...]:
        """The split file, then any alternative names for it."""
        return (self.split_file.format(split=self.splits[split]),)

    def label_dirs(self, split: str) -> tuple[str, ...]:
        """Label folders in preference order: an id's label is taken from the first that has it."""
        return (self.label_dir,)

    def required(self, split: str) -> list[tuple[str, ...]]:
        return [(self.image_dir,), self.label_dirs(split)[:1], self.split_files(split)]

    def entries(self, split: str) -> Iterable[Entry]:
        self.listing = self.first_existing(*self.split_files(split))
        image_dir, label_dirs = self.root / self.image_dir, [self.root / folder for folder in self.label_dirs(split)]
        for item_id in self.split_file_ids(self.listing):
            yield (item_id, image_dir / f"{item_id}{self.image_suffix}",
                   [(folder / f"{item_id}{self.label_suffix}", "default") for folder in label_dirs])


class ScannedDataset(SegDataset):
    image_dir: ClassVar[str]  # templates: "{split}" is replaced by the split's folder name
    label_dir: ClassVar[str]
    image_glob: ClassVar[str] = "*.jpg"  # relative to the image folder, may reach into subfolders; ends in image_tail
    image_tail: ClassVar[str] = ".jpg"  # stripped from an image's name to give the id's last part
    label_tails: ClassVar[tuple[tuple[str, str], ...]] = ((".png", "default"),)  # (appended tail, LUT) in preference

    def _dirs(self, split: str):
        folder = self.splits[split]
        return self.image_dir.format(split=folder), self.label_dir.format(split=folder)

    def required(self, split: str) -> list[tuple[str, ...]]:
        return [(folder,) for folder in self._dirs(split)]

    def entries(self, split: str) -> Iterable[Entry]:
        image_dir, label_dir = (self.root / folder for folder in self._dirs(split))
        entries = {}
        for image in image_dir.glob(self.image_glob):
            item_id = self._id(image.relative_to(image_dir), self.image_tail)
            labels = [(label_dir / f"{item_id}{tail}", lut) for tail, lut in self.label_tails]
            entries[item_id] = (item_id, image, labels)
        # a label without its image: the image folder is incomplete
        name_glob = self.image_glob[: -len(self.image_tail)]
        for tail, _ in self.label_tails:
            for label in label_dir.glob(f"{name_glob}{tail}"):
                item_id = self._id(label.relative_to(label_dir), tail)
                if item_id not in entries:
                    raise self.unpaired(item_id, image_dir / f"{item_id}{self.image_tail}", [label], True)
        return entries.values()

    @staticmethod
    def _id(relative: Path, tail: str) -> str:
        """The id of a file: its path below the split folder, less its tail ('aachen/aachen_000000_000019')."""
        return (relative.parent / relative.name[: -len(tail)]).as_posix()
