"""The convergence study's pieces: a run's eval curve, the late-gain rule and the figure + table."""

import json

import numpy as np
import pytest

from kdlab.analysis import late_gain
from kdlab.inspection import eval_curve
from kdlab.plots import learning_curves


def test_late_gain_is_the_gain_over_the_last_quarter():
    iterations = [200, 400, 600, 800]
    assert late_gain(iterations, [0.1, 0.3, 0.42, 0.45]) == pytest.approx(0.03)  # 800 vs 600 (= 0.75 x 800)
    assert late_gain([250, 500, 1000], [0.2, 0.4, 0.41], fraction=0.5) == pytest.approx(0.01)  # vs 500
    with pytest.raises(ValueError, match="no evaluation at or before"):
        late_gain([900, 1000], [0.1, 0.2])
    with pytest.raises(ValueError, match="fraction"):
        late_gain([1, 2], [0.1, 0.2], fraction=1.5)


def _run(tmp_path, name, points):
    run = tmp_path / name
    run.mkdir()
    lines = [json.dumps({"iteration": it, "mIoU": v, "aAcc": 0.5}) for it, v in points]
    (run / "eval.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_eval_curve_reads_iterations_in_order_and_keeps_the_last_of_a_repeat(tmp_path):
    run = _run(tmp_path, "r", [(400, 0.3), (200, 0.2), (400, 0.35)])  # a resumed run re-evaluated 400
    curve = eval_curve(run)
    assert curve["iteration"].tolist() == [200, 400] and curve["mIoU"].tolist() == [0.2, 0.35]
    with pytest.raises(ValueError, match="no eval.jsonl"):
        eval_curve(tmp_path)


def test_the_command_writes_the_figure_and_the_table(tmp_path):
    runs = [_run(tmp_path, "lr0.01", [(200, 0.2), (400, 0.3), (600, 0.36), (800, 0.37)]),
            _run(tmp_path, "lr0.02", [(200, 0.25), (400, 0.33), (600, 0.40), (800, 0.44)])]
    out = tmp_path / "fig"
    assert learning_curves.main([str(out), *map(str, runs)]) == 0
    assert (out / "learning_curves.png").stat().st_size > 10_000
    table = (out / "learning_curves.md").read_text().splitlines()
    assert table[2].split("|")[1:-1] == [" lr0.01 ", " 800 ", " 37.0 ", " 37.0 ", " 800 ", " 1.0 "]
    assert "| 4.0 |" in table[3]
    assert learning_curves.main([str(out), str(tmp_path)]) == 2
