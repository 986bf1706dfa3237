"""SKD pair-wise pooling on non-square maps: `pool_kernel` as a (kh, kw) pair, and `pool_scale`,
the official code's kernel (int(h·scale), int(w·scale)) derived from the teacher's map size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.distill import load_recipe
from kdlab.errors import ConfigError
from kdlab.losses import functional as K
from kdlab.losses.base import MethodContext, Step, build_method
from kdlab.losses.skd_pairwise import PairwiseKD


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _ctx(student_channels, teacher_channels):
    return MethodContext(student_channels, teacher_channels, list(student_channels), list(teacher_channels), 3)


def ref_pool_max(x, kh, kw):
    """Ceil-mode max pooling with kernel = stride = (kh, kw), by explicit windows."""
    n, c, h, w = x.shape
    rows = [range(y, min(y + kh, h)) for y in range(0, h, kh)]
    cols = [range(x0, min(x0 + kw, w)) for x0 in range(0, w, kw)]
    out = torch.empty(n, c, len(rows), len(cols), dtype=x.dtype)
    for i, ry in enumerate(rows):
        for j, rx in enumerate(cols):
            out[:, :, i, j] = x[:, :, ry.start:ry.stop, rx.start:rx.stop].amax(dim=(-2, -1))
    return out


def ref_similarity_distance(s, t):
    """(1/(hw)²) Σ_ij (a^s_ij − a^t_ij)², batch mean, with explicit cosine similarities."""
    total = 0.0
    for n in range(s.shape[0]):
        fs, ft = s[n].flatten(1).T, t[n].flatten(1).T  # hw × C
        a_s = torch.stack([torch.stack([F.cosine_similarity(u, v, dim=0) for v in fs]) for u in fs])
        a_t = torch.stack([torch.stack([F.cosine_similarity(u, v, dim=0) for v in ft]) for u in ft])
        total += ((a_s - a_t) ** 2).sum().item() / fs.shape[0] ** 2
    return total / s.shape[0]


@pytest.mark.parametrize("kernel", [(2, 3), (3, 2), [1, 4], (4, 1), (3, 3)])
def test_rectangular_kernel_matches_explicit_windows(gen, kernel):
    s = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 4, 5, 7, generator=gen, dtype=torch.float64)
    kh, kw = kernel
    expected = ref_similarity_distance(ref_pool_max(s, kh, kw), ref_pool_max(t, kh, kw))
    assert K.pairwise_similarity_kd(s, t, kernel).item() == pytest.approx(expected, rel=1e-9)


def test_square_pair_equals_the_integer_kernel(gen):
    s, t = torch.randn(2, 3, 6, 9, generator=gen), torch.randn(2, 5, 6, 9, generator=gen)
    assert K.pairwise_similarity_kd(s, t, (2, 2)).item() == K.pairwise_similarity_kd(s, t, 2).item()


def test_rectangular_kernel_gradient_reaches_the_student(gen):
    s = torch.randn(1, 3, 4, 8, generator=gen, requires_grad=True)
    t = torch.randn(1, 3, 4, 8, generator=gen)
    K.pairwise_similarity_kd(s, t, (2, 4)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -1, (2,), (2, 0), (2, 3, 4), (2.0, 3), True, (True, 2), "2"])
def test_bad_kernels_are_rejected(gen, bad):
    s, t = torch.randn(1, 3, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    with pytest.raises(ValueError, match="pool_kernel"):
        K.pairwise_similarity_kd(s, t, bad)


@pytest.mark.parametrize("size, scale, kernel", [((64, 128), 0.5, (32, 64)), ((65, 129), 0.5, (32, 64)),
                                                 ((5, 3), 0.25, (1, 1)), ((9, 6), 1.0, (9, 6))])
def test_pool_scale_derives_the_kernel_from_the_teacher_map(size, scale, kernel):
    method = PairwiseKD(_ctx({"decoder": 4}, {"decoder": 4}), pool_scale=scale)
    assert method.kernel_for(*size) == kernel
    assert all(k == max(1, int(n * scale)) for k, n in zip(kernel, size))


def test_pool_scale_loss_equals_the_explicit_kernel(gen):
    """A 16×6 teacher map at scale 0.5: kernel (8, 3), a 2×2 pooled map, as in SKD's official code; the
    student (8×3) is first resized to the teacher's map."""
    s = torch.randn(2, 5, 8, 3, generator=gen)
    t = torch.randn(2, 7, 16, 6, generator=gen)
    method = PairwiseKD(_ctx({"decoder": 5}, {"decoder": 7}), pool_scale=0.5)
    got = method({"decoder": s}, {"decoder": t}, {}, Step(1, 10))["pairwise"]
    up = F.interpolate(s, size=(16, 6), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(K.pairwise_similarity_kd(up, t, (8, 3)).item(), rel=1e-6)
    assert got.item() > 0


def test_pair_kernel_through_the_method_and_a_recipe(gen, tmp_path):
    method = build_method("skd_pairwise", _ctx({"decoder": 4}, {"decoder": 4}), options={"pool_kernel": [2, 4]})
    assert method.pool_kernel == (2, 4)
    s, t = torch.randn(1, 4, 6, 8, generator=gen), torch.randn(1, 4, 6, 8, generator=gen)
    got = method({"decoder": s}, {"decoder": t}, {}, Step(1, 10))["pairwise"]
    assert got.item() == pytest.approx(K.pairwise_similarity_kd(s, t, (2, 4)).item())
    recipe = tmp_path / "skd_rect.yaml"
    recipe.write_text("methods:\n  - method: skd\n    options: {pool_kernel: [3, 6]}\n"
                      "  - method: skd_pairwise\n    name: pa2\n    options: {pool_scale: 0.5}\n")
    entries = load_recipe(str(recipe))
    assert entries[0].options == {"pool_kernel": [3, 6]} and entries[1].options == {"pool_scale": 0.5}
    skd = build_method("skd", _ctx({"decoder": 4, "head_logits": 3}, {"decoder": 4, "head_logits": 3}),
                       options={"pool_kernel": [3, 6]})
    assert skd.parts[1].pool_kernel == (3, 6)


def test_default_kernel_is_unchanged():
    method = PairwiseKD(_ctx({"decoder": 4}, {"decoder": 4}))
    assert method.pool_kernel == (2, 2) and method.pool_scale is None and method.kernel_for(7, 9) == (2, 2)


@pytest.mark.parametrize("options, match", [({"pool_kernel": [2, 0]}, "pool_kernel"),
                                            ({"pool_kernel": "big"}, "pool_kernel"),
                                            ({"pool_scale": 0}, "pool_scale"), ({"pool_scale": 1.5}, "pool_scale"),
                                            ({"pool_scale": "half"}, "pool_scale"),
                                            ({"pool_kernel": [4, 8], "pool_scale": 0.5}, "exclude")])
def test_bad_options_are_one_config_error(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("skd_pairwise", _ctx({"decoder": 4}, {"decoder": 4}), options=options)


def test_kernel_larger_than_the_map_pools_to_one_position(gen):
    s, t = torch.randn(1, 3, 3, 5, generator=gen), torch.randn(1, 3, 3, 5, generator=gen)
    assert K.pairwise_similarity_kd(s, t, (4, 8)).item() == 0.0  # one node: a 1×1 similarity matrix
    assert math.isfinite(K.pairwise_similarity_kd(s, t, (4, 2)).item())
