"""`local_pairwise`: the LOCAL baseline of SKD Table 2 (similarities with the 8 neighbours)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, register, resize_to


@register
class LocalPairwiseKD(DistillMethod):
    """Squared differences of each pixel's cosine similarity with its 8 neighbours."""

    name = "local_pairwise"
    default_taps = {"feat": "decoder"}
    default_weights = {"local": 10.0}

    def terms(self, student, teacher, batch, step):
        s = resize_to(student["feat"], teacher["feat"])
        return {"local": KF.local_pairwise_kd(s.float(), teacher["feat"].float())}
