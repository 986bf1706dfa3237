"""Cached runs: a finished run is reused, an unfinished one resumed, a changed one retrained."""

import json

import pytest

from kdlab import pipeline
from kdlab.errors import ConfigError


@pytest.fixture
def profile(tmp_path, tiny_data_root):
    text = f"""
base: [data.root={tiny_data_root}, data.image_size=64, data.crop_size=64, data.num_train=24, data.num_val=6,
       train.batch_size=2, train.eval_interval=0, train.checkpoint_interval=1, eval.batch_size=6]
teacher: {{config: configs/teacher.yaml, overrides: [train.iterations=2, model.encoder=resnet18]}}
student: {{config: configs/student.yaml, overrides: [train.iterations=2]}}
seeds: [0, 1]
recipes: [kd]
ablation: {{seeds: [0], overrides: [train.iterations=1]}}
ablations:
  widths: {{base: bpkd, vary: {{options.edge_width: [3, 5]}}}}
  pixel: [kd]
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return pipeline.load_profile(str(path), runs_root=tmp_path / "runs")


def _mtime(run):
    return (run / "results.json").stat().st_mtime_ns


def test_comparison_runs_are_trained_once_and_reused(profile):
    runs = pipeline.ensure_comparison(profile, progress=False)
    assert set(runs) == {("baseline", 0), ("baseline", 1), ("kd", 0), ("kd", 1)}
    stamps = {key: _mtime(run) for key, run in runs.items()}
    again = pipeline.ensure_comparison(profile, progress=False)
    assert {key: _mtime(run) for key, run in again.items()} == stamps
    rows = pipeline.summary_rows(runs, profile.runs_dir / "teacher")
    assert [r["method"] for r in rows] == ["teacher", "baseline", "kd"]
    baseline = [json.loads((runs[("baseline", s)] / "results.json").read_text())["mIoU"] for s in (0, 1)]
    assert rows[1]["mIoU"] == pytest.approx(sum(baseline) / 2)
    assert rows[1]["delta_mIoU"] == 0 and rows[2]["seeds"] == 2


def test_changed_config_retrains_and_unfinished_run_resumes(profile):
    cfg = pipeline.student_config(profile, seed=0)
    assert pipeline.run_state(cfg) == "new"
    pipeline.ensure_run(cfg, progress=False)
    assert pipeline.run_state(cfg) == "done"
    changed = pipeline.student_config(profile, seed=0, overrides=["train.lr=0.02"])
    assert pipeline.run_state(changed) == "stale"
    (cfg.run_dir / "results.json").unlink()
    assert pipeline.run_state(cfg) == "partial"
    pipeline.ensure_run(cfg, progress=False)
    assert pipeline.run_state(cfg) == "done"


def test_sweep_ablation_derives_one_recipe_per_value(profile):
    recipes = pipeline.ablation_recipes(profile, "widths")
    assert list(recipes) == ["bpkd@edge_width=3", "bpkd@edge_width=5"]
    text = open(recipes["bpkd@edge_width=5"]).read()
    assert "edge_width: 5" in text


def test_a_sweep_value_the_base_recipe_has_is_the_base_recipes_run(profile):
    profile.ablations["widths"] = {"base": "bpkd", "vary": {"options.edge_width": [5, 7]}}  # bpkd has 7
    assert pipeline.ablation_recipes(profile, "widths")["bpkd@edge_width=7"] == "bpkd"
    configs = pipeline.ablation_configs(profile, "widths")
    assert configs[("bpkd@edge_width=7", 0)].run_dir.name == "bpkd-s0"
    assert configs[("bpkd@edge_width=5", 0)].run_dir.name == "bpkd@edge_width=5-s0"
    with pytest.raises(ConfigError, match="no ablation group"):
        pipeline.ablation_configs(profile, "nope")


def test_an_ablation_group_with_its_own_student_trains_it_and_its_baseline_apart(profile):
    profile.ablations["ppd"] = {"student": "configs/student_deeplabv3plus.yaml", "recipes": ["ppd@matched"]}
    configs = pipeline.ablation_configs(profile, "ppd")
    baseline, ppd = configs[("baseline", 0)], configs[("ppd@matched", 0)]
    assert baseline.model.arch == ppd.model.arch == "DeepLabV3Plus"
    assert baseline.run_dir.parent.name == "student_deeplabv3plus" and baseline.run_dir.parent.parent.name == "students"
    assert pipeline.ablation_student(profile, "ppd").overrides == profile.student.overrides  # its schedule
    assert baseline.train.iterations == 1  # and the ablations' (ablation.overrides)
    assert (ppd.distill.recipe, ppd.distill.weight_rule) == ("ppd", "matched")
    profile.ablations["ppd"] = {"student": "configs/student_deeplabv3plus.yaml"}
    with pytest.raises(ConfigError, match=r"ablations.ppd must be .*student: config, recipes"):
        pipeline.ablation_configs(profile, "ppd")


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="quick"):
        pipeline.load_profile("nonexistent")


def test_a_diverging_method_is_recorded_and_the_comparison_goes_on(profile, tmp_path):
    recipe = tmp_path / "explode.yaml"
    recipe.write_text("methods:\n  - method: kd\n    term_weights: {pixel: 1.0e+30}\n")
    configs = pipeline.student_configs(profile, {"baseline": None, "kd": "kd", "explode": str(recipe)}, [0])
    pipeline.ensure_students(profile, list(configs.values()), progress=False)
    runs = {key: cfg.run_dir for key, cfg in configs.items()}
    diverged = json.loads((runs[("explode", 0)] / pipeline.DIVERGED).read_text())
    assert diverged["iteration"] >= 1 and "kd.pixel" in diverged["error"]
    assert pipeline.run_state(pipeline.student_config(profile, 0, str(recipe))) == "done"
    rows = {r["method"]: r for r in pipeline.summary_rows(runs)}
    assert rows["explode"]["diverged"] == 1 and rows["explode"]["mIoU"] != rows["explode"]["mIoU"]  # NaN
    assert rows["baseline"]["diverged"] == 0 and rows["kd"]["diverged"] == 0  # kd trained beside it


def test_ablation_groups_train_as_one_queue_and_share_runs(profile):
    groups = pipeline.ensure_ablations(profile, progress=False)
    assert set(groups) == {"widths", "pixel"}
    assert set(groups["widths"]) == {("baseline", 0), ("bpkd@edge_width=3", 0), ("bpkd@edge_width=5", 0)}
    assert groups["widths"][("baseline", 0)] == groups["pixel"][("baseline", 0)]
    assert groups["pixel"][("baseline", 0)].parent.name == "ablations"  # the profile overrides the schedule
    rows = pipeline.summary_rows(groups["pixel"])
    assert [r["method"] for r in rows] == ["baseline", "kd"]


def test_notebook_parameters_replace_the_profiles_settings(profile, tmp_path):
    path = tmp_path / "tiny.yaml"
    changed = pipeline.load_profile(str(path), tmp_path / "runs", dataset="folder", data_root="/data/x",
                                    recipes=["cwd"], seeds=[3], jobs=2)
    assert (changed.recipes, changed.seeds, changed.jobs) == (["cwd"], [3], 2)
    cfg = pipeline.student_config(changed, 3)
    assert (cfg.data.name, str(cfg.data.root)) == ("folder", "/data/x")
    assert (profile.recipes, profile.seeds, profile.jobs) == (["kd"], [0, 1], 1)
    with pytest.raises(ConfigError, match="distill.recipe: no file named 'nope'"):
        pipeline.load_profile(str(path), recipes=["nope"])
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        pipeline.load_profile(str(path), jobs=0)


def test_parallel_runs_give_the_same_results_as_one_at_a_time(profile, tmp_path):
    """Worker processes train the same runs (one CPU thread each, as in the sequential profile here)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(path.read_text().replace("base: [", "base: [train.threads=1, "))
    scores = {}
    for jobs in (1, 2):
        prof = pipeline.load_profile(str(path), tmp_path / f"runs{jobs}", recipes=[], jobs=jobs)
        runs = pipeline.ensure_comparison(prof, progress=False)
        assert all(pipeline.run_state(pipeline.student_config(prof, s)) == "done" for s in (0, 1))
        scores[jobs] = {key: json.loads((run / "results.json").read_text())["mIoU"] for key, run in runs.items()}
    assert scores[2] == scores[1]
    assert set(scores[2]) == {("baseline", 0), ("baseline", 1)}


def test_a_failing_parallel_run_stops_the_others_with_its_error(profile, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods: []\n")
    configs = pipeline.student_configs(profile, {"baseline": None, "broken": str(broken)}, [0])
    with pytest.raises(ConfigError, match="non-empty 'methods' list"):
        pipeline.ensure_runs(list(configs.values()), jobs=2, progress=False)
