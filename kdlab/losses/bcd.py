"""`bcd`: boundary and context distillation from fused features (BCD Sec. III, Eq. 2–8)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register


class FeatureFusion(nn.Module):
    """Hierarchical features → 1×1 conv each to `lateral_width`, resized to 1/8 of the input,
    concatenated, then a 3×3 conv to `width` channels: the fused map F^c (T^c or S^c) of BCD.

    The paper fixes only d = `width` = 256; the common width of the 1×1 convs is open. At 64 the
    3×3 conv costs a quarter of what it does at 256 (it dominated a BCD step at 5 × 256 inputs).
    """

    def __init__(self, in_channels: list[int], width: int, lateral_width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, lateral_width, kernel_size=1) for c in in_channels)
        self.fuse = nn.Conv2d(lateral_width * len(in_channels), width, kernel_size=3, padding=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        # Resizing before the 1×1 conv equals resizing after it (both linear, bilinear weights sum
        # to 1) and costs far less on the high-resolution stages.
        resized = [conv(nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False))
                   for conv, f in zip(self.lateral, features)]
        return self.fuse(torch.cat(resized, 1))


def fused_size(image: torch.Tensor) -> tuple[int, int]:
    """The fused maps' resolution: 1/8 of the input (BCD Sec. III-A)."""
    return image.shape[-2] // 8, image.shape[-1] // 8


def prediction_boundaries(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N×1×h×w`` float map of the teacher's own prediction boundaries at resolution ``size``:
    the logits are area-averaged to ``size`` (``adaptive_avg_pool2d``), then a pixel is a boundary
    pixel (1) when its argmax differs from the argmax of one of its 4-neighbours inside the map
    (the map's border creates no boundary)."""
    pred = F.adaptive_avg_pool2d(logits.float(), size).argmax(1)
    edge = torch.zeros_like(pred, dtype=torch.bool)
    vertical = pred[:, 1:, :] != pred[:, :-1, :]
    horizontal = pred[:, :, 1:] != pred[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    return edge.unsqueeze(1).float()


@register
class BoundaryContextDistillation(DistillMethod):
    """Boundary affinities (Eq. 2–3) and context relations (Eq. 4–5) of fused features.

    Teacher side (METHODS.md section 4): its fused-feature convs and its boundary 1×1 conv are
    fitted once, before distillation, to the teacher's own prediction boundaries
    (`prediction_boundaries`: argmax differs from a 4-neighbour's, at the fused map's resolution;
    binary cross-entropy; no ground truth), then frozen. `prepare` does it, called once by
    `kdlab.distill.DistillObjective` at the first training step on the first `fit_batches` batches
    of the run's training stream: `fit_steps` Adam steps (lr `fit_lr`), one batch each in turn, on the
    teacher features of those batches, computed once. No random number is drawn (the objective also
    restores the global RNG around it), so the run's RNG stream is the same alone and in a cohort.
    The buffer `teacher_fitted` (in the checkpoint, with the fitted weights) marks it done, so a
    resumed run does not refit. `fit_steps: 0` keeps the old random frozen teacher side.

    The weights are multiplied by r(t) = 1 − (t−1)/t_max (Eq. 8) when `decay` is on. With
    `adaptive_temperature`, τ starts at 1 and is multiplied by 1.05 whenever the range of the
    teacher's boundary affinities in the batch exceeds 0.5 (BCD Sec. IV-A), never beyond
    `max_temperature`; τ is logged (`bcd.temperature`).
    """

    name = "bcd"
    default_taps = {"features": "stages"}
    default_weights = {"boundary": 10.0, "context": 50.0}  # α, β of Eq. 7

    def __init__(self, ctx: MethodContext, taps=None, width: int = 256, lateral_width: int = 64,
                 radius: int = 5, decay: bool = True,
                 adaptive_temperature: bool = False, max_temperature: float = 4.0,
                 boundary: bool = True, context: bool = True,
                 max_block_elems: int | None = None,
                 fit_steps: int = 100, fit_batches: int = 4, fit_lr: float = 1e-3):
        super().__init__(ctx, taps)
        if not max_temperature >= 1.0:
            raise ConfigError(f"method 'bcd': max_temperature must be >= 1 (τ starts at 1), got {max_temperature}")
        for key, value in (("fit_steps", fit_steps), ("fit_batches", fit_batches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"method 'bcd': {key} must be a non-negative integer, got {value!r}")
        if fit_steps and not fit_batches:
            raise ConfigError("method 'bcd': fit_batches must be >= 1 when fit_steps > 0")
        if not fit_lr > 0:
            raise ConfigError(f"method 'bcd': fit_lr must be positive, got {fit_lr}")
        self.radius, self.decay, self.adaptive = radius, decay, adaptive_temperature
        self.max_temperature = float(max_temperature)
        self.use_boundary, self.use_context = boundary, context
        self.max_block_elems = max_block_elems
        self.fit_steps, self.fit_batches, self.fit_lr = fit_steps, fit_batches, fit_lr
        self.student_fusion = FeatureFusion(self.channels("student", "features"), width, lateral_width)
        self.teacher_fusion = FeatureFusion(self.channels("teacher", "features"), width, lateral_width)
        self.student_boundary = nn.Conv2d(width, 1, kernel_size=1)
        self.teacher_boundary = nn.Conv2d(width, 1, kernel_size=1)
        self.teacher_side().requires_grad_(False)
        self.student_relation = nn.Sequential(nn.Conv2d(width, width, kernel_size=1), nn.BatchNorm2d(width))
        self.register_buffer("temperature", torch.ones(()))
        # Float, not bool, buffers: DDP broadcasts them with the others (kdlab.distributed).
        self.register_buffer("teacher_fitted", torch.tensor(float(fit_steps == 0)))
        self.register_buffer("teacher_fit_bce", torch.zeros(2))  # the fitting's BCE before / after (0: not fitted)
        # The buffer's value on the host, so that a step does not read it back from the device.
        self._fitted = fit_steps == 0

    def teacher_side(self) -> nn.ModuleList:
        """The teacher-side modules fitted by `prepare` and frozen otherwise."""
        return nn.ModuleList([self.teacher_fusion, self.teacher_boundary])

    # ------------------------------------------------------------------ fitting the teacher side
    def needs_prepare(self) -> bool:
        return not self._fitted

    def prepare(self, teacher: nn.Module, batches: Callable[[int], list[dict]]) -> None:
        """Fit the teacher side to the teacher's prediction boundaries on `batches(fit_batches)`."""
        device = self.temperature.device
        taps = self.taps["features"]["teacher"]
        features, targets = [], []
        with torch.no_grad():
            for batch in batches(self.fit_batches):
                image = batch["image"].to(device)
                out = teacher.forward_taps(image, taps)
                features.append([f.float() for f in self.select(out, "teacher")["features"]])
                targets.append(prediction_boundaries(out["logits"], fused_size(image)))
        def bce(i: int) -> torch.Tensor:
            logit = self.teacher_boundary(self.teacher_fusion(features[i], tuple(targets[i].shape[-2:])))
            return F.binary_cross_entropy_with_logits(logit, targets[i])

        def mean_bce() -> torch.Tensor:
            with torch.no_grad():
                return sum(bce(i) for i in range(len(targets))) / len(targets)

        self.teacher_fit_bce[0] = mean_bce()
        params = list(self.teacher_side().parameters())
        optimizer = torch.optim.Adam(params, lr=self.fit_lr)
        self.teacher_side().requires_grad_(True)
        try:
            with torch.enable_grad():
                for step in range(self.fit_steps):  # one batch per step, in order
                    optimizer.zero_grad(set_to_none=True)
                    bce(step % len(targets)).backward()
                    optimizer.step()
        finally:
            self.teacher_side().requires_grad_(False)
            for p in params:
                p.grad = None
        self.teacher_fit_bce[1] = mean_bce()
        self.teacher_fitted.fill_(1.0)
        self._fitted = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints from before the fitting have no `teacher_fitted`: they resume as they ran
        # (random frozen teacher side), not refitted half-way.
        for key in ("teacher_fitted", "teacher_fit_bce"):
            if prefix + key not in state_dict and prefix + "temperature" in state_dict:
                state_dict[prefix + key] = torch.tensor(1.0) if key == "teacher_fitted" else torch.zeros(2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._fitted = bool(self.teacher_fitted)

    # ------------------------------------------------------------------ distillation
    def fused(self, student: dict, teacher: dict, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = fused_size(image)
        s = self.student_fusion([f.float() for f in student["features"]], size)
        with torch.no_grad():
            t = self.teacher_fusion([f.float() for f in teacher["features"]], size)
        return s, t

    def boundary_maps(self, fused: torch.Tensor, side: str) -> torch.Tensor:
        head = self.student_boundary if side == "student" else self.teacher_boundary
        return torch.sigmoid(head(fused))

    def terms(self, student, teacher, batch, step):
        s, t = self.fused(student, teacher, batch["image"])
        out = {}
        if self.use_boundary:
            s_aff = KF.bcd_boundary_affinity(self.boundary_maps(s, "student"), self.radius)
            with torch.no_grad():
                t_aff = KF.bcd_boundary_affinity(self.boundary_maps(t, "teacher"), self.radius)
            self._adapt_temperature(t_aff)
            valid = KF.bcd_affinity_valid_mask(*s.shape[-2:], self.radius, device=s.device)
            out["boundary"] = KF.boundary_kd(s_aff, t_aff, self.temperature, valid)
        if self.use_context:
            out["context"] = KF.context_relation_kd(self.student_relation(s), t, self.temperature,
                                                        self.max_block_elems)
        out["temperature"] = self.temperature.clone()
        return out

    def schedule(self, step):
        return step.decay if self.decay else 1.0

    def _adapt_temperature(self, teacher_affinity: torch.Tensor) -> None:
        if self.adaptive and self.training:  # on the device: no host read per step
            spread = teacher_affinity.amax() - teacher_affinity.amin()
            raised = torch.clamp(self.temperature * 1.05, max=self.max_temperature)
            self.temperature.copy_(torch.where(spread > 0.5, raised, self.temperature))
