"""Scores as mmseg prints them: per-class IoU / Acc and aAcc / mIoU / mAcc, in percent, as Markdown.

`scores_table` takes a score dict (`kdlab.metrics.scores_from_confusion`, `kdlab.engine.evaluate`,
results.json or ``kdlab eval --out``): fractions in [0, 1], NaN (or JSON null) for a class absent
from the split, shown as ``nan`` as mmseg shows it and left out of the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _percent(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{100.0 * float(value):.2f}"


def scores_table(scores: dict, class_names: Sequence[str] | None = None) -> str:
    """The mmseg-style Markdown table of ``scores``: a ``| Class | IoU | Acc |`` row per class, then
    a ``| aAcc | mIoU | mAcc |`` summary, every value in percent with two decimals. Class names are
    ``class_names``, else the dict's ``class_names`` or ``classes``, else the class indices."""
    iou, acc = list(scores["IoU"]), list(scores.get("Acc") or [None] * len(scores["IoU"]))
    names = list(class_names or scores.get("class_names") or scores.get("classes") or range(len(iou)))
    if not len(names) == len(iou) == len(acc):
        raise ValueError(f"{len(names)} class names for {len(iou)} IoU and {len(acc)} Acc values")
    width = max([len("Class"), *(len(str(name)) for name in names)])
    lines = ["per-class results:", "", f"| {'Class':<{width}} |   IoU |   Acc |", f"|{'-' * (width + 2)}|------:|------:|"]
    lines += [f"| {str(name):<{width}} | {_percent(i):>5} | {_percent(a):>5} |" for name, i, a in zip(names, iou, acc)]
    lines += ["", "summary:", "", "|  aAcc |  mIoU |  mAcc |", "|------:|------:|------:|",
              "| " + " | ".join(f"{_percent(scores.get(key)):>5}" for key in ("aAcc", "mIoU", "mAcc")) + " |"]
    return "\n".join(lines) + "\n"
