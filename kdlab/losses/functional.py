"""Every distillation term of the project as a plain function (METHODS.md sections 1–5 and 7).

Tensors in, a scalar (or a map) out; no state and no ``nn.Module``. The teacher argument
is always treated as a constant (detached here), so gradients reach only the student.
Student and teacher must have the same spatial size (the modules resize before calling);
channel counts may differ only for similarity-based terms. Bad input raises ``ValueError``
with a one-line message naming the argument.

Notation: ``s``/``t`` are student/teacher tensors ``N×C×h×w``; ``KL(p‖q) = Σ p (log p − log q)``
with the teacher distribution ``p`` as the target; "batch mean" averages over the ``N`` images.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdlab.morphology import block_max, dilate, erode

__all__ = [
    "DEFAULT_MAX_BLOCK_ELEMS",
    "BCD_DIRECTIONS",
    "pixel_kd",
    "pairwise_similarity_kd",
    "local_pairwise_kd",
    "attention_transfer",
    "mimic_kd",
    "channel_wise_kd",
    "bpkd_edge_masks",
    "bpkd_edge_loss",
    "bpkd_body_loss",
    "bcd_boundary_affinity",
    "bcd_affinity_valid_mask",
    "boundary_kd",
    "context_relation_kd",
    "gam",
    "partial_l2",
    "ppd_pixel_kd",
    "ppd_pairwise_kd",
    "wgan_critic_loss",
    "gradient_penalty",
    "critic_objective",
    "holistic_generator_loss",
]

#: Largest number of elements of one block of an ``hw×hw`` relation matrix (summed over the
#: batch) that the pair-wise and context terms hold at a time (64 MiB in float32).
DEFAULT_MAX_BLOCK_ELEMS = 2**24

#: The 8 directions ``(dy, dx)`` of BCD's pixel pairs, in the order of the affinity channels.
BCD_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

_FORMS = ("channel", "pixel")


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _shape_of(x) -> object:
    """The shape of a tensor, or the type name of anything else (for error messages)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_4d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D N×C×h×w tensor, got {_shape_of(x)}")
    _check_float(x, name)


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")


def _student_and_constant_teacher(
    student: torch.Tensor,
    teacher: torch.Tensor,
    names: tuple[str, str],
    same_channels: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a student/teacher pair of ``N×C×h×w`` tensors and return it with the teacher detached."""
    student_name, teacher_name = names
    _check_4d(student, student_name)
    _check_4d(teacher, teacher_name)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{teacher_name} has batch size {teacher.shape[0]} but {student_name} has {student.shape[0]}"
        )
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"{student_name} has spatial size {tuple(student.shape[-2:])} but {teacher_name} has "
            f"{tuple(teacher.shape[-2:])}; resize before calling"
        )
    if same_channels and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{student_name} has {student.shape[1]} channels but {teacher_name} has {teacher.shape[1]}; "
            "this term needs equal channel counts"
        )
    return student, teacher.detach()


def _check_temperature(temperature: float | torch.Tensor) -> None:
    if isinstance(temperature, torch.Tensor):  # a 0-d tensor is checked on its device: reading it would wait
        torch._assert_async(temperature > 0, "temperature must be positive")
        return
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _softmax_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    dim: int,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))`` along ``dim`` (that dimension is summed out); ``τ`` a
    float or a 0-d tensor.

    ``mask`` (boolean, broadcastable to the logits) excludes entries from both softmaxes.
    """
    teacher_logits = teacher_logits / temperature
    student_logits = student_logits / temperature
    if mask is not None:
        # Excluded entries get probability 0 on both sides, so they add 0 to the KL. A finite
        # value rather than -inf, so that a slice with no kept entry gives uniform distributions
        # (KL 0, finite gradients) instead of NaN; half the most negative float, so that
        # log_softmax subtracting the maximum cannot overflow it to -inf (float16).
        lowest = torch.finfo(student_logits.dtype).min / 2
        teacher_logits = teacher_logits.masked_fill(~mask, lowest)
        student_logits = student_logits.masked_fill(~mask, lowest)
    kl = F.kl_div(
        F.log_softmax(student_logits, dim=dim),
        F.log_softmax(teacher_logits, dim=dim),
        log_target=True,
        reduction="none",
    )
    return temperature**2 * kl.sum(dim)


def _pixel_kl_map(student_logits, teacher_logits, temperature=1.0) -> torch.Tensor:
    """Per-pixel ``τ²·KL`` of the channel softmaxes (pixel-wise form): ``N×h×w``."""
    return _softmax_kl(teacher_logits, student_logits, dim=1, temperature=temperature)


def _channel_kl_map(student_logits, teacher_logits, temperature=1.0) -> torch.Tensor:
    """Per-channel ``τ²·KL`` of the spatial softmaxes (channel-wise form): ``N×C``."""
    return _softmax_kl(
        teacher_logits.flatten(2), student_logits.flatten(2), dim=-1, temperature=temperature
    )


def _unit_positions(feat: torch.Tensor) -> torch.Tensor:
    """``N×C×h×w`` → ``N×C×hw`` with every position's feature vector L2-normalised over channels.

    Products of these vectors are the cosine similarities ``f_iᵀf_j/(‖f_i‖‖f_j‖)``.
    """
    return F.normalize(feat.flatten(2), dim=1)


def _block_budget(max_block_elems: int | None) -> int:
    if max_block_elems is None:
        return DEFAULT_MAX_BLOCK_ELEMS
    if isinstance(max_block_elems, bool) or not isinstance(max_block_elems, int) or max_block_elems < 1:
        raise ValueError(f"max_block_elems must be a positive integer, got {max_block_elems!r}")
    return max_block_elems


def _sum_over_row_blocks(
    block_loss: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor],
    student: torch.Tensor,
    teacher: torch.Tensor,
    max_block_elems: int | None,
) -> torch.Tensor:
    """Sum of ``block_loss(student, teacher, start, stop)`` over row blocks of an ``hw×hw`` relation.

    ``student``/``teacher`` are ``N×C×hw``; ``block_loss`` builds rows ``start:stop`` of the
    relation matrix of every image (``N×rows×hw`` elements) and reduces them to a scalar. Rows
    are grouped so that one block stays within the budget ``max_block_elems``.
    """
    batch, _, length = student.shape
    rows_per_block = max(1, _block_budget(max_block_elems) // (batch * length))
    if rows_per_block >= length:
        return block_loss(student, teacher, 0, length)
    total = student.new_zeros(())
    for start in range(0, length, rows_per_block):
        stop = min(start + rows_per_block, length)
        # Without checkpointing, autograd would keep every block alive until backward, i.e.
        # the whole hw×hw matrix; recomputing each block during backward bounds the memory.
        total = total + checkpoint(block_loss, student, teacher, start, stop, use_reentrant=False)
    return total


class _SimilaritySquaredError(torch.autograd.Function):
    """``Σ_ij (s_iᵀs_j − t_iᵀt_j)²`` over all pairs, for ``N×C×L`` maps ``s`` and a constant ``t``.

    The backward uses the symmetry of ``D = SᵀS − TᵀT``: ``∂/∂s = 4·s·D``, one batched product
    where autograd's graph of ``sᵀs`` takes two."""

    @staticmethod
    def forward(ctx, s_unit, t_unit):
        diff = s_unit.transpose(1, 2) @ s_unit - t_unit.transpose(1, 2) @ t_unit
        ctx.save_for_backward(s_unit, diff)
        return diff.pow(2).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        s_unit, diff = ctx.saved_tensors
        return (4 * grad) * (s_unit @ diff.to(s_unit.dtype)), None  # diff is in autocast's dtype


def _similarity_block_squared_error(s_unit, t_unit, start: int, stop: int) -> torch.Tensor:
    """``Σ (a^s_ij − a^t_ij)²`` over rows ``i ∈ [start, stop)`` of the cosine-similarity matrices."""
    if start == 0 and stop == s_unit.shape[-1]:
        return _SimilaritySquaredError.apply(s_unit, t_unit)
    s_sim = s_unit[:, :, start:stop].transpose(1, 2) @ s_unit
    t_sim = t_unit[:, :, start:stop].transpose(1, 2) @ t_unit
    return (s_sim - t_sim).pow(2).sum()


def _similarity_distance(s_feat, t_feat, max_block_elems: int | None = None) -> torch.Tensor:
    """``(1/(hw)²) Σ_ij (a^s_ij − a^t_ij)²`` over all position pairs, batch mean (SKD Eq. 2)."""
    s_unit, t_unit = _unit_positions(s_feat), _unit_positions(t_feat)
    batch, _, length = s_unit.shape
    total = _sum_over_row_blocks(_similarity_block_squared_error, s_unit, t_unit, max_block_elems)
    return total / (batch * length**2)


# ---------------------------------------------------------------------------------------------
# SKD (section 1) and its baselines
# ---------------------------------------------------------------------------------------------


def pixel_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise distillation, SKD Eq. 1: pixel mean of ``τ²·KL(softmax_c(t/τ) ‖ softmax_c(s/τ))``.

    ``valid_mask`` (boolean ``N×h×w``, True = keep) restricts the mean to the valid pixels of
    the whole batch; an all-False mask gives 0.
    """
    student_logits, teacher_logits = _student_and_constant_teacher(
        student_logits, teacher_logits, ("student_logits", "teacher_logits"), same_channels=True
    )
    _check_temperature(temperature)
    kl = _pixel_kl_map(student_logits, teacher_logits, temperature)
    if valid_mask is None:
        return kl.mean()
    if valid_mask.dtype != torch.bool or valid_mask.shape != kl.shape:
        raise ValueError(
            f"valid_mask must be a boolean tensor of shape {tuple(kl.shape)}, "
            f"got {valid_mask.dtype} {tuple(valid_mask.shape)}"
        )
    return torch.where(valid_mask, kl, 0.0).sum() / valid_mask.sum().clamp(min=1)


def pool_kernel_pair(pool_kernel) -> tuple[int, int]:
    """``(kh, kw)`` from a pooling kernel given as a positive side or a ``(kh, kw)`` pair (list or
    tuple) of positive integers; anything else is a ValueError naming the value."""
    pair = (pool_kernel, pool_kernel) if not isinstance(pool_kernel, (list, tuple)) else tuple(pool_kernel)
    if len(pair) != 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in pair):
        raise ValueError(f"pool_kernel must be a positive integer, a (kh, kw) pair of them, or None, "
                         f"got {pool_kernel!r}")
    return pair


def pairwise_similarity_kd(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    pool_kernel: int | Sequence[int] | None = None,
    max_block_elems: int | None = None,
) -> torch.Tensor:
    """Pair-wise similarity distillation, SKD Eq. 2: ``(1/(hw)²) Σ_ij (a^s_ij − a^t_ij)²``, batch mean.

    ``a_ij`` is the cosine similarity of the feature vectors at positions ``i`` and ``j``
    (gradients flow through the norms). With ``pool_kernel`` both maps are first max-pooled
    with kernel = stride = ``pool_kernel`` (a side, or a ``(kh, kw)`` pair for non-square maps) in
    ceil mode (partial windows at the right and bottom edges are kept). The similarity matrices
    are built in row blocks of at most ``max_block_elems`` elements for the whole batch (default ``DEFAULT_MAX_BLOCK_ELEMS``);
    the value and the gradient do not depend on the block size. Channel counts may differ.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    if pool_kernel is not None:
        kh, kw = pool_kernel_pair(pool_kernel)
        student_feat = F.max_pool2d(student_feat, kernel_size=(kh, kw), stride=(kh, kw), ceil_mode=True)
        if kh == kw:
            teacher_feat = block_max(teacher_feat, kh)  # the same values, faster; no gradient needed
        else:
            teacher_feat = F.max_pool2d(teacher_feat, kernel_size=(kh, kw), stride=(kh, kw), ceil_mode=True)
    return _similarity_distance(student_feat, teacher_feat, max_block_elems)


def local_pairwise_kd(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """LOCAL baseline of SKD Table 2: cosine similarities of each pixel with its 8 neighbours.

    Mean of ``(a^s_ij − a^t_ij)²`` over all neighbouring pairs inside the map (every image has
    the same pairs, so this is also the batch mean). Each unordered pair is visited once, via
    the 4 "forward" offsets; since ``a_ij = a_ji`` this equals the mean over the ordered pairs of
    all 8 neighbours. A 1×1 map has no pairs and gives 0. Channel counts may differ.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    height, width = student_feat.shape[-2:]
    s_unit, t_unit = (F.normalize(feat, dim=1) for feat in (student_feat, teacher_feat))
    total = student_feat.new_zeros(())
    pairs = 0
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        rows, cols = slice(0, height - dy), slice(max(0, -dx), width - max(0, dx))
        shifted_cols = slice(max(0, dx), width - max(0, -dx))
        s_sim = (s_unit[:, :, rows, cols] * s_unit[:, :, dy:, shifted_cols]).sum(1)
        t_sim = (t_unit[:, :, rows, cols] * t_unit[:, :, dy:, shifted_cols]).sum(1)
        total = total + (s_sim - t_sim).pow(2).sum()
        pairs += s_sim.numel()
    return total / max(pairs, 1)


def attention_transfer(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention transfer (AT; PPD's GAT, PPD Eq. 2): ``a = gam(f, p)`` flattened per image and
    L2-normalised; the loss is the mean over all ``N·h·w`` entries of ``(â_s − â_t)²``.

    Channel counts may differ.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    s_att, t_att = (F.normalize(gam(feat, p).flatten(1), dim=1) for feat in (student_feat, teacher_feat))
    return (s_att - t_att).pow(2).mean()


def mimic_kd(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """MIMIC / FitNet baseline of SKD Table 2: mean squared error between the feature maps.

    The 1×1 adapter that maps the student's channels to the teacher's is applied by the caller,
    so the channel counts must already agree.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=True
    )
    return F.mse_loss(student_feat, teacher_feat)


# ---------------------------------------------------------------------------------------------
# CWD (section 2)
# ---------------------------------------------------------------------------------------------


def channel_wise_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Channel-wise distillation: ``τ²/(N·C) Σ_{n,c} KL(softmax_hw(t_nc/τ) ‖ softmax_hw(s_nc/τ))``."""
    student_logits, teacher_logits = _student_and_constant_teacher(
        student_logits, teacher_logits, ("student_logits", "teacher_logits"), same_channels=True
    )
    _check_temperature(temperature)
    return _channel_kl_map(student_logits, teacher_logits, temperature).mean()


# ---------------------------------------------------------------------------------------------
# BPKD (section 3)
# ---------------------------------------------------------------------------------------------


def bpkd_edge_masks(
    labels: torch.Tensor,
    num_classes: int,
    out_size: int | Sequence[int],
    edge_width: int = 7,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Soft per-class edge masks ``M_E`` of BPKD Sec. 3.2: ``N×C×h×w`` floats in ``[0, 1]``.

    Per class ``c``: ``GT_edge,c = dilate(Y_c) − erode(Y_c)`` with a square window of side
    ``edge_width`` (``kdlab.morphology``: ``(w−1)//2`` pixels before each pixel and ``w//2``
    after it; outside the image counts as 0 for the dilation and as 1 for the erosion, so the
    image border does not make edges), where ``Y_c`` is the one-hot mask of ``labels``
    (``N×H×W`` integers; ignore pixels belong to no class). The binary masks are adaptively
    average-pooled to ``out_size`` (the logit size). Vectorised over batch and classes with
    separable boolean max filters; runs on the labels' device. Labels outside
    ``[0, num_classes)`` raise ``ValueError`` on the CPU; on other devices that check would need
    a host round-trip every step, so it is skipped there and such pixels belong to no class.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3:
        raise ValueError("labels must be an N×H×W integer tensor")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(edge_width, bool) or not isinstance(edge_width, int) or edge_width < 1:
        raise ValueError(f"edge_width must be a positive integer, got {edge_width!r}")
    valid = labels != ignore_index
    if labels.device.type == "cpu" and (((labels < 0) | (labels >= num_classes)) & valid).any():
        raise ValueError(f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}")
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    one_hot = (labels.unsqueeze(1) == classes) & valid.unsqueeze(1)
    # dilate ≥ Y ≥ erode on binary masks, so dilate − erode is dilate ∧ ¬erode
    edges = dilate(one_hot, edge_width) & ~erode(one_hot, edge_width)
    return F.adaptive_avg_pool2d(edges.float(), out_size)


def _divide_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is positive, 0 elsewhere (finite gradients)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), 0.0)


def _check_edge_masks(edge_masks: torch.Tensor, logits: torch.Tensor) -> None:
    if not isinstance(edge_masks, torch.Tensor) or edge_masks.shape != logits.shape:
        raise ValueError(
            f"edge_masks must have the logits' shape {tuple(logits.shape)}, got {_shape_of(edge_masks)}"
        )
    _check_float(edge_masks, "edge_masks")


def _check_form(form: str) -> None:
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")


def _post_mask_filter(kl_map: torch.Tensor, edge_masks: torch.Tensor, alpha, reduction: str = "sum") -> torch.Tensor:
    """POM, BPKD Eq. 3: ``Σ_c (α_c/n_c) Σ_i φ_i·M_E,c(i)`` per image (``n_c = 0`` → 0), batch mean.
    ``reduction="mean"`` divides each image's sum by its number of classes with ``n_c > 0``."""
    num_classes = edge_masks.shape[1]
    alpha = torch.as_tensor(alpha, dtype=kl_map.dtype, device=kl_map.device)
    if alpha.dim() > 1 or (alpha.dim() == 1 and alpha.numel() != num_classes):
        raise ValueError(f"alpha must be a scalar or a 1-D tensor of length {num_classes}")
    per_class = (kl_map.unsqueeze(1) * edge_masks).sum((2, 3))
    area = (edge_masks != 0).sum((2, 3))
    per_image = (alpha * _divide_or_zero(per_class, area)).sum(1)
    if reduction == "mean":
        per_image = _divide_or_zero(per_image, (area > 0).sum(1).to(per_image.dtype))
    return per_image.mean()


def _edge_weighted_mean(kl_map: torch.Tensor, edge_masks: torch.Tensor) -> torch.Tensor:
    """POM off: ``Σ_i φ_i m_i / Σ_i m_i`` per image, ``m = max_c M_E,c`` (0 without edges), batch mean."""
    weights = edge_masks.amax(1)
    area = weights.sum((1, 2))
    per_image = (kl_map * weights).sum((1, 2))
    return _divide_or_zero(per_image, area).mean()


def bpkd_edge_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    edge_masks: torch.Tensor,
    alpha: float | torch.Tensor = 2.0,
    prm: bool = True,
    pom: bool = True,
    form: str = "pixel",
    pom_reduction: str = "sum",
) -> torch.Tensor:
    """BPKD edge loss (Eq. 2–3) with the PRM / POM ablation switches of its Table 4.

    PRM (Eq. 2): ``Z_E = Z ⊙ M_E`` for both nets, then the per-pixel
    ``φ_i = KL(softmax_c(Z^t_E,i) ‖ softmax_c(Z^s_E,i))``; with ``prm=False`` the logits are
    not masked. POM (Eq. 3): ``Σ_c (α_c/n_c) Σ_i φ_i·M_E,c(i)`` per image, ``n_c`` the number of
    non-zero entries of ``M_E,c``, batch mean; ``alpha`` is a scalar or a length-C tensor. With
    ``pom=False``: ``Σ_i φ_i m_i / Σ_i m_i`` per image with ``m = max_c M_E,c``, no α, batch mean.
    An image without edge pixels contributes 0.

    ``pom_reduction`` (with ``pom=True``): ``"sum"`` over the classes, as Eq. 3 writes it, or
    ``"mean"`` over the image's classes with ``n_c > 0`` (the supplement's "average reduction"),
    which puts POM on the per-pixel scale of ``pom=False`` (with ``"sum"`` it is ≈ the number of
    edge classes × that).

    ``form="channel"`` is the Edge(C) variant of BPKD Table 3: channel-wise distillation
    (``channel_wise_kd``, τ = 1) of the PRM-masked logits. POM re-weights per-pixel terms and has
    no channel-wise counterpart, so that form requires ``pom=False``.
    """
    student_logits, teacher_logits = _student_and_constant_teacher(
        student_logits, teacher_logits, ("student_logits", "teacher_logits"), same_channels=True
    )
    _check_edge_masks(edge_masks, student_logits)
    _check_form(form)
    if pom_reduction not in ("sum", "mean"):
        raise ValueError(f"pom_reduction must be 'sum' or 'mean', got {pom_reduction!r}")
    if form == "channel" and pom:
        raise ValueError("pom=True needs form='pixel' (POM weights per-pixel terms); pass pom=False")
    if prm:
        student_logits, teacher_logits = student_logits * edge_masks, teacher_logits * edge_masks
    if form == "channel":
        return channel_wise_kd(student_logits, teacher_logits)
    kl_map = _pixel_kl_map(student_logits, teacher_logits)
    if pom:
        return _post_mask_filter(kl_map, edge_masks, alpha, pom_reduction)
    return _edge_weighted_mean(kl_map, edge_masks)


def bpkd_body_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    edge_masks: torch.Tensor,
    temperature: float = 1.0,
    form: str = "channel",
) -> torch.Tensor:
    """BPKD body loss (BEL, Eq. 4): ``Z_B = Z ⊙ (1 − max_c M_E,c)`` (broadcast over channels),
    then channel-wise distillation (``channel_wise_kd``) of ``Z_B``.

    ``form="pixel"`` is the Body(P) variant of BPKD Table 3: ``pixel_kd`` of ``Z_B``.
    """
    student_logits, teacher_logits = _student_and_constant_teacher(
        student_logits, teacher_logits, ("student_logits", "teacher_logits"), same_channels=True
    )
    _check_edge_masks(edge_masks, student_logits)
    _check_form(form)
    body = 1.0 - edge_masks.amax(1, keepdim=True)
    distill = channel_wise_kd if form == "channel" else pixel_kd
    return distill(student_logits * body, teacher_logits * body, temperature)


# ---------------------------------------------------------------------------------------------
# BCD (section 4)
# ---------------------------------------------------------------------------------------------


def _directional_steps(maps: torch.Tensor, radius: int, pad_value: float) -> torch.Tensor:
    """``N×h×w`` → ``N×8×(radius+1)×h×w``: entry ``[n, d, k, y, x]`` is the map at
    ``(y + k·dy, x + k·dx)`` for direction ``d = (dy, dx)`` of ``BCD_DIRECTIONS``, or
    ``pad_value`` where that position lies outside the image."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (radius, radius, radius, radius), value=pad_value)
    directions = []
    for dy, dx in BCD_DIRECTIONS:
        steps = [
            padded[:, radius + k * dy : radius + k * dy + height, radius + k * dx : radius + k * dx + width]
            for k in range(radius + 1)
        ]
        directions.append(torch.stack(steps, 1))
    return torch.stack(directions, 1)


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive integer, got {radius!r}")


def bcd_boundary_affinity(boundary_prob: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Boundary affinities of BCD Eq. 2: ``B_ij = 1 − max_{k on the segment i→j} b_k``.

    ``boundary_prob`` is the ``N×1×h×w`` boundary probability ``b = sigmoid(Conv1×1(F^c))``.
    Reading of Eq. 2 (as in IRNet, the paper's ref. [5]): the "boundary value" of the pixels on
    the line ``Π_ij`` is their boundary probability, and the segment includes both endpoints
    ``i`` and ``j``, so a boundary at either end already separates the pair.

    Output ``N×(8·radius)×h×w``: channel ``d·radius + (k − 1)`` holds the affinity between
    pixel ``i = (y, x)`` and ``j = (y + k·dy, x + k·dx)``, ``d`` indexing ``BCD_DIRECTIONS`` and
    ``k = 1..radius``. Pairs whose ``j`` lies outside the image get affinity 0 (as if behind a
    boundary) and are excluded from ``boundary_kd`` by ``bcd_affinity_valid_mask``.
    """
    if not isinstance(boundary_prob, torch.Tensor) or boundary_prob.dim() != 4 or boundary_prob.shape[1] != 1:
        raise ValueError(f"boundary_prob must be an N×1×h×w tensor, got {_shape_of(boundary_prob)}")
    _check_float(boundary_prob, "boundary_prob")
    _check_radius(radius)
    steps = _directional_steps(boundary_prob[:, 0], radius, pad_value=1.0)
    running_max = steps.cummax(dim=2).values[:, :, 1:]
    return (1.0 - running_max).flatten(1, 2)


def bcd_affinity_valid_mask(
    height: int, width: int, radius: int = 5, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(8·radius)×h×w`` mask of the pairs of ``bcd_boundary_affinity`` whose ``j`` lies
    inside the image (same channel layout); pass it as ``valid`` to ``boundary_kd``."""
    _check_radius(radius)
    inside = torch.ones(1, height, width, device=device)
    steps = _directional_steps(inside, radius, pad_value=0.0)[0, :, 1:]
    return steps.flatten(0, 1).bool()


def boundary_kd(
    student_affinity: torch.Tensor,
    teacher_affinity: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boundary distillation, BCD Eq. 3: ``τ²·KL(ρ(B^t/τ) ‖ ρ(B^s/τ))``, batch mean.

    ``ρ`` is the softmax over all pair entries ``(i, j)`` of one image (every element of an
    ``N×K×h×w`` affinity map, e.g. from ``bcd_boundary_affinity``). ``valid`` (boolean, shape
    ``K×h×w`` or ``N×K×h×w``) excludes pairs from both softmaxes.
    """
    student_affinity, teacher_affinity = _student_and_constant_teacher(
        student_affinity, teacher_affinity, ("student_affinity", "teacher_affinity"), same_channels=True
    )
    _check_temperature(temperature)
    mask = None
    if valid is not None:
        shape = student_affinity.shape
        if valid.dtype != torch.bool or valid.shape not in (shape, shape[1:]):
            raise ValueError(
                f"valid must be a boolean tensor of shape {tuple(shape[1:])} or {tuple(shape)}, "
                f"got {valid.dtype} {tuple(valid.shape)}"
            )
        mask = valid.expand_as(student_affinity).flatten(1)
    kl = _softmax_kl(teacher_affinity.flatten(1), student_affinity.flatten(1), 1, temperature, mask)
    return kl.mean()


def context_relation_kd(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    max_block_elems: int | None = None,
) -> torch.Tensor:
    """Context distillation, BCD Eq. 4–5: ``τ²·(1/hw)·Σ_rows KL(R^t_row ‖ R^s_row)``, batch mean.

    ``R = softmax_row((FᵀF/√d)/τ)`` is the ``hw×hw`` self-relation of a feature map ``F``
    (``O`` already applied by the caller), ``d`` each side's own channel count, so the channel
    counts may differ. Rows are computed in blocks of at most ``max_block_elems`` elements for
    the whole batch (default ``DEFAULT_MAX_BLOCK_ELEMS``); the value and the gradient do not
    depend on the block size.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    _check_temperature(temperature)
    s_flat, t_flat = student_feat.flatten(2), teacher_feat.flatten(2)

    def relation_rows(feat: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return feat[:, :, start:stop].transpose(1, 2) @ feat / math.sqrt(feat.shape[1])

    def block_kl(s, t, start, stop):
        kl_rows = _softmax_kl(relation_rows(t, start, stop), relation_rows(s, start, stop), -1, temperature)
        return kl_rows.sum()

    batch, _, length = s_flat.shape
    return _sum_over_row_blocks(block_kl, s_flat, t_flat, max_block_elems) / (batch * length)


# ---------------------------------------------------------------------------------------------
# PPD (section 5)
# ---------------------------------------------------------------------------------------------


def gam(feat: torch.Tensor, p: float) -> torch.Tensor:
    """Global attention map, PPD Eq. 1: ``G = Σ_c |A_c|^p`` → ``N×h×w``.

    ``p = 1`` sums the signed values (no absolute value), keeping negative responses as PPD's
    pixel-wise term needs; every other ``p`` uses ``|A_c|^p``.
    """
    _check_4d(feat, "feat")
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    if p == 1:
        return feat.sum(1)
    return feat.abs().pow(p).sum(1)


def partial_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Partial L2 distance, PPD Eq. 4: mean over all elements of ``(T_i − S_i)²``, except
    elements with ``S_i ≤ T_i ≤ 0``, which contribute 0 (but still count in the mean)."""
    _check_float(student, "student")
    _check_float(teacher, "teacher")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student has shape {tuple(student.shape)} but teacher has {tuple(teacher.shape)}; "
            "shapes must match"
        )
    teacher = teacher.detach()
    squared = (teacher - student).pow(2)
    return torch.where((student <= teacher) & (teacher <= 0), 0.0, squared).mean()


def ppd_pixel_kd(student_feat: torch.Tensor, teacher_feat: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """PPD pixel-wise term, Eq. 5: ``partial_l2`` between the channel sums ``gam(·, p=1)`` of
    the (pre-ReLU) feature maps. Channel counts may differ; the caller resizes.

    ``normalize``: each side's sum is divided by its own channel count (a per-pixel channel mean),
    so that maps of different widths (a 512-wide student, a 256-wide teacher) compare on one scale;
    for equal widths it only scales Eq. 5 by ``1/C²``, so one weight suits either pair."""
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    s_sum, t_sum = gam(student_feat, 1), gam(teacher_feat, 1)
    if normalize:
        s_sum, t_sum = s_sum / student_feat.shape[1], t_sum / teacher_feat.shape[1]
    return partial_l2(s_sum, t_sum)


def ppd_pairwise_kd(student_feat: torch.Tensor, teacher_feat: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """PPD pair-wise term, Eq. 6–8: adaptive max-pool both maps to ``grid×grid``; the pooled
    positions are the nodes; ``(1/grid⁴) Σ_ij (e^t_ij − e^s_ij)²`` over their cosine
    similarities, batch mean. Channel counts may differ."""
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    return _similarity_distance(
        F.adaptive_max_pool2d(student_feat, grid), F.adaptive_max_pool2d(teacher_feat, grid)
    )


# ---------------------------------------------------------------------------------------------
# SKD holistic term (Eq. 3–4): conditional WGAN-GP pieces
# ---------------------------------------------------------------------------------------------


def wgan_critic_loss(d_student: torch.Tensor, d_teacher: torch.Tensor) -> torch.Tensor:
    """Critic objective of SKD Eq. 3 (minimised by the discriminator): ``mean D(Q_s|I) − mean D(Q_t|I)``.

    Both scores train the critic, so neither is detached here; detach the student's map
    before scoring it in the critic step.
    """
    _check_float(d_student, "d_student")
    _check_float(d_teacher, "d_teacher")
    return d_student.mean() - d_teacher.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    condition: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``mean_n (‖∇_x̂ D(x̂|I)‖₂ − 1)²`` on random interpolates (SKD Sec. 3.2).

    ``x̂ = ε·real + (1−ε)·fake`` with one ``ε ~ U(0, 1)`` per image (drawn from ``generator``);
    ``real`` (teacher maps) and ``fake`` (student maps) are ``N×C×h×w`` and treated as
    constants; ``critic(segmentation_map, image)`` is called with ``condition`` as the image.
    The graph is kept so the penalty can be back-propagated into the critic.
    """
    interpolates = _interpolates(real, fake, condition, generator)
    return _penalty(critic(interpolates, condition), interpolates)


def critic_objective(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    condition: torch.Tensor,
    penalty_weight: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The discriminator's loss of SKD Eq. 3: ``wgan_critic_loss(D(fake), D(real)) + penalty_weight ·
    gradient_penalty(D, real, fake)``, with the fake and real maps scored in one call on a 2N
    batch; the interpolates get their own call, as only their graph is differentiated twice. For a
    critic that scores each image on its own (no batch statistics), the value and the critic's
    gradients are those of three separate calls; the same ``ε`` are drawn."""
    interpolates = _interpolates(real, fake, condition, generator)
    pair = torch.cat([fake.detach(), real.detach()])
    d_fake, d_real = critic(pair, condition.repeat(2, 1, 1, 1)).split(real.shape[0])
    return wgan_critic_loss(d_fake, d_real) + penalty_weight * _penalty(critic(interpolates, condition), interpolates)


def _interpolates(real, fake, condition, generator) -> torch.Tensor:
    _check_4d(real, "real")
    if fake.shape != real.shape:
        raise ValueError(f"fake has shape {tuple(fake.shape)} but real has {tuple(real.shape)}")
    _check_4d(condition, "condition")
    if condition.shape[0] != real.shape[0]:
        raise ValueError(f"condition has batch size {condition.shape[0]} but real has {real.shape[0]}")
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device, dtype=real.dtype)
    return (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)


def _penalty(scores: torch.Tensor, interpolates: torch.Tensor) -> torch.Tensor:
    (grads,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    return (grads.flatten(1).norm(dim=1) - 1).pow(2).mean()


def holistic_generator_loss(d_student: torch.Tensor) -> torch.Tensor:
    """Student's adversarial term of SKD Eq. 4: ``−mean D(Q_s|I)`` (weighted by λ2 by the caller)."""
    _check_float(d_student, "d_student")
    return -d_student.mean()


# ---------------------------------------------------------------------------------------------
# IFVD (Wang et al., ECCV 2020) and CIRKD (Yang et al., CVPR 2022)
# ---------------------------------------------------------------------------------------------


def labels_at(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Integer ``N×H×W`` labels resized to ``size`` by nearest neighbour (as IFVD's and CIRKD's code)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer N×H×W tensor, got {_shape_of(labels)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _class_one_hot(labels: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``N×hw×K`` one-hot of the labels (all-zero rows where the label is not a class) and the
    ``N×hw`` boolean valid mask (label in ``[0, K)`` and not ``ignore_index``)."""
    flat = labels.flatten(1)
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
    one_hot = F.one_hot(torch.where(valid, flat, 0), num_classes) * valid[..., None]
    return one_hot, valid


def class_prototypes(
    feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image class prototypes (IFVD Sec. 3, the class prototype): ``p_{n,k} = (1/|S_{n,k}|) Σ_{i∈S_{n,k}} f_{n,i}``.

    ``S_{n,k}`` are the pixels of image ``n`` labelled ``k`` after the labels are resized to the
    feature map (nearest); ``ignore_index`` and labels outside ``[0, K)`` belong to no class.
    Returns the ``N×K×C`` prototypes (0 for a class absent from an image) and the ``N×K`` pixel
    counts. Gradients flow into ``feat`` through the means.
    """
    _check_4d(feat, "feat")
    labels = labels_at(labels, feat.shape[-2:])
    if labels.shape[0] != feat.shape[0]:
        raise ValueError(f"labels has batch size {labels.shape[0]} but feat has {feat.shape[0]}")
    one_hot, _ = _class_one_hot(labels, num_classes, ignore_index)
    one_hot = one_hot.to(feat.dtype)
    counts = one_hot.sum(1)
    sums = torch.bmm(one_hot.transpose(1, 2), feat.flatten(2).transpose(1, 2))
    return sums / counts.clamp(min=1)[..., None], counts


def ifv_map(
    feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The intra-class feature variation map of IFVD Sec. 3: ``M_{n,i} = cos(f_{n,i}, p_{n,y_i})``.

    Each pixel's cosine similarity to the prototype (`class_prototypes`) of its own class in its
    own image; ``cos(a, b) = aᵀb / (max(‖a‖, eps)·max(‖b‖, eps))`` as ``torch.cosine_similarity``.
    Returns the ``N×h×w`` map (0 at pixels of no class) and the ``N×h×w`` boolean valid mask.
    """
    _check_4d(feat, "feat")
    n, _, h, w = feat.shape
    labels = labels_at(labels, (h, w))
    if labels.shape[0] != n:
        raise ValueError(f"labels has batch size {labels.shape[0]} but feat has {n}")
    prototypes, _ = class_prototypes(feat, labels, num_classes, ignore_index)
    flat = feat.flatten(2)
    one_hot, valid = _class_one_hot(labels, num_classes, ignore_index)
    one_hot = one_hot.to(feat.dtype)
    # aᵀp for every class prototype of the image (K is small), then the pixel's own class picked.
    dots = (torch.bmm(prototypes, flat).transpose(1, 2) * one_hot).sum(-1)
    proto_norm = (one_hot * prototypes.norm(dim=2)[:, None, :]).sum(-1)
    cos = dots / (flat.norm(dim=1).clamp(min=eps) * proto_norm.clamp(min=eps))
    return torch.where(valid, cos, 0.0).view(n, h, w), valid.view(n, h, w)


def ifv_map_mse(student_map: torch.Tensor, teacher_map: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """IFVD's IFV loss (Sec. 3): ``(1/|V|) Σ_{i∈V} (M^s_i − M^t_i)²`` over the valid pixels ``V`` of the batch
    (the teacher map is a constant); 0 when no pixel is valid."""
    if student_map.shape != teacher_map.shape or valid_mask.shape != student_map.shape:
        raise ValueError(f"student_map {_shape_of(student_map)}, teacher_map {_shape_of(teacher_map)} and "
                         f"valid_mask {_shape_of(valid_mask)} must have one shape")
    if valid_mask.dtype != torch.bool:
        raise ValueError(f"valid_mask must be boolean, got {valid_mask.dtype}")
    _check_float(student_map, "student_map")
    _check_float(teacher_map, "teacher_map")
    squared = (student_map - teacher_map.detach()).pow(2)
    return torch.where(valid_mask, squared, 0.0).sum() / valid_mask.sum().clamp(min=1)


def ifvd_kd(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Intra-class feature variation distillation (IFVD Sec. 3; its code's ``CriterionIFV``): the mean squared difference of the
    student's and teacher's `ifv_map` over the valid pixels. Channel counts may differ (each map
    compares a model's features with its own prototypes); spatial sizes must agree."""
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    s_map, valid = ifv_map(student_feat, labels, num_classes, ignore_index)
    t_map, _ = ifv_map(teacher_feat, labels, num_classes, ignore_index)
    return ifv_map_mse(s_map, t_map, valid)


def avg_pool2_of_bilinear_up2(x: torch.Tensor) -> torch.Tensor:
    """``avg_pool2d(interpolate(x, scale 2, bilinear, align_corners=False), 2)`` without the 2× map.

    Along one axis the two upsampled entries of a 2-window are ``0.75·x_i + 0.25·x_{i∓1}`` (border
    indices clamped), so their mean is ``0.75·x_i + 0.125·(x_{i−1} + x_{i+1})``: a separable
    3-tap filter with replicated borders. Equal to the two-step form up to float rounding.
    """
    _check_4d(x, "x")

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        if n == 1:
            return t
        before = torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 0, n - 1)], dim)
        after = torch.cat([t.narrow(dim, 1, n - 1), t.narrow(dim, n - 1, 1)], dim)
        return 0.75 * t + 0.125 * (before + after)

    return along(along(x, -1), -2)


def cirkd_minibatch_pair_kd(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """CIRKD's mini-batch pixel-to-pixel term (CIRKD Sec. 3; the official
    ``CriterionMiniBatchCrossImagePair``).

    With ``f̂`` the features L2-normalised over channels, for every ordered pair of images
    ``(i, j)`` of the batch ``S_ij[a, b] = f̂_{i,a}ᵀ f̂_{j,b}`` (``hw×hw``, pixel ``a`` of image ``i``
    against every pixel ``b`` of image ``j``), and
    ``ℓ = (1/N²) Σ_{i,j} (1/hw) Σ_a KL(softmax_b(T_ij[a]/τ) ‖ softmax_b(S_ij[a]/τ))``
    (no τ² factor, as the official code). Channel counts may differ; spatial sizes must agree.
    """
    student_feat, teacher_feat = _student_and_constant_teacher(
        student_feat, teacher_feat, ("student_feat", "teacher_feat"), same_channels=False
    )
    _check_temperature(temperature)
    n, _, h, w = student_feat.shape
    s_unit = F.normalize(student_feat.flatten(2), dim=1)  # N×C×hw
    t_unit = F.normalize(teacher_feat.flatten(2), dim=1)
    s_all = s_unit.transpose(0, 1).flatten(1)  # C×(N·hw): every pixel of the batch
    t_all = t_unit.transpose(0, 1).flatten(1)
    total = student_feat.new_zeros(())
    for i in range(n):  # one anchor image at a time bounds the memory to hw × N·hw
        s_sim = (s_unit[i].T @ s_all).view(h * w, n, h * w) / temperature
        t_sim = (t_unit[i].T @ t_all).view(h * w, n, h * w) / temperature
        total = total + _softmax_kl(t_sim, s_sim, dim=-1).sum()
    return total / (n * n * h * w)


def cirkd_memory_kd(
    student_embed: torch.Tensor,
    teacher_embed: torch.Tensor,
    memory: torch.Tensor,
    temperature: float = 0.1,
    kd_temperature: float = 1.0,
    memory_mask: torch.Tensor | None = None,
    anchor_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CIRKD's memory-based pixel-to-pixel and pixel-to-region distillation (Sec. 3), one form
    (the official ``StudentSegContrast``).

    ``student_embed``, ``teacher_embed``: ``A×D`` anchor embeddings (the valid pixels of the batch;
    the student's after its projection head), ``memory``: ``M×D`` teacher embeddings of past
    batches (pixels for the pixel term, class-region means for the region term). All rows are
    L2-normalised here; with ``z = anchorᵀ·memory / τ`` per anchor,
    ``ℓ = (1/A) Σ_a κ²·KL(softmax_m(z^t_a/κ) ‖ softmax_m(z^s_a/κ))`` (κ = ``kd_temperature``, 1 in
    the official code; the memory and the teacher are constants). ``memory_mask`` (boolean ``M``)
    keeps only some memory entries (unfilled slots); ``anchor_mask`` (boolean ``A``) averages over
    the kept anchors only (the valid pixels, without gathering them); no anchor gives 0.
    """
    for name, x in (("student_embed", student_embed), ("teacher_embed", teacher_embed), ("memory", memory)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got {_shape_of(x)}")
        _check_float(x, name)
    if teacher_embed.shape != (student_embed.shape[0], memory.shape[1]) or student_embed.shape[1] != memory.shape[1]:
        raise ValueError(f"student_embed {_shape_of(student_embed)} and teacher_embed {_shape_of(teacher_embed)} "
                         f"must be A×D with the D of memory {_shape_of(memory)}")
    if memory_mask is not None and (memory_mask.dtype != torch.bool or memory_mask.shape != memory.shape[:1]):
        raise ValueError(f"memory_mask must be a boolean tensor of shape ({memory.shape[0]},), "
                         f"got {_shape_of(memory_mask)}")
    if anchor_mask is not None and (anchor_mask.dtype != torch.bool or anchor_mask.shape != student_embed.shape[:1]):
        raise ValueError(f"anchor_mask must be a boolean tensor of shape ({student_embed.shape[0]},), "
                         f"got {_shape_of(anchor_mask)}")
    _check_temperature(temperature)
    _check_temperature(kd_temperature)
    bank = F.normalize(memory.detach(), dim=1)
    s_logits = F.normalize(student_embed, dim=1) @ bank.T / temperature
    t_logits = F.normalize(teacher_embed.detach(), dim=1) @ bank.T / temperature
    mask = None if memory_mask is None else memory_mask[None, :]
    kl = _softmax_kl(t_logits, s_logits, dim=1, temperature=kd_temperature, mask=mask)
    if anchor_mask is None:
        return kl.sum() / max(student_embed.shape[0], 1)
    return torch.where(anchor_mask, kl, 0.0).sum() / anchor_mask.sum().clamp(min=1)
