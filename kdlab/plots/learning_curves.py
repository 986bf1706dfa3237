"""Figure `learning_curves`: validation score against iteration for several runs (issue 15's
convergence study), with the late gain each curve makes over its last quarter.

    python -m kdlab.plots.learning_curves OUT_DIR RUN_DIR [RUN_DIR ...]

writes ``OUT_DIR/learning_curves.{png,pdf}`` and ``OUT_DIR/learning_curves.{md,csv}`` (one row per
run: final mIoU, best mIoU and its iteration, late gain).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kdlab.analysis import late_gain
from kdlab.plots._common import NotebookFigure, label_colours, new_figure, save_figure, write_table

LATE_FRACTION = 0.25


def learning_curves_figure(curves: Mapping[str, Mapping[str, np.ndarray]], metric: str = "mIoU") -> NotebookFigure:
    """One line per label → curve (`kdlab.inspection.eval_curve`), in percent, the legend giving each
    curve's gain over its last quarter."""
    fig, axes = new_figure(1, 1, width=7.0, height=4.2)
    ax = axes.flat[0]
    colours = label_colours(list(curves))
    for label, curve in curves.items():
        gain = late_gain(curve["iteration"], curve[metric], LATE_FRACTION) * 100
        ax.plot(curve["iteration"], np.asarray(curve[metric]) * 100, marker="o", markersize=3, color=colours[label],
                label=f"{label} (last quarter {gain:+.1f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def curve_rows(curves: Mapping[str, Mapping[str, np.ndarray]], metric: str = "mIoU") -> list[dict]:
    rows = []
    for label, curve in curves.items():
        values = np.asarray(curve[metric]) * 100
        best = int(np.nanargmax(values))
        rows.append({"run": label, "iterations": int(curve["iteration"][-1]), f"final {metric}": values[-1],
                     f"best {metric}": values[best], "best at": int(curve["iteration"][best]),
                     "last-quarter gain": late_gain(curve["iteration"], values, LATE_FRACTION)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from kdlab.inspection import eval_curve

    parser = argparse.ArgumentParser(prog="python -m kdlab.plots.learning_curves", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("runs", nargs="+", help="run directories with an eval.jsonl")
    args = parser.parse_args(argv)
    try:
        curves = {Path(run).name: eval_curve(run) for run in args.runs}
    except ValueError as err:
        print(f"learning_curves: error: {err}", file=sys.stderr)
        return 2
    save_figure(learning_curves_figure(curves), "learning_curves", args.out_dir)
    write_table(curve_rows(curves), "learning_curves", args.out_dir, float_fmt=".1f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
