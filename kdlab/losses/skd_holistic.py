"""`skd_holistic`: holistic distillation with a conditional WGAN-GP discriminator (SKD Eq. 3–4)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from kdlab.distributed import all_reduce_grads
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to

GRADIENT_PENALTY_WEIGHT = 10.0


class SelfAttention(nn.Module):
    """SAGAN-style self-attention over spatial positions, added back with a learned scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, max(channels // 8, 1), kernel_size=1)
        self.key = nn.Conv2d(channels, max(channels // 8, 1), kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        return x + self.gamma * (v @ attention.transpose(1, 2)).view_as(x)


class MatmulConv2d(nn.Conv2d):
    """The same convolution (same parameters, values within float rounding) as an unfold and one
    matrix product. For a wide layer on a small map, autograd's double backward of a matrix product
    (the gradient penalty's) is cheaper than that of a convolution: on CPU the critic and generator
    step took 14 % less time (129 → 111 ms, one thread) with the discriminator's widest layer
    (256 → 512 channels, 2 × 2 output at the default size) in this form (README: Cost of each method)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("MatmulConv2d supports groups=1 and zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # N×(C·k·k)×L
        out = F.linear(columns.transpose(1, 2), self.weight.flatten(1), self.bias)  # N×L×out_channels
        h, w = (self._output_size(x.shape[-2 + i], i) for i in range(2))
        return out.transpose(1, 2).reshape(x.shape[0], self.out_channels, h, w)

    def _output_size(self, size: int, i: int) -> int:
        span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
        return (size + 2 * self.padding[i] - span) // self.stride[i] + 1


class Discriminator(nn.Module):
    """D(Q|I): the segmentation map concatenated with the RGB image; five convolutions with two
    self-attention blocks between the last three; one score per image (the mean of the last map).

    Layout of SKD's released discriminator (after SAGAN's): each of the first four convolutions
    halves the map and doubles the width (`width` … 8·`width`), so the attention blocks run on
    1/8 and 1/16 of the input. Kernels are 3×3 with padding 1 (4×4 in the release), so maps of
    any size stay at least 1 px; the last conv keeps its map's size and the score is its mean.
    """

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()

        def conv(cin, cout, stride, kind=nn.Conv2d):
            return nn.Sequential(nn.utils.parametrizations.spectral_norm(
                kind(cin, cout, kernel_size=3, stride=stride, padding=1)), nn.LeakyReLU(0.2))

        self.net = nn.Sequential(
            conv(num_classes + 3, width, 2), conv(width, width * 2, 2), conv(width * 2, width * 4, 2),
            SelfAttention(width * 4), conv(width * 4, width * 8, 2, MatmulConv2d), SelfAttention(width * 8),
            nn.Conv2d(width * 8, 1, kernel_size=3, padding=1),
        )

    def forward(self, segmentation: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        image = resize_to(image, segmentation)  # a no-op for an image already at the map's size
        return self.net(torch.cat([segmentation, image], 1)).mean((1, 2, 3))


@contextmanager
def trainable(module: nn.Module):
    """Parameters of `module` take gradients only inside this block (so the student's optimizer,
    which collects trainable parameters at start, never owns the discriminator)."""
    module.requires_grad_(True)
    try:
        yield
    finally:
        module.requires_grad_(False)


@register
class HolisticKD(DistillMethod):
    """Alternates one discriminator step (min D(Q_s|I) − D(Q_t|I) + 10·GP, its own Adam) with the
    student term −D(Q_s|I) (λ2 = 0.1, enters the loss as `holistic`)."""

    name = "skd_holistic"
    default_taps = {"logits": "head_logits"}
    default_weights = {"holistic": 0.1}  # λ2 of SKD
    adversarial_terms = frozenset({"holistic"})

    def __init__(self, ctx: MethodContext, taps=None, d_width: int = 64, d_lr: float = 1e-4):
        super().__init__(ctx, taps)
        self.discriminator = Discriminator(ctx.num_classes, d_width).requires_grad_(False)
        # foreach: the same updates, bit for bit, in a few multi-tensor ops instead of a loop over tensors
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=(0.5, 0.9), foreach=True)

    def discriminator_step(self, q_student: torch.Tensor, q_teacher: torch.Tensor, image: torch.Tensor) -> float:
        # One spectrally normalised weight (one power iteration) for both of the critic's calls.
        with trainable(self.discriminator), torch.autocast(image.device.type, enabled=False), parametrize.cached():
            d_loss = KF.critic_objective(self.discriminator, q_teacher, q_student, image, GRADIENT_PENALTY_WEIGHT)
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            all_reduce_grads(self.discriminator.parameters())  # DDP: one discriminator on every rank
            self.d_optimizer.step()
        return d_loss.detach()

    def terms(self, student, teacher, batch, step):
        q_s = torch.softmax(resize_to(student["logits"], teacher["logits"]).float(), 1)
        q_t = torch.softmax(teacher["logits"].float(), 1)
        # Resized once here rather than in each of the discriminator's calls (the same values).
        image = resize_to(batch["image"].float(), q_t)
        out = {}
        if self.training:
            out["critic"] = self.discriminator_step(q_s.detach(), q_t, image)
        out["holistic"] = KF.holistic_generator_loss(self.discriminator(q_s, image))
        return out

    def extra_state(self) -> dict:
        return {"d_optimizer": self.d_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.d_optimizer.load_state_dict(state["d_optimizer"])
