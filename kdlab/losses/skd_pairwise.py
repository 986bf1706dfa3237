"""`skd_pairwise`: pair-wise similarity distillation over all spatial positions (SKD Eq. 2)."""

import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.losses import functional as KF
from kdlab.losses.base import DistillMethod, MethodContext, register, resize_to
from kdlab.morphology import block_max


def _shift_clamped(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``x`` at index ``i + step`` along ``dim`` (``step`` = ±1), the border index clamped."""
    n = x.shape[dim]
    if step < 0:
        return torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)


def _add_shifted_clamped_(out: torch.Tensor, grad: torch.Tensor, dim: int, step: int) -> None:
    """The adjoint of ``_shift_clamped``: ``out[i + step] += grad[i]`` (border index clamped)."""
    n = grad.shape[dim]
    if step < 0:
        out.narrow(dim, 0, n - 1).add_(grad.narrow(dim, 1, n - 1))
        out.narrow(dim, 0, 1).add_(grad.narrow(dim, 0, 1))
    else:
        out.narrow(dim, 1, n - 1).add_(grad.narrow(dim, 0, n - 1))
        out.narrow(dim, n - 1, 1).add_(grad.narrow(dim, n - 1, 1))


class _MaxPool2OfBilinearUp2(torch.autograd.Function):
    """Forward as in `max_pool2_of_bilinear_up2`; the backward is written out (a handful of
    element-wise ops on the small map, three boolean masks saved) instead of autograd's graph."""

    @staticmethod
    def forward(ctx, x):
        phases = (torch.lerp(x, _shift_clamped(x, -1, -1), 0.25), torch.lerp(x, _shift_clamped(x, -1, 1), 0.25))
        rows, ups = [], []
        for g in phases:
            above, below = _shift_clamped(g, -2, -1), _shift_clamped(g, -2, 1)
            up = above >= below  # ties: the window's first entry, as max-pooling
            rows.append(torch.lerp(g, torch.where(up, above, below), 0.25))
            ups.append(up)
        first = rows[0] >= rows[1]
        ctx.save_for_backward(first, *ups)
        return torch.where(first, rows[0], rows[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        first, *ups = ctx.saved_tensors
        grad_rows = (grad * first, grad * ~first)
        grad_x = None
        for b, (grad_row, up) in enumerate(zip(grad_rows, ups)):
            grad_g = 0.75 * grad_row
            neighbour = 0.25 * grad_row
            to_above = neighbour * up
            _add_shifted_clamped_(grad_g, to_above, -2, -1)
            _add_shifted_clamped_(grad_g, neighbour - to_above, -2, 1)
            if grad_x is None:
                grad_x = 0.75 * grad_g
            else:
                grad_x.add_(grad_g, alpha=0.75)
            _add_shifted_clamped_(grad_x, 0.25 * grad_g, -1, -1 if b == 0 else 1)
        return grad_x


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
