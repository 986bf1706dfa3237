"""Typed run configuration: YAML files plus dotted command-line overrides.

Every key is checked against the dataclasses below, so a typo fails before any work
starts, with the valid keys listed. The fully resolved config is written into the run
directory and is enough to reproduce the run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import ConfigError
from kdlab.paths import project_path


@dataclass
class DataConfig:
    name: str = "embedded"  # "embedded" (generated on first use) or "folder" (a dataset in the layout contract)
    root: str = "data/embedded"  # dataset directory; for "embedded", where the generated copy is cached
    seed: int = 0  # embedded benchmark: generator seed
    image_size: int = 128  # embedded benchmark: side of the square images
    num_train: int = 2000  # embedded benchmark: training images
    num_val: int = 200  # embedded benchmark: validation images
    crop_size: int | list[int] = 128  # training crop: a side, or [height, width] (pixels; papers crop [512, 1024] on Cityscapes)
    scale_min: float = 0.5  # random scale range for training augmentation (with base_size: mmseg's ratio_range)
    scale_max: float = 2.0
    base_size: list[int] | None = None  # mmseg's RandomResize scale as [long side, short side], e.g. [2048, 1024]: the image is resized (ratio kept) to fit base_size x a ratio in [scale_min, scale_max]; None = the ratio scales the image itself
    cat_max_ratio: float = 1.0  # mmseg's RandomCrop: redraw a crop (up to 10 times) while one class covers this fraction or more of its valid pixels; 1.0 = off
    photometric: bool = False  # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue, each with p = 0.5)
    train_split: str | None = None  # the split trained on; None = the dataset's usual one (VOC: train_aug; PPD trains on train)
    eval_split: str | None = None  # the split evaluated on; None = the dataset's usual one (val; CamVid, COCO-Stuff: test)
    num_workers: int | None = None  # DataLoader worker processes (0 = load in the main process); None = 0 for the embedded benchmark, min(4, CPUs per process) for other datasets


@dataclass
class TrainConfig:
    iterations: int = 1000  # total optimisation steps (poly schedule runs over these)
    batch_size: int = 8  # images per step (the global batch: under torchrun each of N processes takes batch_size / N)
    lr: float = 0.01  # initial SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    poly_power: float = 0.9  # lr = lr0 * (1 - it / iterations) ** poly_power
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    seed: int = 0  # seeds model init, data order and augmentation
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # mixed precision (autocast): on CUDA always; on CPU only with amp_dtype set explicitly
    amp_dtype: str | None = None  # autocast dtype: "float16" (with a GradScaler) or "bfloat16"; None = float16 on CUDA, off on CPU
    sync_bn: bool = True  # under torchrun (DDP): BatchNorm statistics over the global batch (SyncBN); no effect on one process
    log_interval: int = 10  # iterations between log lines
    eval_interval: int = 500  # iterations between validation runs (0 = only at the end)
    checkpoint_interval: int = 500  # iterations between checkpoints (the last one is always written)
    threads: int | None = None  # torch CPU threads; None = torch's default
    compile: str | None = None  # torch.compile backend for the student's encoder and decoder ("inductor"; "aot_eager" to debug); None = eager (README: Cost)


@dataclass
class EvalConfig:
    mode: str = "whole"  # "whole" image or "slide" (sliding window, for images larger than the crop)
    window: int | list[int] = 128  # sliding-window side, or [height, width] (Cityscapes papers: [512, 1024])
    stride: int | list[int] = 96  # sliding-window step, or [height, width] (Cityscapes papers: [341, 682]); at most the window
    resize: list[int] | None = None  # keep-ratio test resize to fit [long side, short side] (Cityscapes [2048, 1024], ADE20K [2048, 512]); predictions are resized back to the label's size; None = the image's own size
    scales: list[float] = field(default_factory=lambda: [1.0])  # test-time scales (of the resize size, or of the image); several: softmax scores averaged (mmseg's TTA)
    flip: bool = False  # also predict the horizontally flipped image and average (mmseg's TTA)
    batch_size: int = 16  # images per evaluation batch
    band_widths: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 7, 10, 15, 20])  # trimap band widths (px); 1-3 are the narrow bands the summary tables report beside the default 7
    relative_band_widths: list[float] = field(default_factory=list)  # trimap bands as fractions of the image height, round(f x H) px (at least 1), e.g. 0.0068 = the papers' 7 px at 1024 px; scored as trimap_relative_curve
    max_images: int | None = None  # evaluate only the first N validation images (None = all)


@dataclass
class DistillConfig:
    teacher: str | None = None  # teacher checkpoint (a .pt file or a run directory); None = supervised training
    recipe: str | None = None  # recipe YAML path or the name of a file in configs/recipes/
    warmup_iters: int = 0  # distillation loss weights ramp linearly from 0 over these iterations
    weight_rule: str = "paper"  # 'paper': the recipe's weights as written; 'matched': every weight times one factor,
    #                             set at the first step, so that the distillation terms start at match_ratio x CE
    match_ratio: float = 1.0  # weight_rule 'matched': the terms' start magnitude in units of the first batch's CE
    check_finite: bool = True  # stop with the term named when a loss term becomes NaN/inf


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored in checkpoints."""

    arch: str = "DeepLabV3Plus"  # one of kdlab.models.ARCHITECTURES
    encoder: str = "resnet18"  # any smp encoder name
    encoder_weights: str | None = None  # None = random init; "imagenet" downloads weights (opt-in)
    encoder_depth: int | None = None  # None = the architecture's default (PSPNet: 3, others: 5)
    output_stride: int | None = None  # 8 or 16 dilates the encoder (papers' D8 models); None = default
    extra: dict = field(default_factory=dict)  # further keyword arguments for the smp constructor


@dataclass
class RunConfig:
    name: str = "run"  # run name: the run directory is <out_dir>/<name>
    out_dir: str = "runs"  # parent directory of run directories
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def run_dir(self) -> Path:
        return project_path(self.out_dir) / self.name


# Config keys that hold paths: relative values are under the project root (`kdlab.paths`).
PATH_KEYS = ("out_dir", "data.root", "distill.teacher", "distill.recipe")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp, key: str):
    """Check (and where lossless, convert) `value` to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(values) - set(names)
    if unknown:
        bad = sorted(unknown)[0]
        raise ConfigError(f"unknown config key {prefix + bad!r}; valid keys under {prefix or 'the top level'}: {names}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        key = prefix + name
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of options, got {value!r}")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _positive(value) -> bool:
    return value > 0


def _at_least(low):
    return lambda value: value >= low


def _side_or_pair(value) -> bool:
    """A positive side, or a [height, width] pair of positive sides."""
    if isinstance(value, list):
        return len(value) == 2 and min(value) > 0
    return value > 0


def _is_compile_backend(value) -> bool:
    import torch._dynamo  # slow to import: only when a backend is named

    return value in torch._dynamo.list_backends(exclude_tags=())


def _long_short(value) -> bool:
    return len(value) == 2 and min(value) > 0


WEIGHT_RULES = ("paper", "matched")

# How a run computes, not what it computes: a resumed run may change these (`kdlab train --resume`),
# and a finished run is reused whatever they were (`kdlab.pipeline.config_changes`).
RUNTIME_KEYS = ("train.device", "train.threads", "train.compile", "data.num_workers")

# key → (check, what it must be): every value is checked before any work starts.
VALUE_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.image_size": (_at_least(16), "at least 16 (pixels)"),
    "data.num_train": (_positive, "a positive number of images"),
    "data.num_val": (_positive, "a positive number of images"),
    "data.crop_size": (_side_or_pair, "a positive side in pixels or a [height, width] pair of them"),
    "data.scale_min": (_positive, "positive"),
    "data.base_size": (_long_short, "a [long side, short side] pair of positive pixel counts, or null"),
    "data.cat_max_ratio": (lambda v: 0 < v <= 1, "in (0, 1] (1.0 = off)"),
    "data.num_workers": (_at_least(0), "0 or more, or null (automatic)"),
    "train.iterations": (_positive, "a positive number of steps"),
    "train.batch_size": (_positive, "a positive number of images"),
    "train.lr": (_positive, "positive"),
    "train.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.weight_decay": (_at_least(0), "0 or more"),
    "train.poly_power": (_at_least(0), "0 or more"),
    "train.grad_clip": (_positive, "positive, or null for no clipping"),
    "train.amp_dtype": (lambda v: v in ("float16", "bfloat16"), "'float16', 'bfloat16' or null (float16 on CUDA, off on CPU)"),
    "train.log_interval": (_positive, "a positive number of steps"),
    "train.eval_interval": (_at_least(0), "0 (only at the end) or a positive number of steps"),
    "train.checkpoint_interval": (_positive, "a positive number of steps"),
    "train.threads": (_positive, "a positive number of threads, or null"),
    "train.compile": (_is_compile_backend, "a torch.compile backend such as 'inductor' or 'aot_eager', or null (eager)"),
    "eval.mode": (lambda v: v in ("whole", "slide"), "'whole' or 'slide'"),
    "eval.window": (_side_or_pair, "a positive side in pixels or a [height, width] pair of them"),
    "eval.stride": (_side_or_pair, "a positive step in pixels or a [height, width] pair of them"),
    "eval.resize": (_long_short, "a [long side, short side] pair of positive pixel counts, or null"),
    "eval.scales": (lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of positive scales"),
    "eval.batch_size": (_positive, "a positive number of images"),
    "eval.band_widths": (lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of widths of 1 px or more"),
    "eval.relative_band_widths": (lambda v: all(0 < f < 1 for f in v), "a list of fractions in (0, 1) of the image height"),
    "eval.max_images": (_positive, "a positive number of images, or null for all"),
    "distill.warmup_iters": (_at_least(0), "0 or more steps"),
    "distill.weight_rule": (lambda v: v in WEIGHT_RULES, "'paper' (the recipe's weights) or 'matched' (README: the weight rule)"),
    "distill.match_ratio": (_positive, "positive (the distillation terms' start magnitude in units of CE)"),
}


def check_values(cfg: RunConfig) -> RunConfig:
    """Every value of ``cfg`` within its range (`VALUE_RANGES`), else a ConfigError naming the key."""
    values = flatten(config_to_dict(cfg))
    for key, (valid, expected) in VALUE_RANGES.items():
        value = values[key]
        if value is not None and not valid(value):
            raise ConfigError(f"{key}: must be {expected}, got {value!r}")
    if cfg.data.scale_max < cfg.data.scale_min:
        raise ConfigError(f"data.scale_max: must be at least data.scale_min ({cfg.data.scale_min}), "
                          f"got {cfg.data.scale_max!r}")
    window, stride = (v if isinstance(v, list) else [v, v] for v in (cfg.eval.window, cfg.eval.stride))
    if stride[0] > window[0] or stride[1] > window[1]:  # a gap between windows would leave pixels unpredicted
        raise ConfigError(f"eval.stride: must be at most eval.window ({cfg.eval.window!r}) on each side, "
                          f"got {cfg.eval.stride!r}")
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.02"`` → ``("train.lr", 0.02)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.iterations=200")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err.problem})") from err


def read_yaml(path: str | Path, error: type[Exception] = ConfigError) -> dict:
    """A YAML mapping read with `safe_load` (a relative path is under the project root); a missing or
    malformed file raises `error` naming it."""
    path = project_path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{path}: invalid YAML ({getattr(err, 'problem', err)})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return data


def named_yaml(name: str, directory: Path, option: str) -> Path:
    """`name` itself when it is a YAML path (relative: under the project root), else
    ``directory/<name>.yaml`` (the valid names listed if missing)."""
    if is_yaml_path(name):
        return project_path(name)
    candidate = directory / f"{name}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ConfigError(f"{option}: no file named {name!r} in {directory.name}/; available: {names}")
    return candidate


def is_yaml_path(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml")


def load_config(paths: list[str | Path] = (), overrides: list[str] = ()) -> RunConfig:
    """Merge YAML files (later ones win) and dotted overrides into a checked `RunConfig`."""
    tree: dict = {}
    for path in paths:
        for key, value in flatten(read_yaml(path)).items():
            _set_dotted(tree, key, value)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return check_values(_build(RunConfig, tree, ""))


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested mapping as dotted keys (``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "extra":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_to_dict(cfg) -> dict:
    return asdict(cfg)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with dotted overrides applied (checked as in `load_config`)."""
    tree = config_to_dict(cfg)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return config_from_dict(tree)


def config_from_dict(tree: dict) -> RunConfig:
    return check_values(_build(RunConfig, tree, ""))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
