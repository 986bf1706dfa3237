"""Dry runs of every paper configuration (`configs/paper/`, listed in `configs/paper/index.yaml`).

Each teacher config is trained and each student config distilled from it with the paper's own
recipe, 2 iterations and the final evaluation, on CPU, on a tiny tree of its dataset's real format
(`write_fixture`). Only what must shrink is overridden: the crop, base scale, test resize and
sliding window (by about 16x), batch 2, 2 iterations, no ImageNet download
(`model.encoder_weights=null`), 1 thread. Architecture, encoder, depth, output stride, the
training pipeline's options, the evaluation mode and the recipe are the config's own.
`pytest --durations=0 tests/test_paper_configs.py` prints each dry run's wall time.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from kdlab.cli import main
from kdlab.config import load_config
from kdlab.distill import distill_objective
from kdlab.engine import train_cohort
from kdlab.data.datasets.fixtures import write_fixture
from kdlab.paths import project_root

ROOT = project_root()
PAPER = ROOT / "configs" / "paper"
INDEX = yaml.safe_load((PAPER / "index.yaml").read_text())["pairs"]
TEACHERS = list(dict.fromkeys(pair["teacher"] for pair in INDEX))
SHRINK = 16  # crops, base scales, test resizes and windows are divided by this


def _side(value: int) -> int:
    """A crop or window side, shrunk, rounded up to a multiple of 32 (every model's stride divides it)."""
    return max(32, 32 * math.ceil(value / SHRINK / 32))


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, list) else [value, value]


def _flow(value) -> str:
    return "[" + ", ".join(str(v) for v in value) + "]"


def shrink_overrides(config: str) -> list[str]:
    """The overrides that make `config` a CPU dry run; everything else stays as written."""
    tree = yaml.safe_load((ROOT / config).read_text())
    data, ev = tree.get("data", {}), tree.get("eval", {})
    out = ["train.iterations=2", "train.batch_size=2", "train.eval_interval=0", "train.checkpoint_interval=2",
           "train.log_interval=1", "train.threads=1", "train.device=cpu", "model.encoder_weights=null",
           "data.num_workers=0", "eval.batch_size=2"]
    if "crop_size" in data:
        out.append(f"data.crop_size={_flow([_side(v) for v in _pair(data['crop_size'])])}")
    for key, value in (("data.base_size", data.get("base_size")), ("eval.resize", ev.get("resize"))):
        if value is not None:
            out.append(f"{key}={_flow([max(16, v // SHRINK) for v in value])}")
    if ev.get("mode") == "slide":
        window = [_side(v) for v in _pair(ev["window"])]
        stride = [max(1, w * s // o) for w, s, o in zip(window, _pair(ev["stride"]), _pair(ev["window"]))]
        out += [f"eval.window={_flow(window)}", f"eval.stride={_flow(stride)}"]
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("paper")
    yield workdir
    shutil.rmtree(workdir / "runs", ignore_errors=True)  # ~13 GB of paper-size checkpoints


@functools.cache
def _fixture_root(base: Path, dataset: str) -> Path:
    root = base / "data" / dataset
    write_fixture(dataset, root)
    return root


def _run_name(config: str) -> str:
    return config.removeprefix("configs/paper/").removesuffix(".yaml").replace("/", "-")


def _check_run(run_dir: Path, config: str) -> dict:
    written = yaml.safe_load((ROOT / config).read_text())
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("arch", "encoder", "encoder_depth", "output_stride"):
        assert resolved["model"].get(key) == written["model"].get(key), key
    assert written["model"]["encoder_weights"] in ("imagenet", None)
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["IoU"]) == len(results["class_names"]) and 0 <= results["mIoU"] <= 100
    return results


_TEACHER_RUNS: dict[str, Path] = {}


def _teacher_run(workdir: Path, config: str) -> Path:
    """The dry run of teacher `config` (trained once per module)."""
    if config not in _TEACHER_RUNS:
        dataset = yaml.safe_load((ROOT / config).read_text())["data"]["name"]
        root = _fixture_root(workdir, dataset)
        name = _run_name(config)
        assert main(["train", "-c", config, *shrink_overrides(config), f"data.root={root}",
                     f"out_dir={workdir / 'runs'}", f"name={name}"]) == 0
        _check_run(workdir / "runs" / name, config)
        _TEACHER_RUNS[config] = workdir / "runs" / name
    return _TEACHER_RUNS[config]


def test_every_paper_config_is_listed_documented_and_loads():
    listed = {p for pair in INDEX for p in (pair["teacher"], pair["student"])}
    on_disk = {str(p.relative_to(ROOT)) for p in PAPER.rglob("*.yaml")
               if p.name != "index.yaml" and "recipes" not in p.parts}
    assert listed == on_disk
    readme = (PAPER / "README.md").read_text()
    for config in sorted(on_disk):
        assert config in readme, config
        cfg = load_config([config])
        assert cfg.model.encoder_weights == "imagenet" or "scratch" in config
        assert cfg.data.root.startswith("data/")
    for pair in INDEX:
        for recipe in pair["recipes"]:
            assert recipe in readme, recipe


@pytest.mark.parametrize("config", TEACHERS, ids=_run_name)
def test_teacher_dry_run(workdir, config):
    _teacher_run(workdir, config)


@pytest.mark.parametrize("pair", INDEX, ids=lambda pair: _run_name(pair["student"]))
def test_student_dry_run(workdir, pair):
    """Distils the student with the paper's own recipe (the first of the pair's recipes)."""
    teacher = _teacher_run(workdir, pair["teacher"])
    config, recipe = pair["student"], pair["recipes"][0]
    root = _fixture_root(workdir, pair["dataset"])
    name = _run_name(config)
    assert main(["distill", "-c", config, "--recipe", recipe, "--teacher", str(teacher), *shrink_overrides(config),
                 f"data.root={root}", f"out_dir={workdir / 'runs'}", f"name={name}"]) == 0
    _check_run(workdir / "runs" / name, config)


def test_shrink_keeps_the_config_shape():
    over = dict(o.split("=", 1) for o in shrink_overrides("configs/paper/bpkd/cityscapes/pspnet_r18_d8_student.yaml"))
    assert over["data.crop_size"] == "[32, 64]" and over["data.base_size"] == "[128, 64]"
    assert over["eval.resize"] == "[128, 64]" and over["model.encoder_weights"] == "null"
    over = dict(o.split("=", 1) for o in
                shrink_overrides("configs/paper/bpkd/pascal_context59/pspnet_r18_d8_student.yaml"))
    assert over["eval.window"] == "[32, 32]" and over["eval.stride"] == "[21, 21]"


PROFILE = yaml.safe_load((ROOT / "configs" / "profiles" / "paper.yaml").read_text())


def _pair_of(config: str) -> dict:
    return next(pair for pair in INDEX if pair["student"] == config)


def _recipe_runs() -> list[tuple[str, dict]]:
    """Every recipe of configs/paper/*/recipes/ and of the paper profile (its comparison and ablations),
    each on the pair that lists it, else on the profile's pair."""
    profile_pair = _pair_of(PROFILE["student"]["config"])
    ablations = [r for group in PROFILE["ablations"].values() if isinstance(group, list) for r in group]
    recipes = [*sorted(str(p.relative_to(ROOT)) for p in PAPER.glob("*/recipes/*.yaml")), *PROFILE["recipes"], *ablations]
    runs = {}
    for recipe in recipes:
        pair = next((p for p in INDEX if recipe in p["recipes"]), profile_pair)
        if recipe != pair["recipes"][0]:  # the pair's first recipe has its own dry run above
            runs.setdefault(recipe, pair)
    return list(runs.items())


def _recipe_cohorts() -> list[tuple[dict, list[str]]]:
    """The recipes of `_recipe_runs` grouped by their pair: each group dry-runs as one cohort."""
    groups: dict[str, tuple[dict, list[str]]] = {}
    for recipe, pair in _recipe_runs():
        groups.setdefault(pair["student"], (pair, []))[1].append(recipe)
    return list(groups.values())


@pytest.mark.parametrize("pair, recipes", _recipe_cohorts(),
                         ids=lambda v: _run_name(v["student"]) if isinstance(v, dict) else str(len(v)))
def test_recipe_dry_runs(workdir, pair, recipes):
    """Every other recipe on its pair, trained as one cohort (one data stream and teacher pass, as the
    paper profile trains them; `kdlab.engine.train_cohort`)."""
    teacher = _teacher_run(workdir, pair["teacher"])
    config = pair["student"]
    overrides = [*shrink_overrides(config), f"data.root={_fixture_root(workdir, pair['dataset'])}",
                 f"out_dir={workdir / 'runs'}", f"distill.teacher={teacher}"]
    cfgs = [load_config([config], [*overrides, f"name={_run_name(config)}-{Path(recipe).stem}",
                                   f"distill.recipe={recipe}"]) for recipe in recipes]
    outcomes = train_cohort(cfgs, objective_factory=distill_objective, progress=False)
    for recipe, cfg, outcome in zip(recipes, cfgs, outcomes):
        assert isinstance(outcome, Path), f"{recipe}: {outcome}"
        _check_run(cfg.run_dir, config)


def test_paper_profile_resolves(tmp_path):
    """`make figures PROFILE=paper ARGS="--dataset D --data-root DIR"`: the BPKD Table 1 PSPNet pair,
    every comparison recipe and ablation group resolves, ablations on BPKD's 512x512 / 40k schedule."""
    from kdlab.pipeline import ablation_configs, load_profile, student_config, teacher_config

    profile = load_profile("paper", runs_root=tmp_path, dataset="ade20k", data_root="/datasets/ade")
    teacher = teacher_config(profile)
    assert (teacher.model.arch, teacher.model.encoder, teacher.model.output_stride) == ("PSPNet", "resnet101", 8)
    assert (teacher.data.name, teacher.data.root) == ("ade20k", "/datasets/ade")
    student = student_config(profile, 0, "bpkd")
    assert (student.model.encoder, student.model.encoder_depth, student.data.crop_size) == ("resnet18", 5, [512, 1024])
    assert student.train.iterations == 80000 and student.model.encoder_weights == "imagenet"
    for recipe in profile.recipes:
        assert student_config(profile, 0, recipe).distill.recipe == recipe
    for group in profile.ablations:
        configs = ablation_configs(profile, group)
        assert len(configs) >= 3
        for cfg in configs.values():
            assert cfg.data.crop_size == 512 and cfg.train.iterations == 40000
