"""The dataset registry: ``open_dataset(name, root, split)`` for every dataset kdlab reads.

=================  =========================================================  ======================
name               layout (under root, or under root's named subfolder)       splits
=================  =========================================================  ======================
embedded           kdlab's own (generated into root on first use)             train, val
folder             kdlab's own: dataset.yaml, <split>/{images,labels}/*.png   train, val
cityscapes         leftImg8bit/<split>/<city>/*.png, gtFine/<split>/<city>/*  train, val
voc_aug            VOCdevkit/VOC2012 (JPEGImages, SegmentationClass[Aug])     train, val, train_aug
ade20k             ADEChallengeData2016/{images,annotations}/...              train, val
camvid             CamVid/{train,val,test}[annot]                             train, val, test
pascal_context59   VOCdevkit/VOC2010 (JPEGImages, SegmentationClassContext)   train, val
coco_stuff10k      coco_stuff10k/{images,annotations}/{train2014,test2014}    train, test
=================  =========================================================  ======================

Each dataset has ``ids``, ``len()``, ``num_classes``, ``class_names``, ``palette`` (K×3 uint8),
``ignore_index`` (255), ``meta`` (what the engine records), ``load(i)`` → the untransformed
(uint8 H×W×3 image, uint8 H×W train-id label), ``size(i)`` → (H, W) from the file header, and
``dataset[i]`` / ``dataset[i, seed]`` → the transformed item, as ``SegmentationFolder`` gives it.
Each class also names the splits the papers train and evaluate on: ``train_split``, ``eval_split``.
"""

from __future__ import annotations

from pathlib import Path

from kdlab.data.datasets.loaders import LOADERS
from kdlab.errors import ConfigError

DATASETS: dict[str, type] = {loader.name: loader for loader in LOADERS}


def dataset_class(name: str) -> type:
    """The loader class registered under ``name`` (its splits, class names, train/eval splits)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def open_dataset(name: str, root: str | Path, split: str, transform=None, **options):
    """The ``split`` of dataset ``name`` read from ``root`` (the dataset folder or its parent).

    ``transform(image, label, rng)`` is applied by ``dataset[i]``; ``options`` are the embedded
    generator's parameters (seed, image_size, num_train, num_val) and are refused by the others.
    Raises ConfigError for an unknown name, split or option and DataError for a missing or
    malformed dataset, each with a one-line message naming the path or value at fault.
    """
    return dataset_class(name)(root, split, transform=transform, **options)
