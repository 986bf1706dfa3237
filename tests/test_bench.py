"""`kdlab bench`: one row per recipe plus the recipes as one cohort, all measured."""

import json
import math

from kdlab.bench import run_benchmarks
from kdlab.config import load_config


def test_bench_measures_each_recipe_and_the_cohort_of_them(tmp_path):
    cfg = load_config(["configs/student.yaml"], ["data.crop_size=64", "train.batch_size=2"])
    rows = run_benchmarks(cfg, recipes=["kd", "cwd"], iterations=1, out=tmp_path / "bench.md")
    assert [r["row"] for r in rows] == ["baseline", "teacher_forward", "kd", "cwd", "cohort of 2, per run"]
    assert all(math.isfinite(r["ms_per_iter"]) and r["ms_per_iter"] > 0 for r in rows)
    assert json.loads((tmp_path / "bench.json").read_text()) == rows
    assert "| cohort of 2, per run |" in (tmp_path / "bench.md").read_text()
