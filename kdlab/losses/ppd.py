"""`ppd`: pixel-wise (GAM + partial L2) and pair-wise (pooled graph) distillation for DeepLabV3+ (PPD Eq. 1–9)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


@register
class PixelPairwiseDistillation(DistillMethod):
    """Pixel-wise: partial L2 (Eq. 4) between the channel sums (GAM, p = 1, Eq. 1) of pre-ReLU maps (Eq. 5).
    Pair-wise: cosine similarities of the 3×3 adaptive-max-pooled last encoder map (Eq. 6–8).

    Positions (PPD Table 3): END = the last conv before the probability scores (tap ``head_logits``,
    the default), MIDDLE = the last conv of the decoder (tap ``decoder_pre_relu``); select them with
    ``taps: {pixel: decoder_pre_relu}`` (or ``taps: {pairwise: ...}`` for the pair-wise term).
    For smp's DeepLabV3+ ``decoder_pre_relu`` is the BatchNorm output of ``decoder.block2`` (its last
    conv, a separable 3×3), for PSPNet that of ``decoder.conv`` (the 1×1 after the pyramid).

    ``normalize``: each side's channel sum is divided by its own channel count
    (`kdlab.losses.functional.ppd_pixel_kd`), for taps whose widths differ between the pair (MIDDLE:
    kdlab's default PSPNet student has a 512-wide decoder, the DeepLabV3+ teacher a 256-wide one). For
    equal widths it scales the term by 1/C², so one weight serves both student configs.
    """

    name = "ppd"
    default_taps = {"pixel": "head_logits", "pairwise": "encoder_out"}
    default_weights = {"pixel": 100.0, "pairwise": 1.0}  # α, β of Eq. 9

    def __init__(self, ctx: MethodContext, taps=None, grid: int = 3, pixel: bool = True, pairwise: bool = True,
                 normalize: bool = False):
        super().__init__(ctx, taps)
        self.grid, self.use_pixel, self.use_pairwise, self.normalize = grid, pixel, pairwise, normalize

    def terms(self, student, teacher, batch, step):
        out = {}
        if self.use_pixel:
            s = resize_to(student["pixel"], teacher["pixel"])
            out["pixel"] = KF.ppd_pixel_kd(s.float(), teacher["pixel"].float(), self.normalize)
        if self.use_pairwise:
            s = resize_to(student["pairwise"], teacher["pairwise"])
            out["pairwise"] = KF.ppd_pairwise_kd(s.float(), teacher["pairwise"].float(), self.grid)
        return out
