"""Distillation: recipes (YAML lists of methods with weights) and the objective that trains a student.

A recipe file::

    description: BPKD with the paper's weights
    methods:
      - method: bpkd            # a name from kdlab.losses.REGISTRY
        weight: 1.0             # multiplies every term of this method
        term_weights: {edge: 50, body: 20}   # the paper's λ per term (defaults: the method's own)
        taps: {logits: head_logits}          # role -> tap, or role -> {student: .., teacher: ..}
        options: {alpha: 2.0, edge_width: 7}
        name: bpkd              # optional: the log prefix (needed when a method appears twice)

The total loss is ``ce + ramp(t) · kd`` with ``kd = Σ_entries weight · schedule(t) · Σ_terms term_weight · term``:
ramp is the optional linear warm-up of ``distill.warmup_iters``, schedule a method's own (BCD's r(t)).
Terms are logged unweighted, so their magnitudes can be compared across runs.

A method may fit some of its parts before distillation (BCD's teacher side): it defines
``needs_prepare() -> bool`` and ``prepare(teacher, batches)``, where ``teacher`` is the frozen teacher
`SegModel` and ``batches(n)`` returns the first ``n`` batches of the run's training stream (CPU
tensors). `DistillObjective` calls it once, at the first training-mode forward while
``needs_prepare()`` is true (so not again on resume: the method's fitted state is in its
``state_dict``), with autocast off, and restores the global RNG afterwards, so that it draws nothing
from the run's stream (a run alone and in a cohort stay bit-identical); under DDP every rank then
takes rank 0's result.

A distilled run's checkpoint holds no copy of the frozen teacher, only its checkpoint's sha256: the
teacher is `distill.teacher`'s, and resuming with another teacher than the one a run started with is a
one-line `CheckpointError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdlab.checkpoint import (HASH_KEY, check_dataset_match, content_hash, load_checkpoint, model_from_state,
                              resolve_checkpoint_path)
from kdlab.config import RunConfig, named_yaml, read_yaml
from kdlab import distributed as ddp
from kdlab.engine import IterationBatches, build_data, segmentation_ce
from kdlab.errors import CheckpointError, ConfigError
from kdlab.losses import REGISTRY, MethodContext, Step, build_method
from kdlab.losses.base import check_options, is_number
from kdlab.models.zoo import SegModel
from kdlab.paths import project_root
from kdlab.runtime import restore_rng_state, rng_state

_ENTRY_KEYS = {"method", "name", "weight", "term_weights", "taps", "options"}


@dataclass
class RecipeEntry:
    method: str
    name: str
    weight: float = 1.0
    term_weights: dict = field(default_factory=dict)
    taps: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def recipe_path(recipe: str) -> Path:
    """A recipe file path, or the name of a file in configs/recipes/."""
    return named_yaml(recipe, recipe_dir(), "distill.recipe")


def recipe_dir() -> Path:
    """The shipped recipes: ``configs/recipes/`` of the project."""
    return project_root() / "configs" / "recipes"


def load_recipe(recipe: str) -> list[RecipeEntry]:
    path = recipe_path(recipe)
    tree = read_yaml(path)
    methods = tree.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{path}: a recipe needs a non-empty 'methods' list")
    entries = []
    for i, item in enumerate(methods):
        if not isinstance(item, dict) or "method" not in item:
            raise ConfigError(f"{path}: methods[{i}] must be a mapping with a 'method' key")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(f"{path}: methods[{i}]: unknown key(s) {sorted(unknown)}; valid: {sorted(_ENTRY_KEYS)}")
        if item["method"] not in REGISTRY:
            raise ConfigError(f"{path}: methods[{i}]: unknown method {item['method']!r}; valid: {sorted(REGISTRY)}")
        _check_entry_values(item, f"{path}: methods[{i}]")
        entries.append(RecipeEntry(name=item.get("name", item["method"]), **{k: v for k, v in item.items() if k != "name"}))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two entries share a name; give them distinct 'name' keys")
    return entries


def _check_entry_values(item: dict, where: str) -> None:
    """Numbers where a recipe entry needs numbers, mappings where it needs mappings."""
    if "weight" in item and not is_number(item["weight"]):
        raise ConfigError(f"{where}: weight must be a number, got {item['weight']!r}")
    for key in ("term_weights", "taps", "options"):
        if not isinstance(item.get(key, {}), dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {item[key]!r}")
    for term, value in item.get("term_weights", {}).items():
        if not is_number(value):
            raise ConfigError(f"{where}: term_weights.{term} must be a number, got {value!r}")
    try:
        check_options(item["method"], item.get("options", {}))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


class TeacherPass:
    """The frozen teacher's taps for the current batch, computed once for every objective that reads
    them: the runs of a cohort share one, so the teacher runs once per batch, not once per student."""

    def __init__(self, teacher: SegModel, digest: str | None = None):
        self.model = teacher.eval().requires_grad_(False)
        self.digest = digest  # sha256 of the teacher's checkpoint (None: not from a checkpoint)
        self.taps: set[str] = set()  # the union of what its readers need
        self._key: tuple[torch.Tensor, int] | None = None
        self._outputs: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, iteration: int) -> dict[str, torch.Tensor]:
        if self._key is None or self._key[0] is not image or self._key[1] != iteration:
            self._outputs = self.model.forward_taps(image, self.taps)
            self._key = (image, iteration)
        return self._outputs


class DistillObjective(nn.Module):
    """Cross-entropy plus the weighted terms of every recipe entry, against a frozen teacher."""

    def __init__(self, teacher: TeacherPass, student: SegModel, entries: list[RecipeEntry], num_classes: int,
                 total_iterations: int, warmup_iters: int = 0,
                 training_batches: Callable[[int], list[dict]] | None = None, match_ratio: float | None = None):
        super().__init__()
        self.match_ratio = match_ratio  # the matched weight rule's ratio (`match_weights`); None: the recipe's weights
        self.training_batches = training_batches  # for `prepare` (module docstring); None: the current batch
        self.teacher_pass = teacher
        self.teacher = teacher.model  # a submodule, so that it follows .to(device) and eval()
        ctx = MethodContext(student.tap_channels, self.teacher.tap_channels, student.stage_names,
                            self.teacher.stage_names, num_classes)
        self.methods = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.counted: set[str] = set()  # the terms whose start magnitude the matched weight rule counts
        for entry in entries:
            method = build_method(entry.method, ctx, entry.taps, entry.options)
            unknown = set(entry.term_weights) - set(method.default_weights)
            if unknown:
                raise ConfigError(f"recipe entry {entry.name!r}: unknown term(s) {sorted(unknown)}; "
                                  f"terms: {sorted(method.default_weights)}")
            self.methods[entry.name] = method
            for term, default in method.default_weights.items():
                self.weights[f"{entry.name}.{term}"] = entry.weight * float(entry.term_weights.get(term, default))
                if term not in method.adversarial_terms:
                    self.counted.add(f"{entry.name}.{term}")
        self.student_taps = tuple(sorted(set().union(*(m.tap_names("student") for m in self.methods.values()))))
        self.teacher_taps = tuple(sorted(set().union(*(m.tap_names("teacher") for m in self.methods.values()))))
        teacher.taps.update(self.teacher_taps)
        self.total_iterations = total_iterations
        self.warmup_iters = warmup_iters
        self.register_state_dict_post_hook(_without_teacher_weights)
        self.register_load_state_dict_pre_hook(_with_the_loaded_teacher)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def ramp(self, iteration: int) -> float:
        return min(1.0, iteration / self.warmup_iters) if self.warmup_iters else 1.0

    def prepare_methods(self, batch: dict) -> None:
        """Run the pending methods' `prepare` once (module docstring)."""
        pending = [m for m in self.methods.values() if getattr(m, "needs_prepare", lambda: False)()]
        if not pending:
            return
        source = self.training_batches or (lambda n: [batch])
        state = rng_state()
        try:
            with torch.autocast(batch["image"].device.type, enabled=False):
                for method in pending:
                    method.prepare(self.teacher, source)
        finally:
            restore_rng_state(state)
        ddp.broadcast_state(*pending)

    def forward(self, student: dict, batch: dict, iteration: int) -> dict[str, torch.Tensor]:
        if self.training:
            self.prepare_methods(batch)
        teacher = self.teacher_pass(batch["image"], iteration)
        ce = segmentation_ce(student, batch)
        step = Step(iteration, self.total_iterations)
        terms, scale = {"ce": ce}, {}
        for name, method in self.methods.items():
            terms.update({f"{name}.{term}": value for term, value in method(student, teacher, batch, step).items()})
            scale.update({f"{name}.{term}": method.schedule(step) for term in method.default_weights})
        if self.training and self.match_ratio is not None:
            self.match_weights(terms, scale)
        kd = sum(self.weights[name] * scale[name] * terms[name] for name in self.weights if name in terms)
        return {"loss": ce + self.ramp(iteration) * kd, "kd": kd, **terms}

    def match_weights(self, terms: dict[str, torch.Tensor], scale: dict[str, float]) -> None:
        """The matched weight rule (README, "The weight rule"), once, at a run's first step: every weight
        times one factor s = match_ratio · CE / Σ_counted wᵢ·tᵢ on that step's batch (averaged over DDP
        ranks), so the recipe's terms start at match_ratio × CE whatever their paper λ; the ratios between
        a recipe's terms stay the paper's. Adversarial terms are scaled but not counted; a recipe with
        nothing counted keeps its weights. The scaled weights are checkpointed (`extra_state`)."""
        ce = terms["ce"].detach().float()
        counted = sum((self.weights[name] * scale[name] * terms[name].detach().float()
                       for name in self.counted if name in terms), ce.new_zeros(()))
        ce, counted = ddp.all_reduce_mean(torch.stack([ce, counted])).tolist()
        factor = self.match_ratio * ce / counted if counted > 0 else 1.0
        self.weights = {name: weight * factor for name, weight in self.weights.items()}
        self.match_ratio = None  # matched: from here on the weights are fixed

    def extra_state(self) -> dict:
        """What a checkpoint keeps beside the state_dict: the methods' own (optimisers, memories) and the
        teacher checkpoint's sha256, which stands for the teacher (its weights are not saved)."""
        return {"methods": {name: m.extra_state() for name, m in self.methods.items() if hasattr(m, "extra_state")},
                "teacher_sha256": self.teacher_pass.digest, "weights": dict(self.weights)}

    def load_extra_state(self, state: dict) -> None:
        saved, now = state.get("teacher_sha256"), self.teacher_pass.digest
        if saved and now and saved != now:
            raise CheckpointError(f"distill.teacher: not the teacher this run started with (its checkpoint's sha256 "
                                  f"is {now[:12]}..., the run's {saved[:12]}...); resume with the original teacher")
        methods = state["methods"] if "methods" in state else state  # older checkpoints: the methods' alone
        if "weights" in state:  # the weights the run trained with (under the matched rule: as matched)
            self.weights, self.match_ratio = dict(state["weights"]), None
        for name, value in methods.items():
            self.methods[name].load_extra_state(value)


def _without_teacher_weights(module: DistillObjective, state_dict: dict, prefix: str, _metadata) -> None:
    """A checkpoint leaves out the frozen teacher (`DistillObjective.extra_state` names it by sha256)."""
    for key in [key for key in state_dict if key.startswith(f"{prefix}teacher.")]:
        del state_dict[key]


def _with_the_loaded_teacher(module: DistillObjective, state_dict: dict, prefix: str, *_args) -> None:
    """Loading keeps the teacher loaded from `distill.teacher`: older checkpoints carried a copy of it."""
    state_dict.update(module.teacher.state_dict(prefix=f"{prefix}teacher."))


def load_teacher(cfg: RunConfig, meta: dict, device: torch.device) -> tuple[SegModel, str]:
    """The teacher of `cfg` and its checkpoint's sha256."""
    path = resolve_checkpoint_path(cfg.distill.teacher)
    state = load_checkpoint(path)
    check_dataset_match(state, meta, path, role="teacher")
    return model_from_state(state, path).to(device), state.get(HASH_KEY) or content_hash(state)


def check_distill_config(cfg: RunConfig) -> list[RecipeEntry]:
    """The recipe loads and the teacher checkpoint exists: checked before any data is generated."""
    if not cfg.distill.recipe:
        raise ConfigError("distill.recipe: a recipe (name or YAML path) is required")
    if not cfg.distill.teacher:
        raise ConfigError("distill.teacher: a teacher checkpoint (file or run directory) is required")
    entries = load_recipe(cfg.distill.recipe)
    resolve_checkpoint_path(cfg.distill.teacher)
    return entries


def teacher_pass(cfg: RunConfig, meta: dict, device: torch.device) -> TeacherPass:
    """The teacher of `cfg`, loaded once for a cohort of students."""
    return TeacherPass(*load_teacher(cfg, meta, device))


def training_batches(cfg: RunConfig) -> Callable[[int], list[dict]]:
    """``batches(n)``: the first ``n`` (global) batches of `cfg`'s training stream, augmented as in
    training (each sample's augmentation has its own seed, so nothing is drawn from the global RNG)."""

    def batches(n: int) -> list[dict]:
        train_set, _, _ = build_data(cfg)
        sampler = IterationBatches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, n)
        return [torch.utils.data.default_collate([train_set[key] for key in sampler.batch(it)]) for it in range(n)]

    return batches


def distill_objective(cfg: RunConfig, student: SegModel, meta: dict, device: torch.device,
                      teacher: TeacherPass | None = None) -> DistillObjective:
    """The objective factory `kdlab.engine.train_cohort` calls for a distillation run (`teacher`: the
    cohort's shared teacher; loaded here when not given)."""
    entries = check_distill_config(cfg)
    teacher = teacher or teacher_pass(cfg, meta, device)
    match_ratio = cfg.distill.match_ratio if cfg.distill.weight_rule == "matched" else None
    objective = DistillObjective(teacher, student, entries, meta["num_classes"], cfg.train.iterations,
                                 cfg.distill.warmup_iters, training_batches(cfg), match_ratio)
    objective.run_files = {"recipe.yaml": recipe_path(cfg.distill.recipe).read_text()}
    return objective


# `kdlab.engine.train_cohort` checks every config before building the data, then loads the teacher once.
distill_objective.check = check_distill_config
distill_objective.shared = teacher_pass
