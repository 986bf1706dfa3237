"""Figure `skd_discriminator_scores` (SKD Fig. 3a): the trained discriminator's scores per model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kdlab.plots._common import NotebookFigure, new_figure


def discriminator_scores_figure(scores: Mapping[str, np.ndarray], reference: str = "teacher") -> NotebookFigure:
    """Box plots of the discriminator scores per model (`kdlab.inspection.discriminator_scores`), and
    of each model's score minus ``reference``'s on the same image."""
    labels = list(scores)
    others = [label for label in labels if label != reference]
    fig, axes = new_figure(1, 2, width=max(3.5, 0.7 * len(labels)), height=3.4)
    axes[0, 0].boxplot([scores[label] for label in labels], tick_labels=labels)
    axes[0, 0].set_ylabel("D(Q | I)")
    axes[0, 0].set_title("Discriminator score", fontsize="medium")
    axes[0, 1].boxplot([scores[label] - scores[reference] for label in others], tick_labels=others)
    axes[0, 1].axhline(0, color="grey", linestyle="--", linewidth=0.8)
    axes[0, 1].set_ylabel(f"D(Q | I) − D(Q_{reference} | I)")
    axes[0, 1].set_title(f"Score difference to the {reference}", fontsize="medium")
    for ax in axes[0]:
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(axis="y", alpha=0.3)
    return fig
