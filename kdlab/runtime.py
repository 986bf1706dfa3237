"""Device choice, seeding and atomic file writes shared by every command."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from kdlab.errors import ConfigError, StorageError


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device: {name!r} is not a device name ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states in a form `torch.load(weights_only=True)` accepts."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# errno values that mean "no room left" and "may not write here".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_disk_full(err: BaseException) -> bool:
    """An OSError for a full disk or quota, or torch.save's RuntimeError when its zip writer could not
    write everything (``inline_container.cc ... unexpected pos`` / ``file write failed``)."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL_ERRNOS
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def storage_error(err: BaseException, path: str | Path | None, replacing: bool = False) -> StorageError | None:
    """The one-line `StorageError` for a failed write of ``path`` (None: not known), or None when
    ``err`` is neither a full disk nor a read-only / forbidden directory."""
    if is_disk_full(err):
        what = f"{path}: disk full while writing {Path(path).name}" if path else "disk full"
        tail = "; nothing was replaced" if replacing else "; free some space (an interrupted run continues with --resume)"
        return StorageError(what + tail)
    if isinstance(err, OSError) and err.errno in NOT_WRITABLE_ERRNOS and (err.filename or path):
        where = Path(err.filename or path)
        where = where.parent if where.name.startswith(".") else where  # a temporary file, the run lock
        return StorageError(f"{where}: cannot write ({err.strerror}); the directory is read-only or not writable "
                            "by this user")
    return None


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A full disk or a read-only directory raises `StorageError` (one line; `path` as it was)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        translated = storage_error(err, path, replacing=True)
        if translated is None:
            raise
        raise translated from err
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        translated = storage_error(err, path, replacing=True)
        if translated is None:
            raise
        raise translated from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
