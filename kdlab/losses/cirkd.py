"""`cirkd`: cross-image relational distillation (Yang et al., CVPR 2022): the mini-batch pixel-to-pixel
term and the pixel-to-pixel and pixel-to-region memory contrasts over teacher embeddings of past batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.data.synthetic import IGNORE_INDEX
from kdlab.errors import ConfigError
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


def projection_head(in_channels: int, out_channels: int) -> nn.Module:
    """CIRKD's student projection: 1×1 conv, BatchNorm, ReLU, 1×1 conv (no biases), trained with the student."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(), nn.Conv2d(out_channels, out_channels, 1, bias=False))


def push(queue: torch.Tensor, ptr: torch.Tensor, filled: torch.Tensor, values: torch.Tensor,
         keep: torch.Tensor) -> None:
    """Write the kept rows of ``values`` (``K×E×D``, ``keep``: ``K×E``) into the per-class ring buffers
    ``queue`` (``K×(M+1)×D``; row ``M`` is scratch) in order, first-in first-out, without host syncs."""
    size = queue.shape[1] - 1
    pos = keep.long().cumsum(1) - 1
    count = keep.sum(1)
    keep = keep & (pos >= (count - size)[:, None])  # what the same push would overwrite again
    slot = torch.where(keep, (ptr[:, None] + pos) % size, size)
    rows = torch.arange(queue.shape[0], device=queue.device)[:, None].expand_as(slot)
    queue[rows, slot] = values.to(queue.dtype)
    queue[:, size].zero_()  # which dropped row lands last in the scratch row is up to the backend
    ptr.copy_((ptr + count) % size)
    filled.copy_((filled + count).clamp(max=size))


def sample_slots(filled: torch.Tensor, size: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` slots per class out of the filled ones, the same random order for every class (the official
    code draws one permutation for all classes); ``K×k`` indices and whether each is filled."""
    scores = torch.rand(size, generator=generator, device=filled.device)
    slots = torch.arange(size, device=filled.device)
    scores = torch.where(slots[None, :] < filled[:, None], scores[None, :], -1.0)
    values, index = scores.topk(min(k, size), dim=1)
    return index, values >= 0


@register
class CrossImageRelationalKD(DistillMethod):
    """CIRKD's three relational terms on the decoder features (its logit KD is the separate `kd` entry).

    - ``minibatch``: `KF.cirkd_minibatch_pair_kd` on the raw features (the student's resized to the
      teacher's), average-pooled by ``pool_kernel`` when set (the official ``pooling`` option).
    - ``pixel_memory`` / ``region_memory``: `KF.cirkd_memory_kd` of every valid pixel (labels nearest-
      resized to the teacher's map) against sampled entries of two per-class FIFO memories of L2-normalised
      teacher embeddings: ``pixel_update`` random pixels per class per image, and the normalised mean of
      each class region per image. The student side is the projection head's output (at the student's
      resolution, then resized). ``pool_kernel`` also pools the anchors (teacher embeddings averaged
      before normalising, labels nearest-resized), which bounds the anchors × memory logits. Memories are enqueued before the loss (as the official code) while
      training, are buffers (saved in checkpoints), start empty (unfilled slots are left out, where the
      official code starts from random unit vectors), and every random draw comes from a generator
      seeded by the method's seed and the iteration (no global RNG during training; exact resume).
    """

    name = "cirkd"
    default_taps = {"feat": "decoder"}
    # CIRKD's train_cirkd.py: --lambda-minibatch-pixel 1, --lambda-memory-pixel 0.1, --lambda-memory-region 0.1
    default_weights = {"minibatch": 1.0, "pixel_memory": 0.1, "region_memory": 0.1}

    def __init__(self, ctx: MethodContext, taps=None, temperature: float = 0.1, kd_temperature: float = 1.0,
                 pixel_memory_size: int = 20000, region_memory_size: int = 2000, pixel_contrast_size: int = 4096,
                 region_contrast_size: int = 1024, pixel_update: int = 16, pool_kernel: int | None = None):
        super().__init__(ctx, taps)
        for key, value in (("pixel_memory_size", pixel_memory_size), ("region_memory_size", region_memory_size),
                           ("pixel_contrast_size", pixel_contrast_size),
                           ("region_contrast_size", region_contrast_size), ("pixel_update", pixel_update)):
            if not (isinstance(value, int) and value > 0):
                raise ConfigError(f"method 'cirkd': option {key} must be a positive integer, got {value!r}")
        if pool_kernel is not None and not (isinstance(pool_kernel, int) and pool_kernel > 0):
            raise ConfigError(f"method 'cirkd': option pool_kernel must be a positive integer or null, got {pool_kernel!r}")
        self.temperature, self.kd_temperature = temperature, kd_temperature
        self.pixel_update, self.pool_kernel = pixel_update, pool_kernel
        classes, dim = ctx.num_classes, self.channels("teacher", "feat")
        # The official code passes contrast_size // K + 1 per class to its sampler.
        self.pixel_per_class = pixel_contrast_size // classes + 1
        self.region_per_class = region_contrast_size // classes + 1
        self.head = projection_head(self.channels("student", "feat"), dim)
        for name, size in (("pixel", pixel_memory_size), ("region", region_memory_size)):
            self.register_buffer(f"{name}_queue", torch.zeros(classes, size + 1, dim))
            self.register_buffer(f"{name}_ptr", torch.zeros(classes, dtype=torch.long))
            self.register_buffer(f"{name}_filled", torch.zeros(classes, dtype=torch.long))
        # One draw from the global RNG at construction (alike alone and in a cohort, where every member is
        # built from the same RNG state); per-iteration generators are seeded from it.
        self.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())

    def extra_state(self) -> dict:
        return {"seed": self.seed}

    def load_extra_state(self, state: dict) -> None:
        self.seed = int(state["seed"])

    @torch.no_grad()
    def enqueue(self, t_unit: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        """Push this batch's teacher embeddings: per image and class, the region mean and a few pixels."""
        n, dim, h, w = t_unit.shape
        classes = self.ctx.num_classes
        means, counts = KF.class_prototypes(t_unit, labels, classes, IGNORE_INDEX)
        push(self.region_queue, self.region_ptr, self.region_filled,
             F.normalize(means, dim=2).transpose(0, 1), (counts > 0).T)
        flat = labels.flatten(1)
        member = (flat[:, None, :] == torch.arange(classes, device=flat.device)[None, :, None])
        member &= (flat != IGNORE_INDEX)[:, None, :]
        scores = torch.rand(n, h * w, generator=generator, device=t_unit.device)
        values, index = torch.where(member, scores[:, None, :], -1.0).topk(min(self.pixel_update, h * w), dim=2)
        k = index.shape[2]
        pixels = t_unit.flatten(2).transpose(1, 2)  # N×hw×D
        picked = torch.gather(pixels, 1, index.reshape(n, classes * k, 1).expand(-1, -1, dim))
        picked = picked.view(n, classes, k, dim).transpose(0, 1).reshape(classes, n * k, dim)
        push(self.pixel_queue, self.pixel_ptr, self.pixel_filled, picked,
             (values >= 0).transpose(0, 1).reshape(classes, n * k))

    def _memory(self, name: str, per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        queue, filled = getattr(self, f"{name}_queue"), getattr(self, f"{name}_filled")
        index, ok = sample_slots(filled, queue.shape[1] - 1, per_class, generator)
        rows = torch.arange(queue.shape[0], device=queue.device)[:, None].expand_as(index)
        return queue[rows, index].flatten(0, 1), ok.flatten()

    def _pooled(self, s_map: torch.Tensor, t_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student map resized to the teacher's, then both average-pooled by ``pool_kernel``."""
        k = self.pool_kernel
        if k == 2 and t_map.shape[-2:] == tuple(2 * d for d in s_map.shape[-2:]):
            s = KF.avg_pool2_of_bilinear_up2(s_map)  # pooling after the 2× resize, without building it
        else:
            s = resize_to(s_map, t_map)
            if k:
                s = F.avg_pool2d(s, k, ceil_mode=True)
        return s, (F.avg_pool2d(t_map, k, ceil_mode=True) if k else t_map)

    def terms(self, student, teacher, batch, step):
        s_feat, t_feat = student["feat"].float(), teacher["feat"].float()
        generator = torch.Generator(device=t_feat.device).manual_seed(self.seed * 1_000_003 + step.iteration)
        if self.training:
            self.enqueue(F.normalize(t_feat, dim=1), KF.labels_at(batch["label"], t_feat.shape[-2:]), generator)
        out = {"minibatch": KF.cirkd_minibatch_pair_kd(*self._pooled(s_feat, t_feat), self.temperature)}
        s_map, t_map = self._pooled(self.head(student["feat"]).float(), t_feat)
        dim = t_map.shape[1]
        s_embed = s_map.permute(0, 2, 3, 1).reshape(-1, dim)
        t_embed = t_map.permute(0, 2, 3, 1).reshape(-1, dim)
        flat = KF.labels_at(batch["label"], t_map.shape[-2:]).flatten()
        anchors = (flat >= 0) & (flat < self.ctx.num_classes) & (flat != IGNORE_INDEX)
        for name, per_class in (("pixel", self.pixel_per_class), ("region", self.region_per_class)):
            memory, ok = self._memory(name, per_class, generator)
            out[f"{name}_memory"] = KF.cirkd_memory_kd(s_embed, t_embed, memory, self.temperature,
                                                       self.kd_temperature, ok, anchors)
        return out
