"""`mimic`: MIMIC / FitNet feature regression (SKD Table 2 baseline)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to
from torch import nn


@register
class MimicKD(DistillMethod):
    """A trained 1×1 conv maps student features to the teacher's width, then mean squared error."""

    name = "mimic"
    default_taps = {"feat": "decoder"}
    default_weights = {"mimic": 1.0}

    def __init__(self, ctx: MethodContext, taps=None):
        super().__init__(ctx, taps)
        self.adapter = nn.Conv2d(self.channels("student", "feat"), self.channels("teacher", "feat"), kernel_size=1)

    def terms(self, student, teacher, batch, step):
        # The 1×1 adapter before the resize: both are linear and bilinear weights sum to 1 (so the
        # bias passes through), hence they commute; the conv then runs at the student's smaller size.
        s = resize_to(self.adapter(student["feat"]), teacher["feat"])
        return {"mimic": KF.mimic_kd(s.float(), teacher["feat"].float())}
