"""No host synchronisation inside a training step (issue 14: the device runs ahead between log lines).

A step that reads a tensor's value on the host (``float(t)``, ``t.item()``, ``if t:``, ``t.tolist()``)
makes the CPU wait for the GPU. On CPU the proxy counts those reads made by kdlab's code during steps
after the first (the first fits BCD's teacher side and matches the weights, once per run); torch's own
(Adam reads its step count, a host tensor) are left to CUDA, where ``torch.cuda.set_sync_debug_mode
("error")`` stops at any read that waits for the device."""

import contextlib
import sys
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab.config import load_config
from kdlab.distill import DistillObjective, RecipeEntry, TeacherPass
from kdlab.engine import build_optimizer, make_scaler, train_one_step, trainable_parameters
from kdlab.losses import REGISTRY
from kdlab.models import build_model
from kdlab.models.zoo import ModelSpec

NUM_CLASSES = 5
KDLAB = str(Path(kdlab.__file__).parent)
# Functions whose read runs on the CPU only (a label check that other devices skip, see its docstring).
CPU_ONLY_READS = {"bpkd_edge_masks"}
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
# Options that switch on a method's data-dependent branches.
OPTIONS = {"bcd": {"adaptive_temperature": True, "fit_steps": 2, "fit_batches": 1}}
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs a CUDA device"))]


@contextlib.contextmanager
def counting_host_reads():
    """The reads of a tensor's value that kdlab's code makes inside the block (by their caller's file)."""
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(KDLAB) and frame.f_code.co_name not in CPU_ONLY_READS:
                reads.append(f"{name} in {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            return originals[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def cuda_sync_errors(device: torch.device):
    """On CUDA, any read that waits for the device raises inside the block; elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="DeepLabV3Plus", encoder="resnet18"), NUM_CLASSES).eval()


def _batch(device, seed):
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, 64, 64, generator=generator).to(device),
            "label": torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=generator).to(device)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_a_training_step_reads_nothing_back_from_the_device(method, device, teacher):
    device = torch.device(device)
    cfg = load_config(["configs/student.yaml"], [f"train.device={device.type}"])
    torch.manual_seed(0)
    student = build_model(ModelSpec(arch="PSPNet", encoder="resnet18", encoder_depth=3), NUM_CLASSES).to(device)
    objective = DistillObjective(TeacherPass(teacher.to(device)), student,
                                 [RecipeEntry(method=method, name=method, options=OPTIONS.get(method, {}))],
                                 NUM_CLASSES, total_iterations=10, match_ratio=1.0)
    objective = objective.to(device).train()
    optimizer, _ = build_optimizer(trainable_parameters(student, objective), cfg)
    scaler = make_scaler(cfg, device)
    train_one_step(student, objective, _batch(device, 0), optimizer, scaler, cfg, 1, device)
    with counting_host_reads() as reads, cuda_sync_errors(device):
        for iteration in (2, 3):
            train_one_step(student, objective, _batch(device, iteration), optimizer, scaler, cfg, iteration, device)
    assert reads == [], f"{method}: the step read {len(reads)} values back from the device ({sorted(set(reads))})"
