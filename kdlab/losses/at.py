"""`at`: attention transfer (SKD Table 2 baseline); `gat` is its PPD form (Eq. 2, p = 2)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


@register
class AttentionTransfer(DistillMethod):
    """Squared differences of L2-normalised attention maps Σ_c |f_c|^p."""

    name = "at"
    default_taps = {"feat": "encoder_out"}
    default_weights = {"attention": 1.0}

    def __init__(self, ctx: MethodContext, taps=None, p: float = 2.0):
        super().__init__(ctx, taps)
        self.p = p

    def terms(self, student, teacher, batch, step):
        s = resize_to(student["feat"], teacher["feat"])
        return {"attention": KF.attention_transfer(s.float(), teacher["feat"].float(), self.p)}


@register
class GeneralisedAttentionTransfer(AttentionTransfer):
    """PPD's GAT baseline: attention transfer with p = 2 on the decoder's last feature map."""

    name = "gat"
    default_taps = {"feat": "decoder"}
