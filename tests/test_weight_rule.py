"""The matched weight rule (README, "The weight rule"; issue 15 item 2): every recipe's weights times one
factor so that its distillation terms start at match_ratio × CE, the paper's ratios between its terms kept."""

import json

import pytest
import torch

from kdlab.checkpoint import load_checkpoint
from kdlab.config import load_config
from kdlab.distill import distill_objective
from kdlab.engine import train, train_cohort
from kdlab.errors import ConfigError
from kdlab.pipeline import load_profile, student_config


def _cfg(tiny_overrides, teacher, recipe, name, *extra):
    return load_config(["configs/student.yaml"], tiny_overrides + [
        f"distill.teacher={teacher}", f"distill.recipe={recipe}", f"name={name}", *extra])


def _start_terms(run):
    return json.loads((run / "start_terms.json").read_text())


def test_matched_weights_start_the_terms_at_the_ratio_times_ce_and_keep_the_papers_ratio(
        tiny_overrides, tiny_teacher):
    run = train(_cfg(tiny_overrides, tiny_teacher, "bpkd", "m", "distill.weight_rule=matched",
                     "distill.match_ratio=0.5", "train.iterations=2"),
                objective_factory=distill_objective, progress=False)
    terms = _start_terms(run)
    weighted = terms["bpkd.edge"]["weighted"] + terms["bpkd.body"]["weighted"]
    assert weighted == pytest.approx(0.5 * terms["ce"]["value"], rel=1e-4)
    assert terms["bpkd.edge"]["weight"] / terms["bpkd.body"]["weight"] == pytest.approx(50 / 20)
    assert terms["bpkd.edge"]["weight"] != pytest.approx(50.0)  # the paper's 50 starts far from 0.5 x CE


def test_matched_skd_counts_pixel_and_pairwise_but_scales_the_adversarial_term_alike(
        tiny_overrides, tiny_teacher):
    run = train(_cfg(tiny_overrides, tiny_teacher, "skd", "skd", "distill.weight_rule=matched",
                     "train.iterations=1", "train.checkpoint_interval=1"),
                objective_factory=distill_objective, progress=False)
    terms = _start_terms(run)
    counted = terms["skd.pixel"]["weighted"] + terms["skd.pairwise"]["weighted"]
    assert counted == pytest.approx(terms["ce"]["value"], rel=1e-4)
    factor = terms["skd.pixel"]["weight"] / 10.0  # λ1 = 10 of SKD
    assert terms["skd.holistic"]["weight"] == pytest.approx(0.1 * factor)  # λ2 = 0.1, the same factor


def test_a_matched_run_resumes_bit_identical_with_the_weights_it_matched(tiny_overrides, tiny_teacher):
    def cfg(name):
        return _cfg(tiny_overrides, tiny_teacher, "cwd", name, "distill.weight_rule=matched")

    straight = train(cfg("straight"), objective_factory=distill_objective, progress=False)
    train(cfg("split"), until=2, objective_factory=distill_objective, progress=False)
    resumed = train(cfg("split"), resume=True, objective_factory=distill_objective, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    matched = _start_terms(straight)["cwd.channel"]["weight"]
    assert b["objective_extra"]["weights"] == {"cwd.channel": pytest.approx(matched, rel=1e-6)}
    assert matched != pytest.approx(3.0)


def test_the_paper_rule_keeps_the_recipes_weights(tiny_overrides, tiny_teacher):
    run = train(_cfg(tiny_overrides, tiny_teacher, "cwd", "paper", "train.iterations=1",
                     "train.checkpoint_interval=1"), objective_factory=distill_objective, progress=False)
    assert _start_terms(run)["cwd.channel"]["weight"] == 3.0


def test_a_profile_label_at_matched_trains_its_recipe_under_the_matched_rule():
    profile = load_profile("quick", recipes=["kd@matched", "kd"])
    matched, paper = student_config(profile, 1, "kd@matched"), student_config(profile, 1, "kd")
    assert (matched.name, matched.distill.recipe, matched.distill.weight_rule) == ("kd@matched-s1", "kd", "matched")
    assert (paper.name, paper.distill.weight_rule) == ("kd-s1", "paper")
    with pytest.raises(ConfigError, match="nope"):
        load_profile("quick", recipes=["nope@matched"])


def test_an_unknown_weight_rule_is_one_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^distill.weight_rule: must be 'paper' .* got 'equal'"):
        load_config(["configs/student.yaml"], ["distill.weight_rule=equal"])


def test_matched_runs_in_a_cohort_end_where_they_end_alone(tiny_overrides, tiny_teacher):
    def cfg(recipe, name):
        return _cfg(tiny_overrides, tiny_teacher, recipe, name, "distill.weight_rule=matched")

    alone = train(cfg("bpkd", "alone"), objective_factory=distill_objective, progress=False)
    _, together = train_cohort([cfg("kd", "c-kd"), cfg("bpkd", "c-bpkd")], objective_factory=distill_objective,
                               progress=False)
    a, b = load_checkpoint(alone), load_checkpoint(together)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["objective_extra"]["weights"] == b["objective_extra"]["weights"]
