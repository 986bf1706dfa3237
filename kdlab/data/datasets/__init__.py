"""Loaders for the papers' datasets, read in place; see ``kdlab.data.registry.open_dataset``."""

from kdlab.data.datasets.base import IGNORE_INDEX, SegDataset, voc_colormap
from kdlab.data.datasets.loaders import (ADE20K, LOADERS, CamVid, Cityscapes, COCOStuff10k, EmbeddedDataset,
                                         FolderDataset, PascalContext59, VOCAug)

__all__ = ["ADE20K", "IGNORE_INDEX", "LOADERS", "COCOStuff10k", "CamVid", "Cityscapes", "EmbeddedDataset",
           "FolderDataset", "PascalContext59", "SegDataset", "VOCAug", "voc_colormap"]
