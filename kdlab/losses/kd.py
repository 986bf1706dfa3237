"""`kd`: pixel-wise distillation of the class distributions (SKD Eq. 1)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


@register
class PixelKD(DistillMethod):
    """τ²·KL(softmax_c(t/τ) ‖ softmax_c(s/τ)) per pixel, averaged; student logits resized to the teacher's."""

    name = "kd"
    default_taps = {"logits": "head_logits"}
    default_weights = {"pixel": 10.0}  # SKD's λ1

    def __init__(self, ctx: MethodContext, taps=None, temperature: float = 1.0):
        super().__init__(ctx, taps)
        self.temperature = temperature

    def terms(self, student, teacher, batch, step):
        s = resize_to(student["logits"], teacher["logits"])
        return {"pixel": KF.pixel_kd(s.float(), teacher["logits"].float(), self.temperature)}
