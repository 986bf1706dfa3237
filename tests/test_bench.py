"""`kdlab bench`: interleaved rounds, one record per recipe, JSON written (no timing assertions)."""

import json
import math

from kdlab.bench import _row_plan, run_benchmarks, summarise
from kdlab.cli import main
from kdlab.config import load_config

KEYS = {"recipe", "ms", "iqr_ms", "ratio_to_floor", "ratio_to_student", "peak_mib"}


def test_bench_runs_on_tiny_settings_and_writes_its_json(tmp_path):
    cfg = load_config(["configs/student.yaml"], ["data.crop_size=32", "train.batch_size=2", "train.device=cpu"])
    records = run_benchmarks(cfg, recipes=["kd"], rounds=2, warmup=1, out=tmp_path / "bench.md",
                             json_path=tmp_path / "b.json", pipeline_batches=0, progress=False)
    assert [r["recipe"] for r in records] == ["student", "floor", "kd"]
    assert json.loads((tmp_path / "b.json").read_text()) == records
    for r in records:
        assert KEYS <= set(r) and r["rounds"] == 2 and (r["height"], r["width"]) == (32, 32)
        assert math.isfinite(r["ms"]) and r["ms"] > 0 and r["iqr_ms"] >= 0 and r["peak_mib"] > 0
    floor = records[1]
    assert floor["ratio_to_floor"] == 1.0
    assert "| kd |" in (tmp_path / "bench.md").read_text()


def test_cli_bench_with_json_and_without_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "-c", "configs/student.yaml", "--recipes", "kd", "cwd", "--rounds", "1", "--warmup", "0",
                 "--size", "32x48", "--no-memory", "--pipeline-batches", "0", "--out", str(tmp_path / "b.md"),
                 "--json", str(out), "train.batch_size=1", "train.device=cpu"]) == 0
    records = json.loads(out.read_text())
    assert [r["recipe"] for r in records] == ["student", "floor", "kd", "cwd", "cohort of 2, per run"]
    assert all(KEYS <= set(r) and (r["height"], r["width"]) == (32, 48) for r in records)


def test_summary_uses_same_round_ratios():
    times = {"student": [1.0, 2.0, 1.0], "floor": [2.0, 4.0, 2.0], "x": [2.2, 4.4, 3.0]}
    by_name = {r["recipe"]: r for r in summarise(times)}
    assert math.isclose(by_name["x"]["ratio_to_floor"], 1.1)  # per round 1.1, 1.1, 1.5
    assert math.isclose(by_name["x"]["ratio_to_student"], 2.2)
    assert math.isclose(by_name["x"]["ms"], 3000.0)
    assert [name for name, _ in _row_plan(["a"], cohort=True)] == ["student", "floor", "a"]
