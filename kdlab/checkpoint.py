"""Checkpoints: written atomically, hashed, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives::

    {"model": state_dict, "model_spec": {...}, "dataset": {"name", "num_classes", "class_names"},
     "config": resolved run config, "iteration": int, "optimizer": ..., "scheduler": ...,
     "rng": {...}, "extra": {name: state_dict},   # extra = distillation modules, discriminator, ...
     "sha256": content hash of everything else}

Every save keeps the checkpoint it replaces as ``prev.pt`` beside it, so a checkpoint that fails
its hash (a flipped bit on disk, a copy cut short) leaves a good one to go back to.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import torch

from kdlab.errors import CheckpointError
from kdlab.models.zoo import ModelSpec, SegModel, build_model
from kdlab.paths import project_path
from kdlab.runtime import atomic_path

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "prev.pt"
HASH_KEY = "sha256"


def _update_hash(digest, value, key: str = "") -> None:
    """Feed ``value`` (nested dicts, lists, tensors, primitives) into ``digest`` in a fixed order."""
    digest.update(key.encode())
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for name in sorted(value, key=str):
            _update_hash(digest, value[name], f"{key}/{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _update_hash(digest, item, f"{key}[{index}]")
    else:
        digest.update(repr(value).encode())


def content_hash(state: dict) -> str:
    """SHA-256 of a checkpoint's contents (its tensors' bytes, shapes and dtypes, and every other value)."""
    digest = hashlib.sha256()
    _update_hash(digest, {key: value for key, value in state.items() if key != HASH_KEY})
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with its content hash, atomically; the checkpoint it replaces becomes ``prev.pt``
    (a hard link, so a checkpoint is in place at every moment). Temporary files that a killed save
    left (``.last.pt.*.tmp``) are removed first: one writer per run directory holds its lock."""
    path = Path(path)
    for leftover in (p for name in (path.name, PREVIOUS_NAME) for p in path.parent.glob(f".{name}.*.tmp")):
        leftover.unlink()
    with atomic_path(path) as tmp:
        # Through a file we close ourselves: a save that failed (disk full) would otherwise leave torch's
        # writer, kept alive by the traceback, holding the removed temporary file and its space.
        with open(tmp, "wb") as file:
            torch.save({**state, HASH_KEY: content_hash(state)}, file)
        if path.exists():
            with atomic_path(path.with_name(PREVIOUS_NAME)) as previous:
                previous.unlink()
                os.link(path, previous)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A .pt file, or a run directory holding checkpoints/last.pt (relative: under the project root)."""
    path = project_path(path)
    if path.is_dir():
        path = path / "checkpoints" / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        hint = " (a YAML file: a config, not a trained model)" if path.suffix in (".yaml", ".yml") else ""
        raise CheckpointError(f"{path}: not a checkpoint{hint}; give a .pt file kdlab wrote or a run directory")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise CheckpointError(f"{path}: not a kdlab checkpoint (no model / model_spec entries)")
    if HASH_KEY in state and content_hash(state) != state[HASH_KEY]:
        previous = path.with_name(PREVIOUS_NAME)
        hint = f"; the previous checkpoint {previous} is intact" if path.name == CHECKPOINT_NAME and previous.exists() else ""
        raise CheckpointError(f"{path}: corrupted checkpoint (its contents do not match its sha256){hint}")
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


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str | Path, what: str = "the model") -> None:
    """`model.load_state_dict(state_dict)`; a mismatch is one CheckpointError line naming `path`."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        # torch's first line only names the module; the second says which tensor and how.
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2]) or "mismatch"
        raise CheckpointError(f"{path}: weights do not fit {what} ({detail})") from err


OBJECTIVE = "this kdlab's distillation methods, whose parts changed since the run was trained: train it again"


def model_from_checkpoint(path: str | Path, map_location="cpu") -> tuple[SegModel, dict]:
    """Rebuild the model a checkpoint was trained with and load its weights."""
    state = load_checkpoint(path, map_location)
    return model_from_state(state, path), state


def model_from_state(state: dict, path: str | Path) -> SegModel:
    model = build_model(ModelSpec(**state["model_spec"]), state["dataset"]["num_classes"])
    load_model_weights(model, state["model"], path)
    return model
