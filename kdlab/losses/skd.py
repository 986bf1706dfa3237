"""`skd`: structured knowledge distillation = pixel-wise + pair-wise + holistic (SKD Eq. 1–4)."""

from torch import nn

from kdlab.losses.base import DistillMethod, MethodContext, register
from kdlab.losses.kd import PixelKD
from kdlab.losses.skd_holistic import HolisticKD
from kdlab.losses.skd_pairwise import PairwiseKD


@register
class StructuredKD(DistillMethod):
    """ℓ = ℓ_ce + λ1(ℓ_pi + ℓ_pa) − λ2·ℓ_ho with λ1 = 10, λ2 = 0.1, built from the three part methods."""

    name = "skd"
    default_taps = {**PixelKD.default_taps, **PairwiseKD.default_taps}
    default_weights = {**PixelKD.default_weights, **PairwiseKD.default_weights, **HolisticKD.default_weights}
    adversarial_terms = HolisticKD.adversarial_terms

    def __init__(self, ctx: MethodContext, taps=None, temperature: float = 1.0,
                 pool_kernel: int | list[int] | tuple[int, int] | None = (2, 2), pool_scale: float | None = None,
                 d_width: int = 64, d_lr: float = 1e-4):
        super().__init__(ctx, taps)
        self.parts = nn.ModuleList([
            PixelKD(ctx, self._part_taps(PixelKD), temperature=temperature),
            PairwiseKD(ctx, self._part_taps(PairwiseKD), pool_kernel=pool_kernel, pool_scale=pool_scale),
            HolisticKD(ctx, self._part_taps(HolisticKD), d_width=d_width, d_lr=d_lr),
        ])

    def _part_taps(self, part: type[DistillMethod]) -> dict:
        return {role: self.taps[role] for role in part.default_taps}

    def terms(self, student, teacher, batch, step):
        out = {}
        for part in self.parts:
            out.update(part.terms(student, teacher, batch, step))
        return out

    def extra_state(self) -> dict:
        return self.parts[2].extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.parts[2].load_extra_state(state)
