"""`ifvd`: intra-class feature variation distillation (Wang et al., ECCV 2020, Sec. 3)."""

import torch.nn.functional as F

from kdlab.data.synthetic import IGNORE_INDEX
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register


@register
class IntraClassVariationKD(DistillMethod):
    """MSE between the student's and teacher's maps of pixel-to-own-class-prototype cosine similarity.

    Each side's map is computed on its own feature map (labels nearest-resized to it), so channel
    counts may differ and no adapter is needed. Where the resolutions differ, the student's one-channel
    map is bilinearly resized to the teacher's (not its C-channel features: the same convention on a
    map C times smaller); the mean runs over the teacher map's valid pixels.
    """

    name = "ifvd"
    default_taps = {"feat": "decoder"}
    default_weights = {"ifv": 200.0}  # λ_ifv of the official IFVD code (options.py, --lambda-ifv)

    def __init__(self, ctx: MethodContext, taps=None):
        super().__init__(ctx, taps)

    def terms(self, student, teacher, batch, step):
        s_feat, t_feat = student["feat"].float(), teacher["feat"].float()
        labels, classes = batch["label"], self.ctx.num_classes
        if s_feat.shape[-2:] == t_feat.shape[-2:]:
            return {"ifv": KF.ifvd_kd(s_feat, t_feat, labels, classes, IGNORE_INDEX)}
        t_map, valid = KF.ifv_map(t_feat, labels, classes, IGNORE_INDEX)
        s_map, _ = KF.ifv_map(s_feat, labels, classes, IGNORE_INDEX)
        s_map = F.interpolate(s_map[:, None], size=t_map.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return {"ifv": KF.ifv_map_mse(s_map, t_map, valid)}
