"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives::

    {"model": state_dict, "model_spec": {...}, "dataset": {"name", "num_classes", "class_names"},
     "config": resolved run config, "iteration": int, "optimizer": ..., "scheduler": ...,
     "rng": {...}, "extra": {name: state_dict}}   # extra = distillation modules, discriminator, ...
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from kdlab.errors import CheckpointError
from kdlab.models.zoo import ModelSpec, SegModel, build_model
from kdlab.runtime import atomic_path

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A .pt file, or a run directory holding checkpoints/last.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise CheckpointError(f"{path}: not a kdlab checkpoint (no model / model_spec entries)")
    return state


def checkpoint_iteration(path: str | Path) -> int:
    """The iteration a checkpoint was written at, without reading its tensors (memory-mapped)."""
    path = resolve_checkpoint_path(path)
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from err


def check_dataset_match(state: dict, dataset_meta: dict, path: str | Path, role: str = "checkpoint") -> None:
    """The checkpoint was trained on the same classes as `dataset_meta`."""
    saved = state.get("dataset", {})
    if saved.get("num_classes") != dataset_meta["num_classes"]:
        raise CheckpointError(f"{path}: {role} has {saved.get('num_classes')} classes, "
                              f"the dataset has {dataset_meta['num_classes']}")
    if saved.get("class_names") and saved["class_names"] != list(dataset_meta["class_names"]):
        raise CheckpointError(f"{path}: {role} was trained on dataset {saved.get('name')!r} with other class names")


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        raise CheckpointError(f"{path}: weights do not fit the model ({first})") from err


def model_from_checkpoint(path: str | Path, map_location="cpu") -> tuple[SegModel, dict]:
    """Rebuild the model a checkpoint was trained with and load its weights."""
    state = load_checkpoint(path, map_location)
    return model_from_state(state, path), state


def model_from_state(state: dict, path: str | Path) -> SegModel:
    model = build_model(ModelSpec(**state["model_spec"]), state["dataset"]["num_classes"])
    load_model_weights(model, state["model"], path)
    return model
