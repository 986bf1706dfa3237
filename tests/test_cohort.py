"""Cohorts: runs that differ only in recipe train together, each exactly as it would alone,
with one teacher pass per batch."""

import json

import pytest
import torch

from kdlab import distill, pipeline
from kdlab.checkpoint import load_checkpoint
from kdlab.config import load_config
from kdlab.distill import distill_objective
from kdlab.engine import NonFiniteLoss, train, train_cohort
from kdlab.errors import ConfigError

# kd: no trainable part; mimic: a randomly initialised adapter; skd: a discriminator with its own optimiser.
RECIPES = ["kd", "mimic", "skd"]


def _config(tiny_overrides, teacher, recipe, name, *extra):
    return load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={teacher}",
                                                                  f"distill.recipe={recipe}", f"name={name}", *extra])


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_each_run_of_a_cohort_ends_exactly_where_it_would_alone(tiny_overrides, tiny_teacher):
    alone = [train(_config(tiny_overrides, tiny_teacher, r, f"alone-{r}"), objective_factory=distill_objective,
                   progress=False) for r in RECIPES]
    together = train_cohort([_config(tiny_overrides, tiny_teacher, r, f"cohort-{r}") for r in RECIPES],
                            objective_factory=distill_objective, progress=False)
    for a, b in zip(alone, together):
        sa, sb = load_checkpoint(a), load_checkpoint(b)
        for part in ("model", "objective"):
            assert sa[part].keys() == sb[part].keys()
            assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), f"{b.name}: {part} differs"
        strip = lambda log: [{k: v for k, v in r.items() if k != "time_s"} for r in log]  # noqa: E731
        assert strip(_log(a)) == strip(_log(b))
        ra, rb = (json.loads((run / "results.json").read_text()) for run in (a, b))
        assert ra["mIoU"] == rb["mIoU"] and rb["cohort_size"] == len(RECIPES)


def test_a_cohort_runs_the_teacher_once_per_batch(tiny_overrides, tiny_teacher, monkeypatch):
    calls = []
    load = distill.load_teacher

    def counted(cfg, meta, device):
        teacher, digest = load(cfg, meta, device)
        forward = teacher.forward_taps
        teacher.forward_taps = lambda x, taps=(): calls.append(set(taps)) or forward(x, taps)
        return teacher, digest

    monkeypatch.setattr(distill, "load_teacher", counted)
    cfgs = [_config(tiny_overrides, tiny_teacher, r, f"count-{r}") for r in ("kd", "bpkd", "ppd")]
    train_cohort(cfgs, objective_factory=distill_objective, progress=False)
    assert len(calls) == cfgs[0].train.iterations
    assert calls[0] == {"head_logits", "encoder_out"}  # the union of what kd, bpkd and ppd read


def test_a_diverging_run_drops_out_and_the_others_finish(tiny_overrides, tiny_teacher, tmp_path):
    recipe = tmp_path / "explode.yaml"
    recipe.write_text("methods:\n  - method: kd\n    term_weights: {pixel: 1.0e+30}\n")
    outcomes = train_cohort([_config(tiny_overrides, tiny_teacher, "kd", "fine"),
                             _config(tiny_overrides, tiny_teacher, str(recipe), "explode")],
                            objective_factory=distill_objective, progress=False)
    assert (outcomes[0] / "results.json").exists() and len(_log(outcomes[0])) == 4
    assert isinstance(outcomes[1], NonFiniteLoss) and "kd.pixel" in str(outcomes[1])


def test_runs_that_differ_beyond_their_recipe_are_refused(tiny_overrides, tiny_teacher):
    cfgs = [_config(tiny_overrides, tiny_teacher, "kd", "a"), _config(tiny_overrides, tiny_teacher, "cwd", "b",
                                                                     "train.lr=0.5")]
    with pytest.raises(ConfigError, match=r"\['b'\] differ from 'a'"):
        train_cohort(cfgs, objective_factory=distill_objective, progress=False)
    assert not cfgs[0].run_dir.exists()


def test_a_cohort_stopped_early_resumes_to_the_same_weights(tiny_overrides, tiny_teacher):
    straight = train_cohort([_config(tiny_overrides, tiny_teacher, r, f"straight-{r}") for r in ("kd", "mimic")],
                            objective_factory=distill_objective, progress=False)
    cfgs = [_config(tiny_overrides, tiny_teacher, r, f"split-{r}") for r in ("kd", "mimic")]
    train_cohort(cfgs, until=2, objective_factory=distill_objective, progress=False)
    resumed = train_cohort(cfgs, resume=True, objective_factory=distill_objective, progress=False)
    for a, b in zip(straight, resumed):
        wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def profile(tmp_path, tiny_data_root):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
base: [data.root={tiny_data_root}, data.image_size=64, data.crop_size=64, data.num_train=24, data.num_val=6,
       train.batch_size=2, train.eval_interval=0, train.checkpoint_interval=1, eval.batch_size=6]
teacher: {{config: configs/teacher.yaml, overrides: [train.iterations=2, model.encoder=resnet18]}}
student: {{config: configs/student.yaml, overrides: [train.iterations=2]}}
seeds: [0, 1]
recipes: [kd, cwd, at, mimic, bpkd]
""")
    return pipeline.load_profile(str(path), runs_root=tmp_path / "runs")


def test_cohorts_group_runs_by_everything_but_the_recipe(profile):
    recipes = {"baseline": None, **{r: r for r in profile.recipes}}
    configs = list(pipeline.student_configs(profile, recipes, profile.seeds).values())
    parts = pipeline.cohorts(configs, jobs=2, max_size=2)
    assert sorted(c.name for part in parts for c in part) == sorted(c.name for c in configs)
    assert all(len(part) <= 2 and len({c.train.seed for c in part}) == 1 for part in parts)
    assert all(bool(c.distill.recipe) == bool(part[0].distill.recipe) for part in parts for c in part)
    assert len(parts) == 2 + 2 * 3  # per seed: the baseline alone, five recipes in three parts of <= 2
    assert len(pipeline.cohorts(configs, jobs=1, max_size=12)) == 4  # per seed: baseline, one cohort


def test_an_interrupted_cohort_resumes_as_a_cohort(profile):
    kd, cwd, mimic = (pipeline.student_config(profile, 0, r) for r in ("kd", "cwd", "mimic"))
    pipeline.ensure_teacher(profile, progress=False)
    train_cohort([kd, cwd], until=1, objective_factory=distill_objective, progress=False)  # checkpoints at 1
    assert pipeline.run_state(kd) == pipeline.run_state(cwd) == "partial"
    parts = pipeline.cohorts([kd, cwd, mimic])
    assert sorted([c.name for c in part] for part in parts) == [["kd-s0", "cwd-s0"], ["mimic-s0"]]
    pipeline.ensure_runs([kd, cwd, mimic], progress=False)
    assert all(pipeline.run_state(cfg) == "done" for cfg in (kd, cwd, mimic))
