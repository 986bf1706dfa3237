"""The base of every distillation method module and the registry that builds them by name.

A method is a thin `nn.Module` around functions of `kdlab.losses.functional`: it holds the
method's trainable parts (adapters, fused-feature convs, discriminators) and returns a dict
of *unweighted* named terms. Each term has a default weight (the paper's λ); a recipe entry
multiplies all of a method's terms by its own weight.

Taps: a method names the model tensors it reads by *role* (``default_taps``, e.g.
``{"logits": "head_logits"}``). A recipe may point a role at another tap, for both sides
(``taps: {logits: logits}``) or per side (``taps: {feat: {student: stage3, teacher: stage5}}``).
The role ``"stages"`` with tap ``"stages"`` expands to every encoder stage of that model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError

ALL_STAGES = "stages"


@dataclass
class MethodContext:
    """What a method may need to size its trainable parts."""

    student_channels: dict[str, int]  # tap name -> channels, for the student model
    teacher_channels: dict[str, int]
    student_stages: list[str]  # encoder stage tap names, shallow to deep
    teacher_stages: list[str]
    num_classes: int


@dataclass
class Step:
    """Where training is: `iteration` counts from 1 to `total`."""

    iteration: int
    total: int

    @property
    def decay(self) -> float:
        """BCD Eq. 8: r(t) = 1 − (t − 1) / t_max."""
        return 1.0 - (self.iteration - 1) / self.total


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize `x` to the spatial size of `like` (no-op when they already agree)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def channel_adapter(in_channels: int, out_channels: int) -> nn.Module:
    """1×1 conv mapping student channels to teacher channels (identity when equal)."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class DistillMethod(nn.Module):
    """Base class; subclasses set `name`, `default_taps`, `default_weights` and implement `terms`."""

    name: ClassVar[str]
    default_taps: ClassVar[dict[str, str]] = {"logits": "head_logits"}
    default_weights: ClassVar[dict[str, float]] = {}
    # Terms that are not a divergence from the teacher (an adversary's score, of either sign): the
    # matched weight rule scales them with the others but does not count their start magnitude.
    adversarial_terms: ClassVar[frozenset[str]] = frozenset()
    needs_image: ClassVar[bool] = False

    def __init__(self, ctx: MethodContext, taps: dict | None = None):
        super().__init__()
        self.ctx = ctx
        self.taps = self._resolve_taps(taps or {})

    def _resolve_taps(self, overrides: dict) -> dict[str, dict[str, list[str] | str]]:
        unknown = set(overrides) - set(self.default_taps)
        if unknown:
            raise ConfigError(f"method {self.name!r}: unknown tap role(s) {sorted(unknown)}; "
                              f"roles: {sorted(self.default_taps)}")
        resolved = {}
        for role, default in self.default_taps.items():
            choice = overrides.get(role, default)
            sides = choice if isinstance(choice, dict) else {"student": choice, "teacher": choice}
            if set(sides) != {"student", "teacher"}:
                raise ConfigError(f"method {self.name!r}: taps.{role} must name a tap or "
                                  f"{{student: ..., teacher: ...}}, got {choice!r}")
            resolved[role] = {side: self._expand(side, tap, role) for side, tap in sides.items()}
        return resolved

    def _expand(self, side: str, tap: str, role: str):
        channels = getattr(self.ctx, f"{side}_channels")
        if tap == ALL_STAGES:
            return list(getattr(self.ctx, f"{side}_stages"))
        if tap not in channels:
            raise ConfigError(f"method {self.name!r}: taps.{role}: the {side} has no tap {tap!r}; "
                              f"available: {sorted(channels)}")
        return tap

    def tap_names(self, side: str) -> set[str]:
        names = set()
        for sides in self.taps.values():
            tap = sides[side]
            names.update(tap if isinstance(tap, list) else [tap])
        return names

    def channels(self, side: str, role: str) -> int | list[int]:
        table = getattr(self.ctx, f"{side}_channels")
        tap = self.taps[role][side]
        return [table[t] for t in tap] if isinstance(tap, list) else table[tap]

    def select(self, outputs: dict, side: str) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The method's view of one model's outputs: role -> tensor (or list, for stage lists)."""
        view = {}
        for role, sides in self.taps.items():
            tap = sides[side]
            view[role] = [outputs[t] for t in tap] if isinstance(tap, list) else outputs[tap]
        return view

    def forward(self, student: dict, teacher: dict, batch: dict, step: Step) -> dict[str, torch.Tensor]:
        return self.terms(self.select(student, "student"), self.select(teacher, "teacher"), batch, step)

    def terms(self, student: dict, teacher: dict, batch: dict, step: Step) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def schedule(self, step: Step) -> float:
        """A factor on all of this method's weights at `step` (1 unless the method has a schedule)."""
        return 1.0


REGISTRY: dict[str, type[DistillMethod]] = {}


def register(cls: type[DistillMethod]) -> type[DistillMethod]:
    REGISTRY[cls.name] = cls
    return cls


def method_options(cls: type[DistillMethod]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [name for name in params if name not in ("self", "ctx", "taps")]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_options(name: str, options: dict) -> None:
    """A registered method name, its known options, and numbers where its defaults are numbers."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown distillation method {name!r}; valid: {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    unknown = set(options) - set(method_options(cls))
    if unknown:
        raise ConfigError(f"method {name!r}: unknown option(s) {sorted(unknown)}; valid: {method_options(cls)}")
    params = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        if is_number(params[key].default) and not is_number(value):
            raise ConfigError(f"method {name!r}: option {key} must be a number, got {value!r}")


def build_method(name: str, ctx: MethodContext, taps: dict | None = None, options: dict | None = None) -> DistillMethod:
    """Instantiate a registered method; unknown names and options fail with the valid ones listed."""
    options = dict(options or {})
    check_options(name, options)
    return REGISTRY[name](ctx, taps=taps, **options)
