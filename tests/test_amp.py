"""The mixed-precision path: a training step of every method under autocast (CPU bfloat16 here, CUDA
float16 and bfloat16 where a GPU is present), the dtype policy and the GradScaler's skip-and-back-off."""

import pytest
import torch
from torch import nn

from kdlab.config import load_config
from kdlab.distill import DistillObjective, RecipeEntry, TeacherPass
from kdlab.engine import (SupervisedObjective, autocast_dtype, build_optimizer, make_scaler, train_one_step,
                          trainable_parameters)
from kdlab.errors import ConfigError
from kdlab.losses import REGISTRY
from kdlab.models import build_model
from kdlab.models.zoo import ModelSpec

NUM_CLASSES = 5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SETTINGS = [pytest.param("cpu", "bfloat16", id="cpu-bfloat16"),
            pytest.param("cuda", "float16", id="cuda-float16", marks=CUDA),
            pytest.param("cuda", "bfloat16", id="cuda-bfloat16", marks=CUDA)]


def _cfg(device: str, amp_dtype: str | None, *extra: str):
    dtype = [f"train.amp_dtype={amp_dtype}"] if amp_dtype else []
    return load_config(["configs/student.yaml"], [f"train.device={device}", "train.grad_clip=10.0", "train.lr=0.01",
                                                  *dtype, *extra])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = build_model(ModelSpec(arch="PSPNet", encoder="resnet18", encoder_depth=3), NUM_CLASSES)
    teacher = build_model(ModelSpec(arch="DeepLabV3Plus", encoder="resnet18"), NUM_CLASSES)
    return student, teacher


def _batch(device):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 64, 64, generator=generator)
    label = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=generator)
    label[:, :4] = 255  # some ignore pixels
    return {"image": image.to(device), "label": label.to(device)}


def _step(student, objective, cfg, device):
    """One `train_one_step`; returns its terms, the dtype autocast produced and the student's change."""
    student = student.to(device)
    objective = objective.to(device).train()
    optimizer, _ = build_optimizer(trainable_parameters(student, objective), cfg)
    scaler = make_scaler(cfg, device)
    seen = []
    hook = student.net.encoder.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in student.parameters()]
    try:
        values = train_one_step(student, objective, _batch(device), optimizer, scaler, cfg, 1, device)
    finally:
        hook.remove()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, student.parameters()))
    return values, seen, grads, changed, scaler


@pytest.mark.parametrize("device, amp_dtype", SETTINGS)
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_a_step_under_autocast(method, device, amp_dtype, models):
    student, teacher = (m.to(device) for m in models)
    student = build_model(student.spec, NUM_CLASSES).to(device)  # a fresh student per method
    device = torch.device(device)
    cfg = _cfg(device.type, amp_dtype)
    objective = DistillObjective(TeacherPass(teacher), student, [RecipeEntry(method=method, name=method)],
                                 NUM_CLASSES, total_iterations=10)
    values, seen, grads, changed, scaler = _step(student, objective, cfg, device)
    assert seen == [getattr(torch, amp_dtype)]  # the student ran under autocast
    assert all(torch.isfinite(v) for v in values.values()), values
    assert any(name.startswith(f"{method}.") for name in values)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # gradients reach the student
    assert changed > 0
    assert scaler.is_enabled() == (amp_dtype == "float16")


def test_cpu_defaults_stay_full_precision_and_cuda_defaults_to_float16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(_cfg("cpu", None), cpu) is None  # CPU runs unchanged unless asked
    assert autocast_dtype(_cfg("cpu", "bfloat16"), cpu) == torch.bfloat16
    assert autocast_dtype(_cfg("cpu", None), cuda) == torch.float16
    assert autocast_dtype(_cfg("cpu", "bfloat16"), cuda) == torch.bfloat16
    assert autocast_dtype(_cfg("cpu", "bfloat16", "train.amp=false"), cpu) is None
    assert autocast_dtype(_cfg("cpu", "bfloat16", "train.amp=false"), cuda) is None
    assert not make_scaler(_cfg("cpu", None), cpu).is_enabled()
    assert not make_scaler(_cfg("cpu", "bfloat16"), cpu).is_enabled()
    with pytest.raises(ConfigError, match="train.amp_dtype: must be 'float16', 'bfloat16' or null"):
        _cfg("cpu", "float8")


class _InfGradient(torch.autograd.Function):
    """Identity forward, an infinite gradient backward: a float16 overflow in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _Overflowing(SupervisedObjective):
    def forward(self, student, batch, iteration):
        return super().forward({**student, "logits": _InfGradient.apply(student["logits"])}, batch, iteration)


def test_grad_scaler_steps_unscaled_gradients_and_skips_an_overflowing_step(models):
    """float16 autocast (on CPU here: torch's CPU GradScaler) scales the loss, unscales before clipping,
    steps on finite gradients, and skips the step and halves the scale when a gradient overflows."""
    device = torch.device("cpu")
    cfg = _cfg("cpu", "float16")
    student = build_model(models[0].spec, NUM_CLASSES)
    values, seen, grads, changed, scaler = _step(student, SupervisedObjective(), cfg, device)
    assert scaler.is_enabled() and seen == [torch.float16]
    assert changed > 0 and scaler.get_scale() == 2.0 ** 16
    assert 0 < values["grad_norm"] < 1e3  # clipped on unscaled gradients, not on 65536 × them

    optimizer, _ = build_optimizer(list(student.parameters()), cfg)
    before = [p.detach().clone() for p in student.parameters()]
    train_one_step(student, _Overflowing(), _batch(device), optimizer, scaler, cfg, 2, device)
    assert all(torch.equal(b, p.detach()) for b, p in zip(before, student.parameters()))  # step skipped
    assert scaler.get_scale() == 2.0 ** 15  # and the scale backed off
