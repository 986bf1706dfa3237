"""kdlab.inspection on tiny runs: tables from results written by the test, costs, maps, trained parts,
and the figures drawn from them."""

import dataclasses
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from kdlab import analysis, inspection
from kdlab.analysis import first_layer_entropy
from kdlab.checkpoint import load_checkpoint
from kdlab.config import load_config
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdlab.distill import distill_objective
from kdlab.engine import run_config, supervised_objective, train
from kdlab.losses.bpkd import BoundaryPrivilegedKD
from kdlab.plots import (boundaries, comparison, discriminator_scores, entropy, per_class, qualitative,
                         training_curves, trimap_curves)

# One distilled run holds both methods whose trained parts kdlab.inspection reads (BCD's heads, SKD's
# discriminator); a copy of the baseline becomes its seed 1, so that a std exists.
BOTH = "methods:\n  - method: bcd\n  - method: skd\n"
LABELS = ["teacher", "baseline", "bcd_skd"]
WIDTHS = (1, 3, 7)


def _fake_results(rng: np.random.Generator, class_names: list[str]) -> dict:
    """Scores for a results.json; class 2 is absent (None) in some runs, class 3 in all."""
    def per_class():
        values = [float(v) for v in rng.random(len(class_names))]
        values[3] = None
        if rng.random() < 0.5:
            values[2] = None
        return values

    scores = {key: float(rng.random()) for key in ("mIoU", "mAcc", "aAcc", "trimap_mIoU", "edge_pixel_accuracy",
                                                     "body_mIoU")}
    return {"class_names": class_names, **scores, "IoU": per_class(), "trimap_IoU": per_class(),
            "trimap_curve": {str(w): float(rng.random()) for w in WIDTHS}}


@pytest.fixture(scope="module")
def tiny_runs(tiny_teacher, tmp_path_factory):
    """Teacher plus 1-iteration students on the teacher's tiny benchmark; every results.json is then
    replaced by random scores (returned), so the tables can be checked against known inputs."""
    out = tmp_path_factory.mktemp("inspection-runs")
    teacher = shutil.copytree(tiny_teacher, out / "teacher")  # its results.json is rewritten below
    data = run_config(teacher).data
    recipe_file = out / "bcd_skd.yaml"
    recipe_file.write_text(BOTH)
    runs = {}
    for (label, seed), recipe in {("baseline", 0): None, ("bcd_skd", 0): recipe_file}.items():
        overrides = [f"name={label}-s{seed}", f"out_dir={out}", f"train.seed={seed}", "train.iterations=1",
                     "train.batch_size=2", "train.eval_interval=0", "eval.max_images=2"]
        if recipe:
            overrides += [f"distill.recipe={recipe}", f"distill.teacher={teacher}"]
        cfg = dataclasses.replace(load_config(["configs/student.yaml"], overrides), data=data)
        runs[(label, seed)] = train(cfg, objective_factory=distill_objective if recipe else supervised_objective,
                                    progress=False)
    runs[("baseline", 1)] = shutil.copytree(runs[("baseline", 0)], out / "baseline-s1")
    rng = np.random.default_rng(0)
    class_names = json.loads((teacher / "results.json").read_text())["class_names"]
    written = {}
    for key, run in {("teacher", 0): teacher, **runs}.items():
        written[key] = _fake_results(rng, class_names)
        (run / "results.json").write_text(json.dumps(written[key]))
    return {"runs": runs, "teacher": teacher, "results": written}


@pytest.fixture(scope="module")
def models(tiny_runs):
    run_dirs = inspection.comparison_runs(tiny_runs["runs"], tiny_runs["teacher"])
    return inspection.load_models(run_dirs, "cpu")


@pytest.fixture(scope="module")
def comparison_rows(tiny_runs):
    return inspection.comparison_table(tiny_runs["runs"], tiny_runs["teacher"], "cpu", fps_repeats=1)


@pytest.fixture(scope="module")
def samples(tiny_runs):
    return inspection.validation_samples(tiny_runs["teacher"], 2)


def _seed_values(written: dict, label: str, key: str) -> list:
    return [results[key] for (name, _seed), results in written.items() if name == label]


def test_comparison_runs_put_the_teacher_first_and_take_each_labels_lowest_finished_seed(tmp_path):
    names = {("kd", 1): "kd-s1", ("baseline", 0): "b-s0", ("kd", 0): "kd-s0", ("ppd", 0): "ppd-s0"}
    runs = {key: tmp_path / name for key, name in names.items()}
    for key, run in runs.items():
        run.mkdir()
        (run / ("diverged.json" if key[0] == "ppd" else "results.json")).write_text("{}")
    assert inspection.comparison_runs(runs, "t") == {"teacher": Path("t"), "kd": runs[("kd", 0)],
                                                 "baseline": runs[("baseline", 0)]}
    assert list(inspection.comparison_runs(runs)) == ["kd", "baseline"]


def test_comparison_table_is_mean_and_std_over_seeds_plus_costs(tiny_runs, models, comparison_rows):
    rows = comparison_rows
    assert [row["method"] for row in rows] == LABELS
    written = tiny_runs["results"]
    baseline_miou = statistics.fmean(_seed_values(written, "baseline", "mIoU"))
    for row in rows:
        for metric in ("mIoU", "trimap_mIoU", "edge_pixel_accuracy"):
            values = _seed_values(written, row["method"], metric)
            assert row[metric] == pytest.approx(sum(values) / len(values))
            if len(values) > 1:
                mean = sum(values) / len(values)
                by_hand = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                assert row[f"{metric}_std"] == pytest.approx(by_hand)
            else:
                assert math.isnan(row[f"{metric}_std"])
        # Δ pairs seeds (bcd_skd has seed 0 only); the teacher, with no seed to pair, takes the difference of means
        reference = {"teacher": baseline_miou, "baseline": row["mIoU"]}.get(row["method"], written[("baseline", 0)]["mIoU"])
        assert row["delta_mIoU"] == pytest.approx(row["mIoU"] - reference)
        assert 0 < row["params_M"] <= sum(p.numel() for p in models[row["method"]].parameters()) / 1e6
        assert row["GMACs"] > 0 and row["FPS"] > 0
    assert rows[0]["GMACs"] > rows[1]["GMACs"]  # the DeepLabV3+ teacher costs more than the truncated PSPNet
    students = rows[1:]  # one architecture, so one FPS measurement (distillation changes weights, not speed)
    assert len({row["FPS"] for row in students}) == 1 and rows[0]["FPS"] != students[0]["FPS"]


def test_gmacs_of_a_convolution_match_the_hand_count():
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    multiply_adds = 4 * 7 * 9 * 3 * 3 * 3  # out channels × output pixels × (in channels × kernel area)
    assert inspection.count_gmacs(conv, (7, 9)) * 1e9 == pytest.approx(multiply_adds)
    assert inspection.count_gmacs(conv, 5) * 1e9 == pytest.approx(4 * 25 * 27)
    assert inspection.measure_fps(conv, (7, 9), warmup=1, repeats=3) > 0
    with pytest.raises(ValueError, match="repeats"):
        inspection.measure_fps(conv, 5, repeats=0)


def _mean_of_present(values: list) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else math.nan


def test_per_class_tables_and_gains_average_the_written_results(tiny_runs):
    written = tiny_runs["results"]
    rows = inspection.per_class_table(tiny_runs["runs"], tiny_runs["teacher"], key="trimap_IoU")
    assert [row["class"] for row in rows] == written[("teacher", 0)]["class_names"]
    for index, row in enumerate(rows):
        for label in LABELS:
            expected = _mean_of_present([values[index] for values in _seed_values(written, label, "trimap_IoU")])
            assert row[label] == pytest.approx(expected, nan_ok=True)
    assert all(math.isnan(value) for key, value in rows[3].items() if key != "class")  # class 3: never present
    gains = analysis.gains_over(rows, reference="baseline")
    assert list(gains[0]) == ["class", "bcd_skd"]
    for gain, row in zip(gains, rows):
        assert gain["bcd_skd"] == pytest.approx(row["bcd_skd"] - row["baseline"], nan_ok=True)
    with pytest.raises(ValueError, match="reference"):
        analysis.gains_over(rows, reference="student")


def test_trimap_curves_average_over_seeds(tiny_runs):
    curves = inspection.trimap_curves(tiny_runs["runs"], tiny_runs["teacher"])
    assert list(curves) == LABELS
    for label, curve in curves.items():
        assert curve["widths"] == list(WIDTHS)
        for i, width in enumerate(WIDTHS):
            values = [curve_[str(width)] for curve_ in _seed_values(tiny_runs["results"], label, "trimap_curve")]
            assert curve["mean"][i] == pytest.approx(statistics.fmean(values))
            assert curve["std"][i] == pytest.approx(statistics.stdev(values) if len(values) > 1 else math.nan,
                                                    nan_ok=True)


def test_loss_terms_keep_the_logged_losses_only(tiny_runs):
    run = tiny_runs["runs"][("bcd_skd", 0)]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    terms = inspection.loss_terms(run)
    assert set(terms) == {"iteration", "loss", "kd", "ce", "bcd.boundary", "bcd.context", "skd.pixel", "skd.pairwise",
                          "skd.critic", "skd.holistic"}  # without "bcd.temperature"
    assert terms["iteration"].tolist() == [1]
    assert terms["bcd.context"].tolist() == [record["bcd.context"] for record in log]
    by_label = inspection.loss_terms_by_label(tiny_runs["runs"])
    assert {label: len(logs) for label, logs in by_label.items()} == {"baseline": 2, "bcd_skd": 1}


def test_validation_samples_undo_the_normalisation(tiny_runs, samples):
    assert samples.images.shape == (2, 3, 64, 64) and samples.labels.shape == (2, 64, 64)
    assert samples.rgb.shape == (2, 64, 64, 3) and samples.rgb.dtype == np.uint8
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    renormalised = (torch.tensor(samples.rgb).permute(0, 3, 1, 2) / 255 - mean) / std
    assert torch.allclose(renormalised, samples.images, atol=0.6 / 255 / min(IMAGENET_STD))
    assert len(samples.class_names) == len(samples.palette) and samples.palette.shape[1] == 3
    with pytest.raises(ValueError, match="count"):
        inspection.validation_samples(tiny_runs["teacher"], 0)


def test_last_encoder_block_is_the_module_that_outputs_encoder_out(models, samples):
    assert inspection.last_encoder_block(models["teacher"]) is models["teacher"].net.encoder.layer4
    assert inspection.last_encoder_block_name(models["teacher"]) == "layer4"
    student = models["baseline"]
    assert inspection.last_encoder_block_name(student) == "layer2"
    block = inspection.last_encoder_block(student)
    assert block is student.net.encoder.layer2  # the truncated PSPNet encoder stops at layer2
    seen = []
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        taps = student.forward_taps(samples.images[:1], ["encoder_out"])
    handle.remove()
    assert torch.equal(seen[0], taps["encoder_out"])


@pytest.fixture(scope="module")
def distilled(tiny_runs):
    return inspection.objective_from_run(tiny_runs["runs"][("bcd_skd", 0)], "cpu")


def test_objective_from_run_loads_the_trained_objective(tiny_runs, distilled):
    saved = load_checkpoint(tiny_runs["runs"][("bcd_skd", 0)])["objective"]
    assert all(torch.equal(value, saved[name]) for name, value in distilled[1].state_dict().items())
    with pytest.raises(ValueError, match="run_dir"):
        inspection.objective_from_run(tiny_runs["runs"][("baseline", 0)], "cpu")


def test_bcd_boundary_map_comes_from_the_trained_student_heads(distilled, samples):
    student, objective = distilled
    maps = inspection.bcd_boundary_maps(student, objective, samples.images)
    assert maps.shape == (2, 8, 8)
    bcd = objective.methods["bcd"]
    with torch.no_grad():
        stages = student.forward_taps(samples.images, student.stage_names)
        fused = bcd.student_fusion([stages[name] for name in student.stage_names], (8, 8))
        by_hand = torch.sigmoid(bcd.student_boundary(fused))[:, 0]
    assert torch.allclose(maps, by_hand, atol=1e-5)


def test_discriminator_scores_are_d_of_each_models_softmax(distilled, models, samples):
    objective = distilled[1]
    scores = inspection.discriminator_scores(objective, {"teacher": models["teacher"], "baseline": models["baseline"]},
                                         samples.images)
    discriminator = objective.methods["skd"].parts[2].discriminator
    with torch.no_grad():
        teacher_logits = models["teacher"].forward_taps(samples.images, ["head_logits"])["head_logits"]
        student_logits = models["baseline"].forward_taps(samples.images, ["head_logits"])["head_logits"]
        student_logits = F.interpolate(student_logits, size=teacher_logits.shape[-2:], mode="bilinear")
        expected = {"teacher": discriminator(teacher_logits.softmax(1), samples.images),
                    "baseline": discriminator(student_logits.softmax(1), samples.images)}
    for label, value in expected.items():
        assert scores[label].shape == (2,)
        np.testing.assert_allclose(scores[label], value.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="objective"):
        inspection.find_method(objective, BoundaryPrivilegedKD)  # not in the recipe


def test_entropy_points_average_the_stem_entropy(tiny_runs, models, samples):
    run_dirs = inspection.comparison_runs(tiny_runs["runs"], tiny_runs["teacher"])
    points = inspection.entropy_points({"baseline": models["baseline"]}, run_dirs, samples)
    with torch.no_grad():
        stem = models["baseline"].forward_taps(samples.images, ["stem"])["stem"]
    assert points[0]["entropy_all"] == pytest.approx(first_layer_entropy(stem).mean().item(), rel=1e-5)
    assert points[0]["edge_pixel_accuracy"] == tiny_runs["results"][("baseline", 0)]["edge_pixel_accuracy"]


def _visible_axes(fig: Figure) -> int:
    return sum(ax.axison or ax.has_data() or bool(ax.images) for ax in fig.axes)


def test_figures_of_the_runs_have_one_axes_per_panel(tiny_runs, models, samples, comparison_rows):
    runs, teacher = tiny_runs["runs"], tiny_runs["teacher"]
    run_dirs = inspection.comparison_runs(runs, teacher)
    per_class_rows = inspection.per_class_table(runs, teacher)
    maps = inspection.entropy_maps(models, samples.images)
    predictions = inspection.predictions(models, samples.images)
    figures = {
        "comparison": (comparison.comparison_figure(comparison_rows), len(comparison.COMPARISON_METRICS)),
        "trimap curves": (trimap_curves.trimap_curves_figure(inspection.trimap_curves(runs, teacher)), 1),
        "training curves": (training_curves.training_curves_figure(inspection.loss_terms_by_label(runs)),
                            2),  # baseline, bcd_skd
        "entropy scatter": (entropy.entropy_vs_edge_accuracy_figure(inspection.entropy_points(models, run_dirs,
                                                                                              samples)), 2),
        "entropy maps": (entropy.entropy_maps_figure(samples.rgb, maps), 2 * (1 + len(models)) + 1),  # + colour bar
        "decoupled logits": (boundaries.decoupled_logits_figure(
            samples.rgb, inspection.decoupled_logit_maps(models["teacher"], samples)), 2 * 4 + 1),
        "per class": (per_class.per_class_figure(analysis.gains_over(per_class_rows), "gain", "gains"), 1),
        "scores": (discriminator_scores.discriminator_scores_figure({"teacher": np.ones(3), "kd": np.zeros(3)}), 2),
        "overlays": (qualitative.prediction_overlays_figure(samples.rgb, predictions, samples.palette),
                     2 * len(models)),
        "qualitative": (qualitative.qualitative_figure(samples.rgb, predictions, samples.palette),
                        2 * (1 + len(models))),
    }
    for name, (fig, expected) in figures.items():
        assert isinstance(fig, Figure), name
        assert _visible_axes(fig) == expected, name


def test_parameters_are_counted_for_the_modules_that_run():
    from kdlab.models import build_model
    from kdlab.models.zoo import ModelSpec

    student = build_model(ModelSpec(arch="PSPNet", encoder="resnet18", encoder_depth=3), 9)
    held = sum(p.numel() for p in student.parameters())
    running = inspection.count_running_parameters(student, 64)
    unused = sum(p.numel() for name in ("layer3", "layer4") for p in getattr(student.net.encoder, name).parameters())
    assert unused > 0 and running == held - unused
