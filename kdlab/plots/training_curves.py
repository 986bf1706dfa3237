"""Figure `training_curves`: every logged loss term against the iteration, one panel per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdlab.plots._common import NotebookFigure, new_figure


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def training_curves_figure(terms: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                           smoothing: int = 50) -> NotebookFigure:
    """Loss terms (unweighted, as logged; `kdlab.inspection.loss_terms_by_label`) vs iteration, one
    panel per label, mean over seeds, smoothed by a moving average over ``len / smoothing``
    iterations. Log scale where every value is positive, symmetric log where a term goes negative
    (SKD's critic and holistic terms)."""
    columns = min(3, len(terms))
    rows = -(-len(terms) // columns)
    fig, axes = new_figure(rows, columns, width=4.0, height=3.0)
    for ax in axes.flat[len(terms):]:
        ax.set_axis_off()
    for ax, (label, logs) in zip(axes.flat, terms.items()):
        length = min(len(log["iteration"]) for log in logs)
        window = max(1, length // smoothing)
        iterations = _moving_average(logs[0]["iteration"][:length].astype(np.float64), window)
        all_positive = True
        for name in (name for name in logs[0] if name != "iteration"):
            mean = np.mean([log[name][:length] for log in logs], axis=0)
            all_positive &= bool(np.all(mean > 0))
            ax.plot(iterations, _moving_average(mean, window), label=name, linestyle="--" if name == "loss" else "-")
        ax.set_yscale("log" if all_positive else "symlog", **({} if all_positive else {"linthresh": 1e-2}))
        ax.set_title(f"{label} ({len(logs)} seed{'s' if len(logs) > 1 else ''})", fontsize="medium")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss term")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig
