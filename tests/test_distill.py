"""Distillation runs: every shipped recipe trains, logs its terms and lowers them; bad input fails early."""

import json
import math
from pathlib import Path

import pytest
import torch

from kdlab.checkpoint import save_checkpoint
from kdlab.config import load_config
from kdlab.distill import distill_objective, load_recipe, recipe_dir
from kdlab.engine import NonFiniteLoss, build_data, train, train_cohort
from kdlab.errors import CheckpointError, ConfigError
from kdlab.models import build_model

RECIPES = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
# Terms that a run is not expected to lower: the adversarial ones and the logged temperature.
NOT_MONOTONE = ("holistic", "critic", "temperature")


def _fixed_batch_overrides(tiny_overrides, teacher, recipe, iterations):
    """Four images, no scaling: each step sees the same images, so distillation terms must fall."""
    return tiny_overrides + [f"distill.teacher={teacher}", f"distill.recipe={recipe}", f"name={recipe}",
                             "data.scale_min=1.0", "data.scale_max=1.0", "train.batch_size=4",
                             f"train.iterations={iterations}", "train.checkpoint_interval=1000",
                             "train.lr=0.01", "train.grad_clip=1.0", "data.num_train=4"]


@pytest.fixture(scope="module")
def recipe_runs(tiny_overrides_in, tiny_teacher, tmp_path_factory):
    """Every shipped recipe, 8 steps on four fixed images, trained as one cohort: one data stream and one
    teacher pass per step, each run ending where it would alone (tests/test_cohort.py). recipe → outcome."""
    from kdlab.data import ensure_embedded

    work = tmp_path_factory.mktemp("recipes")
    ensure_embedded(work / "four", seed=1, image_size=64, num_train=4, num_val=2, progress=False)
    base = tiny_overrides_in(work / "runs")
    cfgs = [load_config(["configs/student.yaml"], _fixed_batch_overrides(base, tiny_teacher, recipe, 8)
                        + [f"data.root={work / 'four'}", "data.num_val=2"]) for recipe in RECIPES]
    return dict(zip(RECIPES, train_cohort(cfgs, objective_factory=distill_objective, progress=False)))


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_trains_and_lowers_its_distillation_terms(recipe, recipe_runs):
    run = recipe_runs[recipe]
    assert isinstance(run, Path), f"{recipe}: {run}"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and (run / "results.json").exists()
    assert (run / "recipe.yaml").read_text() == (recipe_dir() / f"{recipe}.yaml").read_text()
    weights = {term: entry["weight"] for term, entry in json.loads((run / "start_terms.json").read_text()).items()}
    fixed = [sum(w * r[term] for term, w in weights.items() if not term.endswith(NOT_MONOTONE)) for r in log]
    assert min(fixed[-3:]) < fixed[0], f"weighted distillation terms did not fall: {fixed}"
    assert log[0]["loss"] == pytest.approx(log[0]["ce"] + log[0]["kd"], rel=1e-5)


def test_teacher_is_frozen_and_student_gets_gradients(tiny_overrides, tiny_teacher):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tiny_teacher}",
                                                                 "distill.recipe=bpkd_bcd"])
    _, _, meta = build_data(cfg)
    student = build_model(cfg.model, meta["num_classes"])
    objective = distill_objective(cfg, student, meta, torch.device("cpu")).train()
    assert not objective.teacher.training
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 9, (2, 64, 64))
    terms = objective(student.forward_taps(images, objective.student_taps), {"image": images, "label": labels}, 1)
    terms["loss"].backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    bcd = objective.methods["bcd"]
    assert bcd.student_fusion.fuse.weight.grad is not None and bcd.teacher_fusion.fuse.weight.grad is None
    assert all(torch.equal(before[k], v) for k, v in objective.teacher.state_dict().items())


def test_cnn_teacher_distils_into_a_transformer_student(tiny_overrides, tiny_teacher):
    overrides = tiny_overrides + [f"distill.teacher={tiny_teacher}", "distill.recipe=bpkd_bcd", "name=segformer",
                                  "model.arch=Segformer", "model.encoder=mit_b0", "model.encoder_depth=null",
                                  "train.iterations=2"]
    run = train(load_config(["configs/student.yaml"], overrides), objective_factory=distill_objective, progress=False)
    assert (run / "results.json").exists()


@pytest.mark.parametrize("recipe_text, message", [
    ("methods:\n  - method: telepathy\n", "unknown method 'telepathy'"),
    ("methods:\n  - method: kd\n    options: {temprature: 2}\n", "unknown option"),
    ("methods:\n  - method: kd\n    taps: {logits: stage9}\n", "no tap 'stage9'"),
    ("methods:\n  - method: bpkd\n    term_weights: {edges: 5}\n", "unknown term"),
    ("methods: []\n", "non-empty"),
])
def test_bad_recipes_fail_before_training(recipe_text, message, tiny_overrides, tiny_teacher, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(recipe_text)
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tiny_teacher}",
                                                                 f"distill.recipe={recipe}", "name=bad"])
    with pytest.raises(ConfigError, match=message):
        train(cfg, objective_factory=distill_objective, progress=False)
    assert not cfg.run_dir.exists()


def test_teacher_from_another_dataset_is_refused(tiny_overrides, tiny_teacher, tmp_path):
    state = torch.load(Path(tiny_teacher) / "checkpoints" / "last.pt", weights_only=True)
    state["dataset"]["class_names"] = [f"c{i}" for i in range(9)]
    save_checkpoint(tmp_path / "other.pt", state)  # a consistent checkpoint of another dataset
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tmp_path / 'other.pt'}",
                                                                 "distill.recipe=kd"])
    with pytest.raises(CheckpointError, match="other class names"):
        train(cfg, objective_factory=distill_objective, progress=False)


def test_nan_term_stops_with_iteration_and_term_named(tiny_overrides, tiny_teacher):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tiny_teacher}",
                                                                 "distill.recipe=kd", "train.lr=1e30", "name=nan"])
    with pytest.raises(NonFiniteLoss, match=r"iteration \d+: loss term '[a-z.]+'"):
        train(cfg, objective_factory=distill_objective, progress=False)


def test_warmup_ramps_distillation_weight(tiny_overrides, tiny_teacher):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tiny_teacher}",
                                                                 "distill.recipe=kd", "distill.warmup_iters=4"])
    _, _, meta = build_data(cfg)
    objective = distill_objective(cfg, build_model(cfg.model, meta["num_classes"]), meta, torch.device("cpu"))
    assert [objective.ramp(i) for i in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]


def test_every_shipped_recipe_names_registered_methods():
    for recipe in RECIPES:
        assert load_recipe(recipe)


@pytest.mark.parametrize("entry, message", [
    ("{method: kd, weight: heavy}", "weight must be a number"),
    ("{method: kd, options: {temperature: hot}}", "option temperature must be a number"),
    ("{method: bpkd, term_weights: {edge: lots}}", "term_weights.edge must be a number"),
    ("{method: kd, options: [1]}", "options must be a mapping"),
])
def test_a_recipe_value_of_the_wrong_type_is_one_line_naming_it(tmp_path, entry, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"methods:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=rf"bad.yaml: methods\[0\]: .*{message}"):
        load_recipe(str(path))


def test_a_distilled_checkpoint_names_its_teacher_by_hash_instead_of_copying_it(tiny_overrides, tiny_teacher,
                                                                                tmp_path):
    import shutil

    from kdlab.checkpoint import HASH_KEY, load_checkpoint

    teacher_copy = tmp_path / "teacher-copy"
    shutil.copytree(tiny_teacher, teacher_copy)
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={teacher_copy}",
                                                                 "distill.recipe=kd", "train.iterations=4"])
    run = train(cfg, until=2, objective_factory=distill_objective, progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not [key for key in state["objective"] if key.startswith("teacher.")]
    teacher_hash = load_checkpoint(teacher_copy / "checkpoints" / "last.pt")[HASH_KEY]
    assert state["objective_extra"]["teacher_sha256"] == teacher_hash
    # Another teacher at the same path: refused on resume, before training on.
    other = load_checkpoint(teacher_copy / "checkpoints" / "last.pt")
    other["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["model"].items()}
    save_checkpoint(teacher_copy / "checkpoints" / "last.pt", {k: v for k, v in other.items() if k != HASH_KEY})
    with pytest.raises(CheckpointError, match="distill.teacher: not the teacher this run started with"):
        train(cfg, resume=True, objective_factory=distill_objective, progress=False)
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["iteration"] == 2


def test_a_checkpoint_whose_method_parts_changed_shape_is_one_line_naming_it(tiny_overrides, tiny_teacher, tmp_path):
    """A run trained when SKD's discriminator had another layout (its last conv read 4·width channels)."""
    from kdlab.checkpoint import HASH_KEY, load_checkpoint
    from kdlab.inspection import objective_from_run

    cfg = load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={tiny_teacher}",
                                                                 "distill.recipe=skd_holistic", "train.iterations=2"])
    run = train(cfg, objective_factory=distill_objective, progress=False)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    key = next(k for k in state["objective"] if k.endswith("discriminator.net.6.bias"))
    weight = key.replace(".bias", ".weight")
    state["objective"][weight] = state["objective"][weight][:, : state["objective"][weight].shape[1] // 2]
    save_checkpoint(path, {k: v for k, v in state.items() if k != HASH_KEY})
    with pytest.raises(CheckpointError, match=rf"student: weights do not fit this kdlab's distillation methods, .*"
                                              rf"train it again \(.*size mismatch"):
        objective_from_run(run, device="cpu")


def _log_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_log_lines_are_the_same_when_read_from_the_device_once_per_log_interval(tiny_overrides, tiny_teacher):
    logs = {}
    for interval in (1, 4):
        cfg = load_config(["configs/student.yaml"], tiny_overrides + [
            f"distill.teacher={tiny_teacher}", "distill.recipe=kd", f"name=every-{interval}", "train.iterations=6",
            "train.checkpoint_interval=1000", f"train.log_interval={interval}", "train.grad_clip=1.0"])
        logs[interval] = [{k: v for k, v in line.items() if k != "time_s"}
                          for line in _log_lines(train(cfg, objective_factory=distill_objective, progress=False))]
    assert [line["iteration"] for line in logs[4]] == [1, 2, 3, 4, 5, 6]
    assert "grad_norm" in logs[4][0] and "kd.pixel" in logs[4][0]
    assert logs[1] == logs[4]


def test_a_nan_found_at_a_later_log_line_names_its_iteration_and_no_checkpoint_passes_it(tiny_overrides,
                                                                                         tiny_teacher):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + [
        f"distill.teacher={tiny_teacher}", "distill.recipe=kd", "train.lr=1e30", "name=late-nan",
        "train.iterations=12", "train.log_interval=100", "train.checkpoint_interval=3"])
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, objective_factory=distill_objective, progress=False)
    # Read back after step 1 and before the checkpoint of step 3: a NaN at step 2 is found there.
    assert err.value.iteration == 2
    lines = _log_lines(cfg.run_dir)
    assert [line["iteration"] for line in lines] == [1]
    assert all(math.isfinite(v) for line in lines for v in line.values())
    assert not (cfg.run_dir / "checkpoints" / "last.pt").exists()
