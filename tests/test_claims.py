"""kdlab.claims and the summary statistics of kdlab.pipeline on synthetic runs: results.json,
eval.jsonl and diverged.json files written into tmp run directories."""

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from kdlab import claims, pipeline, stats
from kdlab.distill import recipe_path
from kdlab.errors import ConfigError
from kdlab.pipeline import ablation_recipes, load_profile

HEADLINE_TABLES = {("BPKD", "Table 1"), ("BPKD", "Table 3"), ("BPKD", "Table 4"), ("BPKD", "Table 5"),
                   ("SKD", "Table 1"), ("SKD", "Table 2"), ("BCD", "Table I"), ("BCD", "Table IV"),
                   ("PPD", "Table 2"), ("PPD", "Table 3")}


def fake_run(path: Path, miou: float | None, first: float | None = None, diverged: bool = False,
             trimap2: float | None = None) -> Path:
    """A finished run scoring ``miou`` (None: diverged); ``first`` adds an earlier evaluation."""
    path.mkdir(parents=True)
    if diverged:
        (path / pipeline.DIVERGED).write_text(json.dumps({"iteration": 3, "error": "kd.pixel is nan"}))
        return path
    curve = {"1": miou / 2, "3": miou / 1.5, "7": miou / 1.2, **({"2": trimap2} if trimap2 is not None else {})}
    results = {"iteration": 100, "mIoU": miou, "mAcc": miou, "trimap_mIoU": miou / 1.2, "edge_pixel_accuracy": miou,
               "body_mIoU": miou, "trimap_curve": curve}
    (path / "results.json").write_text(json.dumps(results))
    records = ([{"iteration": 50, "mIoU": first}] if first is not None else []) + [{"iteration": 100, "mIoU": miou}]
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fake_group(root: Path, scores: dict[str, list], **kwargs) -> dict[tuple[str, int], Path]:
    """label → per-seed scores: a float (clean run), "diverged", or ("collapsed", final, first)."""
    runs = {}
    for label, values in scores.items():
        for seed, value in enumerate(values):
            path = root / f"{label}-s{seed}"
            if value == "diverged":
                runs[(label, seed)] = fake_run(path, None, diverged=True)
            elif isinstance(value, tuple):
                runs[(label, seed)] = fake_run(path, value[1], first=value[2], **kwargs)
            else:
                runs[(label, seed)] = fake_run(path, value, first=value / 2, **kwargs)  # climbing: clean
    return runs


def claim(arms, direction="greater", metric="mIoU", cid="c"):
    return claims.Claim(id=cid, paper="P", table="Table 1", text="x beats y", paper_numbers="1 → 2",
                        metrics=(metric,), direction=direction, arms=tuple(arms))


# ---------------------------------------------------------------- run status and summary rows


def test_run_status(tmp_path):
    assert pipeline.run_status(fake_run(tmp_path / "ok", 0.5, first=0.2)) == "ok"
    assert pipeline.run_status(fake_run(tmp_path / "one", 0.5)) == "ok"  # only the final evaluation
    assert pipeline.run_status(fake_run(tmp_path / "down", 0.04, first=0.3)) == "collapsed"
    assert pipeline.run_status(fake_run(tmp_path / "div", None, diverged=True)) == "diverged"
    assert pipeline.run_status(fake_run(tmp_path / "nan", math.nan)) == "diverged"


def test_summary_rows_pair_seeds_and_leave_out_diverged_and_collapsed_runs(tmp_path):
    runs = fake_group(tmp_path, {"baseline": [0.40, 0.50, 0.60, 0.55],
                                 "m": [0.45, 0.55, 0.70, "diverged"],
                                 "c": [0.50, ("collapsed", 0.05, 0.30), 0.62, 0.58]})
    teacher = fake_run(tmp_path / "teacher", 0.80)
    rows = {r["method"]: r for r in pipeline.summary_rows(runs, teacher)}
    assert list(rows) == ["teacher", "baseline", "m", "c"]
    m = rows["m"]  # differences 0.05, 0.05, 0.10 (seed 3 diverged: dropped)
    assert (m["seeds"], m["diverged"], m["collapsed"], m["pairs"]) == (4, 1, 0, 3)
    assert m["mIoU"] == pytest.approx((0.45 + 0.55 + 0.70) / 3)
    half = 4.302652729911275 * math.sqrt(((0.05 - 0.2 / 3) ** 2 * 2 + (0.10 - 0.2 / 3) ** 2) / 2) / math.sqrt(3)
    assert m["delta_mIoU"] == pytest.approx(0.2 / 3)
    assert (m["delta_ci95_low"], m["delta_ci95_high"]) == pytest.approx((0.2 / 3 - half, 0.2 / 3 + half))
    c = rows["c"]  # seed 1 collapsed: not averaged in, its pair dropped; differences 0.10, 0.02, 0.03
    assert (c["collapsed"], c["diverged"], c["pairs"]) == (1, 0, 3)
    assert c["mIoU"] == pytest.approx((0.50 + 0.62 + 0.58) / 3) and c["delta_mIoU"] == pytest.approx(0.05)
    b = rows["baseline"]
    assert b["delta_mIoU"] == 0 and b["pairs"] == 4 and b["mIoU"] == pytest.approx(0.5125)
    t = rows["teacher"]  # one run, no seed to pair: the difference of means, no interval
    assert t["delta_mIoU"] == pytest.approx(0.80 - 0.5125) and t["pairs"] == 0 and math.isnan(t["delta_ci95_low"])
    assert b["trimap_mIoU@1"] == pytest.approx(0.5125 / 2) and math.isnan(b["trimap_mIoU@2"])  # no 2-px band here


def test_result_value_reads_the_narrow_and_relative_bands():
    results = {"mIoU": 0.5, "trimap_curve": {"2": 0.3}, "trimap_relative_curve": {"0.0068": 0.2}}
    assert pipeline.result_value(results, "trimap_mIoU@2") == 0.3
    assert pipeline.result_value(results, "trimap_relative@0.0068") == 0.2
    assert math.isnan(pipeline.result_value(results, "trimap_mIoU@5"))


# ---------------------------------------------------------------- claim rows


def test_each_verdict(tmp_path):
    runs = fake_group(tmp_path, {"baseline": [0.40, 0.50, 0.60],
                                 "up": [0.42, 0.53, 0.63],  # +2, +3, +3 points
                                 "down": [0.35, 0.44, 0.56],  # -5, -6, -4
                                 "same": [0.43, 0.48, 0.61],  # +3, -2, +1
                                 "broken": [0.41, "diverged", "diverged"]})
    groups = {"comparison": runs}
    verdicts = {(row["method"], row["id"]): row["verdict"] for row in claims.claim_rows(
        [claim([("up", "baseline"), ("down", "baseline"), ("same", "baseline"), ("broken", "baseline")], cid="g"),
         claim([("down", "baseline")], direction="less", cid="l")], groups)}
    assert verdicts == {("up", "g"): "supported", ("down", "g"): "contradicted", ("same", "g"): "inconclusive",
                        ("broken", "g"): "diverged", ("down", "l"): "supported"}
    (row,) = claims.claim_rows([claim([("up", "baseline")])], groups)
    assert row["Δ"] == pytest.approx(8 / 3) and row["pairs"] == 3 and row["runs"] == "comparison"
    assert row["method score"] == "52.67 ± 10.50" and row["reference score"] == "50.00 ± 10.00"
    half = 4.302652729911275 * math.sqrt(((2 - 8 / 3) ** 2 + 2 * (3 - 8 / 3) ** 2) / 2) / math.sqrt(3)
    assert (row["CI95 low"], row["CI95 high"]) == pytest.approx((8 / 3 - half, 8 / 3 + half))
    assert row["diverged/collapsed"] == "0/0 vs 0/0"


def test_collapsed_runs_are_left_out_and_a_mostly_collapsed_arm_is_diverged(tmp_path):
    runs = fake_group(tmp_path, {"baseline": [0.40, 0.50, 0.60, 0.45],
                                 "one_down": [0.45, 0.56, ("collapsed", 0.04, 0.30), 0.50],  # +5, +6, -, +5
                                 "half_down": [("collapsed", 0.04, 0.3), 0.60, ("collapsed", 0.02, 0.3), 0.55]})
    rows = {row["method"]: row for row in claims.claim_rows(
        [claim([("one_down", "baseline"), ("half_down", "baseline")])], {"comparison": runs})}
    assert rows["one_down"]["verdict"] == "supported" and rows["one_down"]["pairs"] == 3
    assert rows["one_down"]["diverged/collapsed"] == "0/1 vs 0/0"
    assert rows["one_down"]["method score"].startswith("50.33")  # 45, 56, 50: the collapsed 4 is not in it
    assert rows["half_down"]["verdict"] == "diverged"


def test_arms_come_from_the_first_group_holding_both_and_missing_arms_are_not_run(tmp_path):
    comparison = fake_group(tmp_path / "c", {"baseline": [0.4, 0.5], "a": [0.45, 0.55]})
    ablation = fake_group(tmp_path / "a", {"baseline": [0.3, 0.35], "a": [0.31, 0.36], "b": [0.2, 0.25]})
    rows = claims.claim_rows([claim([("a", "baseline"), ("a", "b"), ("a", "zzz")])],
                             {"comparison": comparison, "table4": ablation})
    assert [row["runs"] for row in rows] == ["comparison", "table4", ""]
    assert rows[0]["Δ"] == pytest.approx(5.0) and rows[1]["Δ"] == pytest.approx(11.0)
    assert rows[2]["verdict"] == claims.NOT_RUN and rows[2]["Δ"] == "" and rows[2]["pairs"] == 0


def test_a_metric_the_runs_lack_is_not_measured_and_narrow_bands_are_read(tmp_path):
    old = fake_group(tmp_path / "old", {"baseline": [0.4, 0.5], "a": [0.45, 0.55]})
    new = fake_group(tmp_path / "new", {"baseline": [0.4, 0.5, 0.6], "a": [0.45, 0.55, 0.65]}, trimap2=0.3)
    (row,) = claims.claim_rows([claim([("a", "baseline")], metric="trimap_mIoU@2")], {"comparison": old})
    assert row["verdict"] == claims.NOT_MEASURED
    (row,) = claims.claim_rows([claim([("a", "baseline")], metric="trimap_mIoU@2")], {"comparison": new})
    assert row["Δ"] == pytest.approx(0.0) and row["verdict"] == "inconclusive"


def test_a_teacher_too_close_to_its_groups_baseline_flags_statistical_verdicts_only(tmp_path):
    """The comparison's baseline is far below the teacher; the ablation group's own student (PPD's
    DeepLabV3+) is close to it: its rows read "teacher too close", their paired verdict kept."""
    teacher, far_baseline, close_baseline = 0.65, [0.40, 0.50, 0.60], [0.60, 0.62, 0.64]
    comparison = fake_group(tmp_path / "c", {"baseline": far_baseline, "up": [0.42, 0.53, 0.63]})
    own_student = fake_group(tmp_path / "p", {"baseline": close_baseline, "p_up": [0.62, 0.65, 0.67],
                                              "p_broken": [0.61, "diverged", "diverged"]})
    groups = {"comparison": comparison, "ppd_table3": own_student}
    rows = {row["method"]: row for row in claims.claim_rows(
        [claim([("up", "baseline"), ("p_up", "baseline"), ("p_broken", "baseline"), ("x", "zzz")])],
        groups, fake_run(tmp_path / "teacher", teacher))}
    far, close, broken, not_run = rows["up"], rows["p_up"], rows["p_broken"], rows["x"]
    assert far["teacher − baseline"] == pytest.approx(100 * (teacher - statistics.fmean(far_baseline)))
    assert far["teacher − baseline"] >= claims.MIN_TEACHER_GAP
    assert far["verdict"] == far["paired verdict"] == "supported"
    assert close["teacher − baseline"] == pytest.approx(100 * (teacher - statistics.fmean(close_baseline)))
    assert close["teacher − baseline"] < claims.MIN_TEACHER_GAP
    assert (close["verdict"], close["paired verdict"]) == (claims.TEACHER_TOO_CLOSE, "supported")
    assert broken["verdict"] == broken["paired verdict"] == "diverged"  # says what failed in the runs
    assert (not_run["verdict"], not_run["teacher − baseline"], not_run["paired verdict"]) == (claims.NOT_RUN, "", "")
    (no_teacher,) = claims.claim_rows([claim([("p_up", "baseline")])], groups)
    assert no_teacher["teacher − baseline"] == "" and no_teacher["verdict"] == "supported"
    (lenient,) = claims.claim_rows([replace(claim([("p_up", "baseline")]), min_teacher_gap=2.0)], groups,
                                   tmp_path / "teacher")  # a claims file's min_teacher_gap: 2
    assert lenient["verdict"] == "supported"


def test_the_claims_file_may_set_the_minimum_teacher_gap(tmp_path):
    entry = ("  - {id: a, paper: P, table: T, text: t, paper_numbers: n, metric: mIoU, direction: greater,"
             " arms: [[x, baseline]]}\n")
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n" + entry)
    assert claims.load_claims(path)[0].min_teacher_gap == claims.MIN_TEACHER_GAP == 8.0
    path.write_text("min_teacher_gap: 2.5\nclaims:\n" + entry)
    assert claims.load_claims(path)[0].min_teacher_gap == 2.5
    path.write_text("min_teacher_gap: lots\nclaims:\n" + entry)
    with pytest.raises(ConfigError, match="min_teacher_gap"):
        claims.load_claims(path)


def test_write_claims_table_writes_markdown_and_csv(tmp_path, monkeypatch):
    baseline, teacher = [0.40, 0.50, 0.60], 0.80
    runs = fake_group(tmp_path / "runs", {"baseline": baseline, "kd": [0.42, 0.53, 0.63]})
    monkeypatch.setattr(claims, "profile_groups", lambda profile, progress=True: {"comparison": runs})
    monkeypatch.setattr(claims, "ensure_teacher", lambda profile, progress=True: fake_run(tmp_path / "t", teacher))
    profile = type("P", (), {"figures_dir": str(tmp_path / "figs")})()
    rows, markdown = claims.write_claims_table(profile)
    assert len(rows) == sum(len(c.arms) * len(c.metrics) for c in claims.load_claims())
    text = markdown.read_text()
    assert "| skd_t1_pi |" in text and "supported" in text and claims.NOT_RUN in text
    assert f"| {100 * (teacher - statistics.fmean(baseline)):.2f} | supported | supported |" in text
    assert (tmp_path / "figs" / "claims.csv").read_text().startswith("id,paper,table,claim,metric,method")
    assert claims.verdict_counts(rows)["supported"] == 1


# ---------------------------------------------------------------- the claims file


def test_the_claims_file_covers_every_headline_table_with_known_recipes():
    loaded = claims.load_claims()
    assert {(c.paper, c.table) for c in loaded} == HEADLINE_TABLES
    for c in loaded:
        assert c.direction in stats.DIRECTIONS and c.paper_numbers
        for label in (label for arm in c.arms for label in arm):
            if label != "baseline":
                recipe_path(label.split("@")[0])  # raises for an unknown recipe (`recipe@key=value@matched` too)


def test_the_full_profile_trains_every_arm_of_the_claims_file():
    profile = load_profile("full")
    labels = {"baseline", *profile.recipes}
    labels |= {label for group in profile.ablations for label in ablation_recipes(profile, group, write=False)}
    missing = {label for c in claims.load_claims() for arm in c.arms for label in arm} - labels
    assert not missing


def test_a_malformed_claims_file_fails_naming_the_entry(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - {id: a, paper: P, table: T, text: t, paper_numbers: n, metric: mIoU,"
                    " direction: up, arms: [[x, baseline]]}\n")
    with pytest.raises(ConfigError, match=r"claims\[0\]: direction"):
        claims.load_claims(path)
    path.write_text("claims:\n  - {id: a, paper: P}\n")
    with pytest.raises(ConfigError, match="needs the keys"):
        claims.load_claims(path)
