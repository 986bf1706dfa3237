"""`kdlab bench` as a figure: per recipe, the median same-round ratio to the floor (bars, one group
per input size) with the issue's target for the method, and the peak memory.

``records`` are the JSON records of ``kdlab bench --json`` (``recipe``, ``ratio_to_floor``,
``iqr_ms``, ``ms``, ``peak_mib``, ``height``, ``width``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, new_figure

#: Targets of issue 14: same-round ratio to the floor at the default size.
TARGETS = {"kd": 1.03, "cwd": 1.03, "at": 1.03, "ppd": 1.03, "skd_pairwise": 1.08, "mimic": 1.08,
           "bpkd": 1.05, "bcd": 1.12, "skd_holistic": 1.30, "skd": 1.40, "ifvd": 1.5}


def _size_key(record: Mapping) -> str:
    return f"{record.get('height', '?')}×{record.get('width', '?')}"


def bench_figure(records: Sequence[Mapping], targets: Mapping[str, float] | None = None) -> NotebookFigure:
    """Two panels: ratio to the floor per recipe (bars per size, IQR of ms/step relative to the
    median as error bars, targets as ticks), and peak memory (MiB) per recipe."""
    targets = TARGETS if targets is None else targets
    recipes = list(dict.fromkeys(r["recipe"] for r in records))
    sizes = list(dict.fromkeys(_size_key(r) for r in records))
    by_key = {(r["recipe"], _size_key(r)): r for r in records}
    fig, axes = new_figure(1, 2, width=max(4.0, 0.55 * len(recipes) * max(1, len(sizes)) + 1.5), height=3.4)
    x = np.arange(len(recipes))
    bar = 0.8 / max(1, len(sizes))
    for k, size in enumerate(sizes):
        offset = (k - (len(sizes) - 1) / 2) * bar
        ratios, errors, peaks = [], [], []
        for name in recipes:
            rec = by_key.get((name, size), {})
            ratio, ms, iqr = rec.get("ratio_to_floor", math.nan), rec.get("ms", math.nan), rec.get("iqr_ms", math.nan)
            ratios.append(ratio)
            errors.append(ratio * iqr / ms / 2 if ms and ms == ms and iqr == iqr else 0.0)
            peaks.append(rec.get("peak_mib", math.nan))
        axes[0, 0].bar(x + offset, ratios, bar, yerr=errors, capsize=2, label=size)
        axes[0, 1].bar(x + offset, peaks, bar, label=size)
    for i, name in enumerate(recipes):
        if name in targets:
            axes[0, 0].plot([i - 0.45, i + 0.45], [targets[name]] * 2, color="black", linewidth=1.5,
                            label="target" if i == min(j for j, n in enumerate(recipes) if n in targets) else None)
    axes[0, 0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0, 0].set_ylabel("× floor (same-round median)")
    axes[0, 1].set_ylabel("peak MiB")
    for ax in axes[0]:
        ax.set_xticks(x, recipes, rotation=60, ha="right", fontsize=8)
        ax.legend(fontsize=7)
    axes[0, 0].set_title("step time / (student step + teacher forward)", fontsize=9)
    axes[0, 1].set_title("peak memory per row (fresh process)", fontsize=9)
    return fig
