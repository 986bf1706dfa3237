"""Figures and tables: one module per figure family, named after the figure it draws.

- `comparison` (comparison), `trimap_curves`, `training_curves`: notebook 02;
- `entropy` (entropy_maps, entropy_vs_edge_accuracy): notebook 03;
- `cam` (cam_hirescam, cam_gradcam): notebook 04;
- `per_class` (per_class_trimap_iou, per_class_iou_gain): notebook 05;
- `edge_masks` (edge_masks_<i>), `boundaries` (decoupled_logits, bcd_boundaries),
  `qualitative` (qualitative, prediction_overlays), `discriminator_scores`: notebook 06;
- `ablations` (ablation_<group> sweeps): notebook 07;
- `dataset_preview` (`kdlab data preview`);
- `learning_curves` (the convergence study, `scripts/convergence.sh`).

The explorer's figure (explorer_snapshot, notebook 08) is `kdlab.explorer`. The shared helpers are
`kdlab.plots._common`; `save_figure` and `write_table` are re-exported here.
"""

from kdlab.plots._common import save_figure, write_table

__all__ = ["save_figure", "write_table"]
