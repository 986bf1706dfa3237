"""`cwd`: channel-wise distillation (METHODS.md section 2; BPKD's body loss without the mask)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


@register
class ChannelWiseKD(DistillMethod):
    """τ²/(N·C)·Σ KL(softmax_hw(t_nc/τ) ‖ softmax_hw(s_nc/τ)) on student logits resized to the teacher's."""

    name = "cwd"
    default_taps = {"logits": "head_logits"}
    default_weights = {"channel": 3.0}  # CWD's default loss weight for logits (OpenMMLab config)

    def __init__(self, ctx: MethodContext, taps=None, temperature: float = 1.0):
        super().__init__(ctx, taps)
        self.temperature = temperature

    def terms(self, student, teacher, batch, step):
        s = resize_to(student["logits"], teacher["logits"])
        return {"channel": KF.channel_wise_kd(s.float(), teacher["logits"].float(), self.temperature)}
