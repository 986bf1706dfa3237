"""Checkpoints carry a content hash: a corrupted one is refused on load, and the previous one is kept."""

import os

import pytest
import torch

from kdlab.checkpoint import content_hash, load_checkpoint, save_checkpoint
from kdlab.errors import CheckpointError


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model": {"conv.weight": torch.randn(64, 32), "bn.running_mean": torch.zeros(8)},
            "model_spec": {"arch": "PSPNet"}, "iteration": seed, "config": {"train": {"lr": 0.01}}}


def test_a_checkpoint_loads_back_with_its_hash(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, _state(1))
    state = load_checkpoint(path)
    assert state["sha256"] == content_hash(state) and torch.equal(state["model"]["conv.weight"],
                                                                   _state(1)["model"]["conv.weight"])
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_flipped_bytes_inside_a_weight_tensor_are_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    raw = bytearray(path.read_bytes())
    weights = _state(2)["model"]["conv.weight"].numpy().tobytes()
    at = raw.find(weights[:64])
    assert at > 0, "the tensor's bytes are stored as they are"
    raw[at + 100:at + 116] = bytes(b ^ 0xFF for b in raw[at + 100:at + 116])
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last.pt: corrupted checkpoint .*prev.pt is intact"):
        load_checkpoint(path)
    assert load_checkpoint(tmp_path / "prev.pt")["iteration"] == 1


def test_a_changed_value_changes_the_hash():
    state = _state(1)
    before = content_hash(state)
    state["iteration"] = 2
    assert content_hash(state) != before
    state["iteration"] = 1
    state["model"]["bn.running_mean"][3] = 1e-7
    assert content_hash(state) != before


def test_a_killed_save_leaves_no_temporary_file_behind_the_next_save(tmp_path):
    path = tmp_path / "last.pt"
    leftover = tmp_path / ".last.pt.abc123.tmp"
    leftover.write_bytes(os.urandom(1024))  # what SIGKILL during torch.save leaves
    save_checkpoint(path, _state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
