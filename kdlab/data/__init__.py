"""Datasets: the embedded benchmark (generated on first use) and the folder layout contract."""

from kdlab.data.dataset import SegmentationFolder, read_meta
from kdlab.data.synthetic import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, ensure_embedded, generate_embedded
from kdlab.data.transforms import denormalize, eval_transform, train_transform

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "SegmentationFolder", "denormalize",
           "ensure_embedded", "eval_transform", "generate_embedded", "read_meta", "train_transform"]
from kdlab.data.registry import DATASETS, dataset_class, open_dataset  # noqa: E402

__all__ += ["DATASETS", "dataset_class", "open_dataset"]
