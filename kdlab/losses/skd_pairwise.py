"""`skd_pairwise`: pair-wise similarity distillation over all spatial positions (SKD Eq. 2)."""

from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to


@register
class PairwiseKD(DistillMethod):
    """Squared differences of the cosine-similarity matrices of student and teacher features.

    Channel counts may differ (similarities are channel-independent); the student map is resized
    to the teacher's. `pool_kernel` max-pools both maps first to bound the (hw)² cost.
    """

    name = "skd_pairwise"
    default_taps = {"feat": "decoder"}
    default_weights = {"pairwise": 10.0}  # SKD's λ1

    def __init__(self, ctx: MethodContext, taps=None, pool_kernel: int | None = 2, max_block_elems: int | None = None):
        super().__init__(ctx, taps)
        self.pool_kernel = pool_kernel
        self.max_block_elems = max_block_elems

    def terms(self, student, teacher, batch, step):
        s = resize_to(student["feat"], teacher["feat"])
        return {"pairwise": KF.pairwise_similarity_kd(s.float(), teacher["feat"].float(), self.pool_kernel,
                                                      self.max_block_elems)}
