"""`skd_pairwise`: pair-wise similarity distillation over all spatial positions (SKD Eq. 2)."""

import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to
from kdlab.morphology import block_max


def _fold_replicate_padding_(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of a 1-pixel replicate padding of the last two dimensions: the border rows and
    columns of ``grad`` are added onto the ones they copy; returns the inner view."""
    grad[..., 1, :] += grad[..., 0, :]
    grad[..., -2, :] += grad[..., -1, :]
    grad[..., :, 1] += grad[..., :, 0]
    grad[..., :, -2] += grad[..., :, -1]
    return grad[..., 1:-1, 1:-1]


class _MaxPool2OfBilinearUp2(torch.autograd.Function):
    """Forward as in `max_pool2_of_bilinear_up2`, on views of one replicate-padded copy of ``x``
    (the clamped neighbours); the backward is written out (a few element-wise ops on the small map,
    three boolean masks saved) instead of autograd's graph. Values are selected with
    `torch.maximum`, which is several times faster than `torch.where` on the CPU; the masks
    record which entry won (the first one on ties, as max-pooling)."""

    @staticmethod
    def forward(ctx, x):
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        centre = padded[..., 1:-1]
        rows, ups = [], []
        for side in (padded[..., :-2], padded[..., 2:]):  # the two column phases, over all h + 2 rows
            g = torch.lerp(centre, side, 0.25)
            above, below = g[..., :-2, :], g[..., 2:, :]
            ups.append(above >= below)
            rows.append(torch.lerp(g[..., 1:-1, :], torch.maximum(above, below), 0.25))
        first = rows[0] >= rows[1]
        ctx.save_for_backward(first, *ups)
        return torch.maximum(rows[0], rows[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        first, *ups = (mask.to(grad.dtype) for mask in ctx.saved_tensors)  # bool × float would cast per op
        height, width = grad.shape[-2:]
        grad_padded = grad.new_zeros(*grad.shape[:-2], height + 2, width + 2)
        grad_first = grad * first
        for grad_row, up, side in ((grad_first, ups[0], slice(0, width)), (grad - grad_first, ups[1], slice(2, None))):
            grad_g = grad.new_zeros(*grad.shape[:-2], height + 2, width)
            grad_g[..., 1:-1, :].add_(grad_row, alpha=0.75)
            to_above = grad_row * up
            grad_g[..., :-2, :].add_(to_above, alpha=0.25)
            grad_g[..., 2:, :].add_(grad_row - to_above, alpha=0.25)
            grad_padded[..., 1:-1].add_(grad_g, alpha=0.75)
            grad_padded[..., side].add_(grad_g, alpha=0.25)
        return _fold_replicate_padding_(grad_padded)


def max_pool2_of_bilinear_up2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(interpolate(x, scale 2, bilinear, align_corners=False), 2)`` without building the
    2× map (pooling before upsampling); ``x`` is ``…×h×w`` with ``h, w ≥ 2``.

    Along one axis, the two upsampled entries of a 2-window are ``0.75·x_i + 0.25·x_{i−1}`` and
    ``0.75·x_i + 0.25·x_{i+1}`` (border indices clamped), so their max is
    ``0.75·x_i + 0.25·max(x_{i−1}, x_{i+1})``. The column interpolation has two phases ``g_0, g_1``;
    per phase the row max is taken that way, and the result is the max of the two. Equal to the
    upsample-then-pool form up to float rounding (the bilinear kernel fuses its multiply-adds in
    another order). The gradient goes to the window entry max-pooling picks; where two entries
    are mathematically equal (zeros of a ReLU map make such ties), to the first of them, while
    the old form's pick is then decided by rounding (both are valid subgradients).
    """
    return _MaxPool2OfBilinearUp2.apply(x)


@register
class PairwiseKD(DistillMethod):
    """Squared differences of the cosine-similarity matrices of student and teacher features.

    Channel counts may differ (similarities are channel-independent); the student map is resized
    to the teacher's. `pool_kernel` max-pools both maps first to bound the (hw)² cost: a side or a
    ``[kh, kw]`` pair (non-square maps), kernel = stride, ceil mode. `pool_scale` instead derives
    the kernel from the teacher's map size ``h×w`` at every step, as SKD's official code
    (``--pool-scale 0.5``): ``(max(1, int(h·scale)), max(1, int(w·scale)))``. When the teacher's
    map is exactly twice the student's and the kernel is 2×2, the student side is pooled without
    building its upsampled map (`max_pool2_of_bilinear_up2`; same values and gradients).
    """

    name = "skd_pairwise"
    default_taps = {"feat": "decoder"}
    default_weights = {"pairwise": 10.0}  # SKD's λ1

    def __init__(self, ctx: MethodContext, taps=None, pool_kernel: int | list[int] | tuple[int, int] | None = (2, 2),
                 pool_scale: float | None = None, max_block_elems: int | None = None):
        super().__init__(ctx, taps)
        self.pool_kernel, self.pool_scale = parse_pool_options(self.name, pool_kernel, pool_scale)
        self.max_block_elems = max_block_elems

    def kernel_for(self, height: int, width: int) -> tuple[int, int] | None:
        """The pooling kernel for a teacher map of ``height×width`` (None = no pooling)."""
        if self.pool_scale is None:
            return self.pool_kernel
        return max(1, int(height * self.pool_scale)), max(1, int(width * self.pool_scale))

    def terms(self, student, teacher, batch, step):
        s_feat, t_feat = student["feat"], teacher["feat"]
        (sh, sw), (th, tw) = s_feat.shape[-2:], t_feat.shape[-2:]
        kernel = self.kernel_for(th, tw)
        if kernel == (2, 2) and (th, tw) == (2 * sh, 2 * sw) and sh > 1 and sw > 1:
            s = max_pool2_of_bilinear_up2(s_feat.float())
            t = block_max(t_feat.float(), 2)  # max_pool2d(2, ceil_mode=True), bit for bit, faster
            return {"pairwise": KF.pairwise_similarity_kd(s, t, None, self.max_block_elems)}
        s = resize_to(s_feat, t_feat)
        return {"pairwise": KF.pairwise_similarity_kd(s.float(), t_feat.float(), kernel, self.max_block_elems)}


def parse_pool_options(method: str, pool_kernel, pool_scale) -> tuple[tuple[int, int] | None, float | None]:
    """Recipe options ``pool_kernel`` (a side, a ``[kh, kw]`` pair or null) and ``pool_scale`` (a
    number in (0, 1] or null) as ``((kh, kw) or None, scale or None)``; bad values are a
    ConfigError naming the option. ``pool_scale`` replaces the kernel, so it may not be combined
    with a ``pool_kernel`` other than the default."""
    if pool_kernel is not None:
        try:
            pool_kernel = KF.pool_kernel_pair(pool_kernel)
        except ValueError:
            raise ConfigError(f"method {method!r}: option pool_kernel must be a positive integer, a [kh, kw] "
                              f"pair of them, or null, got {pool_kernel!r}") from None
    if pool_scale is not None:
        if isinstance(pool_scale, bool) or not isinstance(pool_scale, (int, float)) or not 0 < pool_scale <= 1:
            raise ConfigError(f"method {method!r}: option pool_scale must be a number in (0, 1] or null, "
                              f"got {pool_scale!r}")
        if pool_kernel not in (None, (2, 2)):
            raise ConfigError(f"method {method!r}: options pool_kernel and pool_scale exclude each other "
                              f"(pool_scale derives the kernel from the map size)")
        pool_kernel = None
    return pool_kernel, (float(pool_scale) if pool_scale is not None else None)
