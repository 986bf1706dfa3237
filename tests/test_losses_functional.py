"""Tests of kdlab.losses.functional.

Every term is compared with a plain-Python re-implementation written here (loops over images,
channels and positions on nested lists, float64), on tiny odd-sized tensors.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.losses import functional as K

N, C, H, W = 2, 3, 5, 7
DIRECTIONS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def leaf(gen, *shape):
    return randn(gen, *shape).requires_grad_(True)


def as_tensor(nested):
    return torch.tensor(nested, dtype=torch.float64)


def approx(value):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Plain-Python building blocks of the references
# ---------------------------------------------------------------------------------------------


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def softmax_kl(teacher_values, student_values, tau):
    return tau**2 * kl(softmax([v / tau for v in teacher_values]), softmax([v / tau for v in student_values]))


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def cosine(u, v):
    return dot(u, v) / (math.sqrt(dot(u, u)) * math.sqrt(dot(v, v)))


def vector_at(feat_n, y, x):
    """Channel vector of one image's nested-list feature map at (y, x)."""
    return [channel[y][x] for channel in feat_n]


def positions(height, width):
    return [(y, x) for y in range(height) for x in range(width)]


def grid(height, width, value_at):
    """Nested list [y][x] of value_at(y, x)."""
    return [[value_at(y, x) for x in range(width)] for y in range(height)]


def pool_windows(size, out, ceil_kernel=None):
    """Index windows of an adaptive pooling to `out` (or, with ceil_kernel, of a ceil-mode pooling)."""
    if ceil_kernel is not None:
        starts = range(0, size, ceil_kernel)  # the last window may be partial
        return [range(start, min(start + ceil_kernel, size)) for start in starts]
    return [range(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def pool(feat, reduce, row_windows, col_windows):
    """Pool a nested list N×C×H×W over the given windows with reduce (max or mean)."""
    def pooled(ch):
        return grid(len(row_windows), len(col_windows),
                    lambda i, j: reduce([ch[y][x] for y in row_windows[i] for x in col_windows[j]]))

    return [[pooled(ch) for ch in img] for img in feat]


def mean(values):
    values = list(values)
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# Plain-Python references of the terms
# ---------------------------------------------------------------------------------------------


def ref_pixel_kd(s, t, tau=1.0, valid=None):
    s, t = s.tolist(), t.tolist()
    valid = valid.tolist() if valid is not None else None
    terms = []
    for n in range(len(s)):
        for y, x in positions(len(s[0][0]), len(s[0][0][0])):
            if valid is None or valid[n][y][x]:
                terms.append(softmax_kl(vector_at(t[n], y, x), vector_at(s[n], y, x), tau))
    return mean(terms) if terms else 0.0


def flat(channel):
    return [v for row in channel for v in row]


def ref_channel_wise_kd(s, t, tau=1.0):
    s, t = s.tolist(), t.tolist()
    return mean(softmax_kl(flat(t[n][c]), flat(s[n][c]), tau) for n in range(len(s)) for c in range(len(s[0])))


def ref_similarity_distance(s, t):
    """(1/L²) Σ_ij (cos^s_ij − cos^t_ij)², batch mean, on nested lists."""
    per_image = []
    for s_n, t_n in zip(s, t):
        pos = positions(len(s_n[0]), len(s_n[0][0]))
        total = 0.0
        for i in pos:
            for j in pos:
                a_s = cosine(vector_at(s_n, *i), vector_at(s_n, *j))
                a_t = cosine(vector_at(t_n, *i), vector_at(t_n, *j))
                total += (a_s - a_t) ** 2
        per_image.append(total / len(pos) ** 2)
    return mean(per_image)


def ref_pairwise(s, t, pool_kernel=None):
    s, t = s.tolist(), t.tolist()
    if pool_kernel is not None:
        rows = pool_windows(len(s[0][0]), None, pool_kernel)
        cols = pool_windows(len(s[0][0][0]), None, pool_kernel)
        s, t = pool(s, max, rows, cols), pool(t, max, rows, cols)
    return ref_similarity_distance(s, t)


def ref_local(s, t):
    s, t = s.tolist(), t.tolist()
    height, width = len(s[0][0]), len(s[0][0][0])
    terms = []
    for n in range(len(s)):
        for y, x in positions(height, width):
            for dy, dx in DIRECTIONS_8:
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    a_s = cosine(vector_at(s[n], y, x), vector_at(s[n], y + dy, x + dx))
                    a_t = cosine(vector_at(t[n], y, x), vector_at(t[n], y + dy, x + dx))
                    terms.append((a_s - a_t) ** 2)
    return mean(terms)


def ref_gam(feat, p):
    power = (lambda v: v) if p == 1 else (lambda v: abs(v) ** p)
    feat = feat.tolist()
    return [grid(len(img[0]), len(img[0][0]), lambda y, x: sum(power(ch[y][x]) for ch in img)) for img in feat]


def ref_attention_transfer(s, t, p):
    terms = []
    for a_s, a_t in zip(ref_gam(s, p), ref_gam(t, p)):
        flat_s, flat_t = flat(a_s), flat(a_t)
        norm_s, norm_t = math.sqrt(dot(flat_s, flat_s)), math.sqrt(dot(flat_t, flat_t))
        terms += [(vs / norm_s - vt / norm_t) ** 2 for vs, vt in zip(flat_s, flat_t)]
    return mean(terms)


def ref_edge_masks(labels, num_classes, out_size, k, ignore_index=255):
    lab = labels.tolist()
    height, width = len(lab[0]), len(lab[0][0])
    binary = []
    for img in lab:
        per_class = []
        for c in range(num_classes):
            mask = [[0.0] * width for _ in range(height)]
            for y, x in positions(height, width):
                rows = range(max(0, y - (k - 1) // 2), min(height, y + k // 2 + 1))
                cols = range(max(0, x - (k - 1) // 2), min(width, x + k // 2 + 1))
                member = [img[yy][xx] == c and img[yy][xx] != ignore_index for yy in rows for xx in cols]
                mask[y][x] = float(any(member)) - float(all(member))
            per_class.append(mask)
        binary.append(per_class)
    out_h, out_w = out_size
    return pool(binary, mean, pool_windows(height, out_h), pool_windows(width, out_w))


def ref_edge_loss(s, t, masks, alpha=2.0, prm=True, pom=True):
    s, t, m = s.tolist(), t.tolist(), masks.tolist()
    num_classes = len(s[0])
    alphas = alpha.tolist() if isinstance(alpha, torch.Tensor) else [alpha] * num_classes
    per_image = []
    for n in range(len(s)):
        pos = positions(len(s[0][0]), len(s[0][0][0]))
        phi = {}
        for y, x in pos:
            gate = [m[n][c][y][x] if prm else 1.0 for c in range(num_classes)]
            zt = [t[n][c][y][x] * gate[c] for c in range(num_classes)]
            zs = [s[n][c][y][x] * gate[c] for c in range(num_classes)]
            phi[y, x] = kl(softmax(zt), softmax(zs))
        if pom:
            loss = 0.0
            for c in range(num_classes):
                n_c = sum(1 for y, x in pos if m[n][c][y][x] != 0)
                if n_c:
                    loss += alphas[c] / n_c * sum(phi[y, x] * m[n][c][y][x] for y, x in pos)
        else:
            weight = {(y, x): max(m[n][c][y][x] for c in range(num_classes)) for y, x in pos}
            area = sum(weight.values())
            loss = sum(phi[p] * weight[p] for p in pos) / area if area > 0 else 0.0
        per_image.append(loss)
    return mean(per_image)


def masked(logits, gate):
    """Element-wise ``logits ⊙ gate`` with gate a nested N×C×H×W list."""
    def product(ch, g):
        return grid(len(ch), len(ch[0]), lambda y, x: ch[y][x] * g[y][x])

    return [[product(ch, g) for ch, g in zip(img, gate_img)] for img, gate_img in zip(logits.tolist(), gate)]


def ref_body_gate(masks):
    """``1 − max_c M`` repeated over the channels, as a nested N×C×H×W list."""
    gates = []
    for img in masks.tolist():
        body = grid(len(img[0]), len(img[0][0]), lambda y, x: 1.0 - max(ch[y][x] for ch in img))
        gates.append([body] * len(img))
    return gates


def ref_affinity(b, radius):
    """Loop over every pixel, direction and distance; out-of-image partners get 0."""
    b = b.tolist()
    height, width = len(b[0][0]), len(b[0][0][0])
    directions = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    out = []
    for img in b:
        chans = []
        for dy, dx in directions:
            for k in range(1, radius + 1):
                ch = [[0.0] * width for _ in range(height)]
                for y, x in positions(height, width):
                    if 0 <= y + k * dy < height and 0 <= x + k * dx < width:
                        ch[y][x] = 1.0 - max(img[0][y + m * dy][x + m * dx] for m in range(k + 1))
                chans.append(ch)
        out.append(chans)
    return out


def ref_boundary_kd(s, t, tau=1.0, valid=None):
    s, t = s.tolist(), t.tolist()
    per_image = []
    for n in range(len(s)):
        keep = [(c, y, x) for c in range(len(s[0])) for y, x in positions(len(s[0][0]), len(s[0][0][0]))
                if valid is None or valid[c][y][x]]
        teacher_values = [t[n][c][y][x] for c, y, x in keep]
        per_image.append(softmax_kl(teacher_values, [s[n][c][y][x] for c, y, x in keep], tau))
    return mean(per_image)


def ref_context(s, t, tau=1.0):
    s, t = s.tolist(), t.tolist()
    per_image = []
    for s_n, t_n in zip(s, t):
        pos = positions(len(s_n[0]), len(s_n[0][0]))
        rows = []
        for i in pos:
            logits_t = [dot(vector_at(t_n, *i), vector_at(t_n, *j)) / math.sqrt(len(t_n)) for j in pos]
            logits_s = [dot(vector_at(s_n, *i), vector_at(s_n, *j)) / math.sqrt(len(s_n)) for j in pos]
            rows.append(softmax_kl(logits_t, logits_s, tau))
        per_image.append(sum(rows) / len(pos))
    return mean(per_image)


def ref_partial_l2(s, t):
    s, t = s.flatten().tolist(), t.flatten().tolist()
    return mean(0.0 if si <= ti <= 0 else (ti - si) ** 2 for si, ti in zip(s, t))


def ref_ppd_pairwise(s, t, grid):
    s, t = s.tolist(), t.tolist()
    rows, cols = pool_windows(len(s[0][0]), grid), pool_windows(len(s[0][0][0]), grid)
    return ref_similarity_distance(pool(s, max, rows, cols), pool(t, max, rows, cols))


# ---------------------------------------------------------------------------------------------
# SKD and baselines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_pixel_kd_matches_loop(gen, tau):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    assert K.pixel_kd(s, t, tau).item() == approx(ref_pixel_kd(s, t, tau))


def test_pixel_kd_valid_mask_restricts_mean_to_valid_pixels(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    valid = torch.rand(N, H, W, generator=gen) > 0.4
    assert K.pixel_kd(s, t, 2.0, valid).item() == approx(ref_pixel_kd(s, t, 2.0, valid))


def test_pixel_kd_all_false_mask_gives_zero_and_zero_gradient(gen):
    s = leaf(gen, N, C, H, W)
    loss = K.pixel_kd(s, randn(gen, N, C, H, W), valid_mask=torch.zeros(N, H, W, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(s.grad) == 0


def test_pixel_kd_rejects_bad_valid_mask(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    with pytest.raises(ValueError, match="valid_mask"):
        K.pixel_kd(s, t, valid_mask=torch.ones(N, H, W))
    with pytest.raises(ValueError, match="valid_mask"):
        K.pixel_kd(s, t, valid_mask=torch.ones(N, H, W + 1, dtype=torch.bool))


@pytest.mark.parametrize(
    "term", [K.pixel_kd, K.channel_wise_kd, K.boundary_kd, K.context_relation_kd], ids=lambda f: f.__name__
)
def test_temperature_scales_as_tau_squared_times_the_loss_of_scaled_inputs(gen, term):
    s, t, tau = randn(gen, N, C, H, W), randn(gen, N, C, H, W), 3.0
    # The relation logits FᵀF/√d are quadratic in the features, so they are divided by τ when
    # the features are divided by √τ.
    scale = math.sqrt(tau) if term is K.context_relation_kd else tau
    assert term(s, t, tau).item() == approx(tau**2 * term(s / scale, t / scale).item())


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(gen, tau):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    for term in (K.pixel_kd, K.channel_wise_kd, K.boundary_kd, K.context_relation_kd):
        with pytest.raises(ValueError, match="temperature"):
            term(s, t, tau)


@pytest.mark.parametrize("pool_kernel", [None, 2, 3])
def test_pairwise_similarity_matches_loop(gen, pool_kernel):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 4, H, W)
    assert K.pairwise_similarity_kd(s, t, pool_kernel).item() == approx(ref_pairwise(s, t, pool_kernel))


def test_pairwise_similarity_keeps_partial_pool_windows(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    # With a 4×4 kernel a 5×7 map pools to 2×2 (ceil mode); the loss would be 0 on a 1×1 map.
    assert K.pairwise_similarity_kd(s, t, pool_kernel=4).item() == approx(ref_pairwise(s, t, 4))
    assert K.pairwise_similarity_kd(s, t, pool_kernel=4).item() > 0


def test_pairwise_similarity_is_invariant_to_positive_per_position_scaling(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    scale = torch.rand(N, 1, H, W, generator=gen, dtype=torch.float64) + 0.5
    assert K.pairwise_similarity_kd(s * scale, t).item() == approx(K.pairwise_similarity_kd(s, t).item())


def elements_kept_for_backward(compute_loss):
    """Total size of the distinct tensors autograd keeps for backward while computing the loss."""
    storages = {}

    def pack(x):
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes() // x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = compute_loss()
    return loss, sum(storages.values())


@pytest.mark.parametrize("term", [K.pairwise_similarity_kd, K.context_relation_kd], ids=lambda f: f.__name__)
@pytest.mark.parametrize("budget", [1, N * H * W * 3])  # 1 row per block; 3 rows per block (uneven last block)
def test_chunked_relation_equals_unchunked_in_value_and_gradient(gen, term, budget):
    s_data, t = randn(gen, N, 3, H, W), randn(gen, N, 4, H, W)
    s_full, s_chunked = s_data.clone().requires_grad_(True), s_data.clone().requires_grad_(True)
    full = term(s_full, t)
    chunked = term(s_chunked, t, max_block_elems=budget)
    full.backward()
    chunked.backward()
    assert chunked.item() == approx(full.item())
    torch.testing.assert_close(s_chunked.grad, s_full.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("term", [K.pairwise_similarity_kd, K.context_relation_kd], ids=lambda f: f.__name__)
def test_chunked_relation_keeps_no_relation_blocks_for_backward(gen, term):
    s, t = leaf(gen, N, 3, H, W), randn(gen, N, 4, H, W)
    _, unchunked_kept = elements_kept_for_backward(lambda: term(s, t))
    loss, chunked_kept = elements_kept_for_backward(lambda: term(s, t, max_block_elems=N * H * W * 5))
    assert unchunked_kept >= N * (H * W) ** 2  # the whole 35×35 relation of both images
    assert chunked_kept <= 2 * (s.numel() + t.numel())  # only feature-sized tensors
    loss.backward()
    assert s.grad.abs().sum() > 0


def test_max_block_elems_must_be_a_positive_integer(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="max_block_elems"):
            K.pairwise_similarity_kd(s, t, max_block_elems=bad)
        with pytest.raises(ValueError, match="max_block_elems"):
            K.context_relation_kd(s, t, max_block_elems=bad)


def test_local_pairwise_matches_loop(gen):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 5, H, W)
    assert K.local_pairwise_kd(s, t).item() == approx(ref_local(s, t))


@pytest.mark.parametrize("p", [1, 2, 3])
def test_attention_transfer_matches_loop(gen, p):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 6, H, W)
    assert K.attention_transfer(s, t, p).item() == approx(ref_attention_transfer(s, t, p))


def test_mimic_matches_loop(gen):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    expected = mean((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist()))
    assert K.mimic_kd(s, t).item() == approx(expected)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_wise_matches_loop(gen, tau):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    assert K.channel_wise_kd(s, t, tau).item() == approx(ref_channel_wise_kd(s, t, tau))


# ---------------------------------------------------------------------------------------------
# BPKD
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def labels(gen):
    """2×10×14 labels with 3 classes (class 2 absent from image 0) and a block of ignore pixels."""
    lab = torch.randint(0, 2, (N, 5, 7), generator=gen).repeat_interleave(2, 1).repeat_interleave(2, 2)
    lab[1, 3:8, 4:9] = 2
    lab[0, 0:3, 0:4] = 255
    return lab


@pytest.mark.parametrize("edge_width", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("out_size", [(10, 14), (5, 7), (3, 4)])
def test_edge_masks_match_loop(labels, edge_width, out_size):
    masks = K.bpkd_edge_masks(labels, 3, out_size, edge_width=edge_width)
    expected = torch.tensor(ref_edge_masks(labels, 3, out_size, edge_width), dtype=masks.dtype)
    assert masks.shape == (N, 3, *out_size)
    torch.testing.assert_close(masks, expected)


def test_edge_masks_of_hand_made_square():
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    labels[0, 4:8, 4:8] = 1
    masks = K.bpkd_edge_masks(labels, 2, (12, 12), edge_width=3)
    # A 3×3 window grows the 4×4 square to 6×6 (rows/cols 3..8) and erodes it to 2×2 (5..6):
    # both classes get the 6×6 − 2×2 = 32 pixels of that ring as edge.
    ring = torch.zeros(12, 12)
    ring[3:9, 3:9] = 1
    ring[5:7, 5:7] = 0
    assert int(ring.sum()) == 6 * 6 - 2 * 2
    torch.testing.assert_close(masks[0, 0], ring)
    torch.testing.assert_close(masks[0, 1], ring)


@pytest.mark.parametrize(
    "edge_width, edge_columns",
    # Class 1 fills columns 0..4. Odd k=3: window [x−1, x+1] → dilation reaches column 5,
    # erosion removes column 4. Even k=4: window [x−1, x+2] → dilation reaches column 5,
    # erosion removes columns 3..4.
    [(3, [4, 5]), (4, [3, 4, 5])],
)
def test_image_border_creates_no_edge(edge_width, edge_columns):
    labels = torch.zeros(1, 9, 11, dtype=torch.long)
    labels[0, :, :5] = 1
    masks = K.bpkd_edge_masks(labels, 2, (9, 11), edge_width=edge_width)
    expected = torch.zeros(9, 11)
    expected[:, edge_columns] = 1
    torch.testing.assert_close(masks[0, 1], expected)
    torch.testing.assert_close(masks[0, 0], expected)


def test_ignore_pixels_belong_to_no_class():
    labels = torch.zeros(1, 7, 7, dtype=torch.long)
    labels[0, 2:5, 2:5] = 255
    masks = K.bpkd_edge_masks(labels, 2, (7, 7), edge_width=3)
    # Class 0 loses the ignore block: its edge is the 5×5 ring around and inside the block,
    # except the block's centre, whose whole window is ignore. Class 1 is absent.
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1
    expected[3, 3] = 0
    torch.testing.assert_close(masks[0, 0], expected)
    assert masks[0, 1].sum() == 0


def test_ignore_index_inside_the_class_range_marks_no_class(labels):
    labels[labels == 255] = 2  # only classes 0..2 remain; 1 is declared ignore below
    masks = K.bpkd_edge_masks(labels, 3, (10, 14), edge_width=3, ignore_index=1)
    expected = as_tensor(ref_edge_masks(labels, 3, (10, 14), 3, ignore_index=1)).float()
    torch.testing.assert_close(masks, expected)
    assert masks[:, 1].sum() == 0


def test_edge_masks_pool_to_soft_values_in_unit_interval(labels):
    masks = K.bpkd_edge_masks(labels, 3, (5, 7), edge_width=3)
    assert masks.min() >= 0 and masks.max() <= 1
    assert ((masks > 0) & (masks < 1)).any()


@pytest.mark.parametrize("bad_value", [-1, 3, 254])
def test_edge_masks_reject_out_of_range_labels(labels, bad_value):
    labels[1, 0, 0] = bad_value
    with pytest.raises(ValueError, match="labels"):
        K.bpkd_edge_masks(labels, 3, (5, 7))


def test_edge_masks_reject_float_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        K.bpkd_edge_masks(labels.double(), 3, (5, 7))


@pytest.fixture
def edge_masks(gen):
    """Soft masks with exact zeros; class 2 is absent from image 0."""
    masks = torch.rand(N, C, H, W, generator=gen, dtype=torch.float64)
    masks = masks * (torch.rand(N, C, H, W, generator=gen) > 0.5)
    masks[0, 2] = 0
    return masks


@pytest.mark.parametrize("prm", [True, False])
@pytest.mark.parametrize("pom", [True, False])
def test_edge_loss_matches_loop(gen, edge_masks, prm, pom):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    loss = K.bpkd_edge_loss(s, t, edge_masks, prm=prm, pom=pom)
    assert loss.item() == approx(ref_edge_loss(s, t, edge_masks, prm=prm, pom=pom))


def test_edge_loss_per_class_alpha_matches_loop(gen, edge_masks):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    alpha = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    assert K.bpkd_edge_loss(s, t, edge_masks, alpha).item() == approx(ref_edge_loss(s, t, edge_masks, alpha))


def test_edge_loss_class_absent_from_every_image_contributes_zero(gen, edge_masks):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    edge_masks[:, 2] = 0
    with_alpha = K.bpkd_edge_loss(s, t, edge_masks, torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64))
    other_alpha = K.bpkd_edge_loss(s, t, edge_masks, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.isfinite(with_alpha)
    assert with_alpha.item() == approx(other_alpha.item())


@pytest.mark.parametrize("pom", [True, False])
def test_edge_loss_image_without_edges_contributes_zero(gen, edge_masks, pom):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    edge_masks[1] = 0
    both = K.bpkd_edge_loss(s, t, edge_masks, pom=pom)
    first_only = K.bpkd_edge_loss(s[:1], t[:1], edge_masks[:1], pom=pom)
    assert both.item() == approx(first_only.item() / 2)


def test_edge_loss_channel_form_is_cwd_of_masked_logits(gen, edge_masks):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    gate = edge_masks.tolist()
    expected = ref_channel_wise_kd(as_tensor(masked(s, gate)), as_tensor(masked(t, gate)))
    assert K.bpkd_edge_loss(s, t, edge_masks, pom=False, form="channel").item() == approx(expected)
    with pytest.raises(ValueError, match="pom"):
        K.bpkd_edge_loss(s, t, edge_masks, form="channel")


@pytest.mark.parametrize("form, reference", [("channel", ref_channel_wise_kd), ("pixel", ref_pixel_kd)])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_body_loss_matches_loop(gen, edge_masks, form, reference, tau):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    gate = ref_body_gate(edge_masks)
    expected = reference(as_tensor(masked(s, gate)), as_tensor(masked(t, gate)), tau)
    assert K.bpkd_body_loss(s, t, edge_masks, tau, form=form).item() == approx(expected)


def test_bpkd_losses_reject_bad_masks_forms_and_alpha(gen, edge_masks):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    for term in (K.bpkd_edge_loss, K.bpkd_body_loss):
        with pytest.raises(ValueError, match="edge_masks"):
            term(s, t, edge_masks[:, :2])
        with pytest.raises(ValueError, match="form"):
            term(s, t, edge_masks, form="spatial")
    with pytest.raises(ValueError, match="alpha"):
        K.bpkd_edge_loss(s, t, edge_masks, alpha=torch.ones(C + 1))


# ---------------------------------------------------------------------------------------------
# BCD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_boundary_affinity_matches_loop(gen, radius):
    b = torch.rand(N, 1, H, W, generator=gen, dtype=torch.float64)
    affinity = K.bcd_boundary_affinity(b, radius)
    assert affinity.shape == (N, 8 * radius, H, W)
    torch.testing.assert_close(affinity, as_tensor(ref_affinity(b, radius)))


def test_boundary_affinity_channels_follow_documented_directions():
    b = torch.zeros(1, 1, H, W, dtype=torch.float64)
    b[0, 0, 2, 3] = 1.0  # one boundary pixel in the middle
    affinity = K.bcd_boundary_affinity(b, radius=2)
    for d, (dy, dx) in enumerate(K.BCD_DIRECTIONS):
        # The pixel two steps behind the boundary pixel, looking in direction d, crosses it at k = 1 and 2.
        y, x = 2 - 2 * dy, 3 - 2 * dx
        assert affinity[0, 2 * d, y, x] == 1.0  # k = 1 stops before the boundary pixel
        assert affinity[0, 2 * d + 1, y, x] == 0.0  # k = 2 ends on it


def test_affinity_valid_mask_marks_partners_inside_the_image():
    radius = 2
    valid = K.bcd_affinity_valid_mask(H, W, radius)
    expected = torch.zeros(8 * radius, H, W, dtype=torch.bool)
    for d, (dy, dx) in enumerate(K.BCD_DIRECTIONS):
        for k in range(1, radius + 1):
            for y, x in positions(H, W):
                expected[d * radius + k - 1, y, x] = 0 <= y + k * dy < H and 0 <= x + k * dx < W
    assert valid.dtype == torch.bool
    assert torch.equal(valid, expected)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_boundary_kd_matches_loop(gen, tau):
    b_s, b_t = (torch.rand(N, 1, H, W, generator=gen, dtype=torch.float64) for _ in range(2))
    a_s, a_t = K.bcd_boundary_affinity(b_s, 2), K.bcd_boundary_affinity(b_t, 2)
    valid = K.bcd_affinity_valid_mask(H, W, 2)
    assert K.boundary_kd(a_s, a_t, tau, valid).item() == approx(ref_boundary_kd(a_s, a_t, tau, valid.tolist()))
    assert K.boundary_kd(a_s, a_t, tau).item() == approx(ref_boundary_kd(a_s, a_t, tau))


def test_boundary_kd_ignores_values_of_invalid_pairs(gen):
    a_s, a_t = randn(gen, N, 8, H, W), randn(gen, N, 8, H, W)
    valid = K.bcd_affinity_valid_mask(H, W, 1)
    changed = a_s.masked_fill(~valid, 50.0)
    original = K.boundary_kd(a_s, a_t, valid=valid).item()
    assert K.boundary_kd(changed, a_t, valid=valid).item() == approx(original)


def test_boundary_kd_accepts_per_image_valid_and_all_invalid_image(gen):
    a_s, a_t = leaf(gen, N, 8, H, W), randn(gen, N, 8, H, W)
    valid = torch.zeros(N, 8, H, W, dtype=torch.bool)
    valid[0, :, 1:4, 2:6] = True  # image 1 has no valid pair at all
    loss = K.boundary_kd(a_s, a_t, valid=valid)
    loss.backward()
    first = ref_boundary_kd(a_s[:1].detach(), a_t[:1], valid=valid[0].tolist())
    assert loss.item() == approx(first / 2)
    assert torch.isfinite(a_s.grad).all() and torch.count_nonzero(a_s.grad[1]) == 0


def test_boundary_kd_with_excluded_pairs_stays_finite_in_float16(gen):
    a_s, a_t = randn(gen, N, 8, H, W) * 20, randn(gen, N, 8, H, W) * 20
    valid = torch.zeros(N, 8, H, W, dtype=torch.bool)
    valid[0, :, 1:3] = True
    half = a_s.half().requires_grad_(True)
    loss = K.boundary_kd(half, a_t.half(), valid=valid)
    loss.backward()
    assert torch.isfinite(half.grad).all()
    in_double = K.boundary_kd(a_s.half().double(), a_t.half().double(), valid=valid)
    assert loss.item() == pytest.approx(in_double.item(), rel=1e-2)


def test_boundary_kd_rejects_bad_valid(gen):
    a_s, a_t = randn(gen, N, 8, H, W), randn(gen, N, 8, H, W)
    with pytest.raises(ValueError, match="valid"):
        K.boundary_kd(a_s, a_t, valid=torch.ones(8, H, W))
    with pytest.raises(ValueError, match="valid"):
        K.boundary_kd(a_s, a_t, valid=torch.ones(4, H, W, dtype=torch.bool))


def test_boundary_affinity_rejects_bad_input(gen):
    with pytest.raises(ValueError, match="boundary_prob"):
        K.bcd_boundary_affinity(torch.rand(N, 2, H, W))
    with pytest.raises(ValueError, match="radius"):
        K.bcd_boundary_affinity(torch.rand(N, 1, H, W), radius=0)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_context_relation_matches_loop(gen, tau):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 5, H, W)
    assert K.context_relation_kd(s, t, tau).item() == approx(ref_context(s, t, tau))


# ---------------------------------------------------------------------------------------------
# PPD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 3])
def test_gam_matches_loop(gen, p):
    feat = randn(gen, N, C, H, W)
    torch.testing.assert_close(K.gam(feat, p), as_tensor(ref_gam(feat, p)))


def test_gam_with_p1_keeps_negative_values():
    feat = -torch.ones(1, 2, 3, 3)
    assert (K.gam(feat, 1) == -2).all()
    assert (K.gam(feat, 2) == 2).all()


def test_partial_l2_matches_loop_including_ties(gen):
    s, t = randn(gen, N, H, W), randn(gen, N, H, W)
    s[0, 0, :3] = torch.tensor([-1.0, -2.0, 0.0], dtype=torch.float64)
    t[0, 0, :3] = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)  # S = T < 0, S < T = 0, S = T = 0
    assert K.partial_l2(s, t).item() == approx(ref_partial_l2(s, t))


def test_partial_l2_skips_only_student_below_non_positive_teacher():
    teacher = torch.tensor([-1.0, -1.0, 1.0, 0.0])
    student = torch.tensor([-3.0, 2.0, 0.0, -4.0])
    # Terms: skipped (S ≤ T ≤ 0), (−1−2)² = 9, (1−0)² = 1, skipped (S ≤ T = 0); mean over 4.
    assert K.partial_l2(student, teacher).item() == pytest.approx((9 + 1) / 4)


def test_partial_l2_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="student"):
        K.partial_l2(torch.zeros(2, 3), torch.zeros(2, 4))


def test_ppd_pixel_matches_loop(gen):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 5, H, W)
    expected = ref_partial_l2(as_tensor(ref_gam(s, 1)), as_tensor(ref_gam(t, 1)))
    assert K.ppd_pixel_kd(s, t).item() == approx(expected)


@pytest.mark.parametrize("grid", [2, 3])
def test_ppd_pairwise_matches_loop(gen, grid):
    s, t = randn(gen, N, 3, H, W), randn(gen, N, 5, H, W)
    assert K.ppd_pairwise_kd(s, t, grid).item() == approx(ref_ppd_pairwise(s, t, grid))


# ---------------------------------------------------------------------------------------------
# Holistic (SKD Eq. 3–4)
# ---------------------------------------------------------------------------------------------


def test_wgan_critic_and_generator_losses(gen):
    d_s, d_t = randn(gen, N, 1), randn(gen, N, 1)
    expected = mean(d_s.flatten().tolist()) - mean(d_t.flatten().tolist())
    assert K.wgan_critic_loss(d_s, d_t).item() == approx(expected)
    assert K.holistic_generator_loss(d_s).item() == approx(-mean(d_s.flatten().tolist()))


def test_gradient_penalty_of_linear_critic_is_norm_of_its_weights(gen):
    weight = randn(gen, 1, C, H, W).requires_grad_(True)
    image = randn(gen, N, 3, H, W)

    def critic(seg, img):
        return (seg * weight).sum((1, 2, 3)) + img.sum((1, 2, 3))

    real, fake = leaf(gen, N, C, H, W), leaf(gen, N, C, H, W)
    penalty = K.gradient_penalty(critic, real, fake, image)
    norm = math.sqrt(sum(v * v for v in weight.flatten().tolist()))
    assert penalty.item() == approx((norm - 1) ** 2)
    penalty.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert real.grad is None and fake.grad is None


def test_gradient_penalty_uses_one_interpolate_per_image(gen):
    real, fake, image = randn(gen, N, C, H, W), randn(gen, N, C, H, W), randn(gen, N, 1, H, W)

    def critic(seg, img):  # ∇ = 2·seg·img
        return (seg.pow(2) * img).sum((1, 2, 3))

    penalty = K.gradient_penalty(critic, real, fake, image, generator=torch.Generator().manual_seed(7))
    eps = torch.rand(N, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    r, f, img = real.tolist(), fake.tolist(), image.tolist()
    terms = []
    for n in range(N):
        squares = [
            (2 * (eps[n] * r[n][c][y][x] + (1 - eps[n]) * f[n][c][y][x]) * img[n][0][y][x]) ** 2
            for c in range(C)
            for y, x in positions(H, W)
        ]
        terms.append((math.sqrt(sum(squares)) - 1) ** 2)
    assert penalty.item() == approx(mean(terms))


def test_the_batched_critic_objective_equals_three_separate_critic_calls(gen):
    """SKD's discriminator (eval mode: spectral norm without its power iteration, so both forms see one weight)."""
    from kdlab.losses.skd_holistic import Discriminator

    torch.manual_seed(0)
    critic = Discriminator(C, width=4).double().eval()
    with torch.no_grad():  # a non-zero attention scale, so the attention blocks count
        for block in (critic.net[3], critic.net[5]):
            block.gamma.fill_(0.5)
    real, fake, image = randn(gen, N, C, 8, 8).softmax(1), randn(gen, N, C, 8, 8).softmax(1), randn(gen, N, 3, 32, 32)

    def value_and_grads(loss):
        return [loss.detach()] + list(torch.autograd.grad(loss, list(critic.parameters())))

    batched = value_and_grads(K.critic_objective(critic, real, fake, image, 10.0, torch.Generator().manual_seed(3)))
    separate = value_and_grads(K.wgan_critic_loss(critic(fake, image), critic(real, image))
                               + 10.0 * K.gradient_penalty(critic, real, fake, image, torch.Generator().manual_seed(3)))
    assert batched[0].item() != 0.0
    for b, s in zip(batched, separate):
        torch.testing.assert_close(b, s, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [(4, 4), (5, 7)])
def test_the_matmul_convolution_is_conv2d_up_to_second_derivatives(gen, size):
    """The discriminator's unfold + matrix-product layer: the same outputs, and the same gradients of a
    gradient-penalty-like loss (a function of the input gradient) w.r.t. weight, bias and input."""
    from kdlab.losses.skd_holistic import MatmulConv2d

    conv = torch.nn.Conv2d(6, 5, kernel_size=3, stride=2, padding=1).double()
    matmul = MatmulConv2d(6, 5, kernel_size=3, stride=2, padding=1).double()
    matmul.load_state_dict(conv.state_dict())  # the same parameter names: checkpoints load either way
    x = randn(gen, 2, 6, *size)

    def penalty_and_grads(layer):
        inp = x.clone().requires_grad_(True)
        out = layer(inp)
        (grad_in,) = torch.autograd.grad(out.pow(2).sum(), inp, create_graph=True)
        penalty = (grad_in.flatten(1).norm(dim=1) - 1).pow(2).mean()
        return [out.detach(), *torch.autograd.grad(penalty, [layer.weight, layer.bias, inp])]

    for m, c in zip(penalty_and_grads(matmul), penalty_and_grads(conv)):
        assert m.shape == c.shape
        torch.testing.assert_close(m, c, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Common contract (METHODS.md section 7), over every student/teacher term
# ---------------------------------------------------------------------------------------------


def with_edge_masks(term, **kwargs):
    def call(s, t):
        masks = torch.rand(s.shape, generator=torch.Generator().manual_seed(1), dtype=s.dtype)
        return term(s, t, masks.to(s.device), **kwargs)

    call.__name__ = term.__name__
    return call


def with_valid_pairs(s, t):
    valid = torch.rand(s.shape[1:], generator=torch.Generator().manual_seed(2)) > 0.3
    return K.boundary_kd(s, t, valid=valid.to(s.device))


SAME_CHANNEL_TERMS = [
    K.pixel_kd,
    K.channel_wise_kd,
    K.mimic_kd,
    with_edge_masks(K.bpkd_edge_loss),
    with_edge_masks(K.bpkd_edge_loss, pom=False, form="channel"),
    with_edge_masks(K.bpkd_body_loss),
    with_edge_masks(K.bpkd_body_loss, form="pixel"),
    K.boundary_kd,
    with_valid_pairs,
]
ANY_CHANNEL_TERMS = [
    K.pairwise_similarity_kd,
    K.local_pairwise_kd,
    K.attention_transfer,
    K.context_relation_kd,
    K.ppd_pixel_kd,
    K.ppd_pairwise_kd,
]
ALL_TERMS = SAME_CHANNEL_TERMS + ANY_CHANNEL_TERMS


def term_id(term):
    return term.__name__


@pytest.mark.parametrize("term", ALL_TERMS, ids=term_id)
def test_gradient_reaches_student_and_never_teacher(gen, term):
    s, t = leaf(gen, N, C, H, W), leaf(gen, N, C, H, W)
    term(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("term", ALL_TERMS, ids=term_id)
def test_zero_when_student_equals_teacher(gen, term):
    s = randn(gen, N, C, H, W)
    assert term(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("term", ALL_TERMS, ids=term_id)
def test_spatial_mismatch_is_rejected_naming_the_arguments(gen, term):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W + 1)
    with pytest.raises(ValueError, match=r"student_\w+ has spatial size .* but teacher_\w+"):
        term(s, t)


@pytest.mark.parametrize("term", SAME_CHANNEL_TERMS, ids=term_id)
def test_channel_mismatch_is_rejected_where_channels_must_agree(gen, term):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C + 1, H, W)
    with pytest.raises(ValueError, match=r"student_\w+ has 3 channels but teacher_\w+ has 4"):
        term(s, t)


@pytest.mark.parametrize("term", ANY_CHANNEL_TERMS, ids=term_id)
def test_channel_mismatch_is_accepted_by_similarity_terms(gen, term):
    s, t = leaf(gen, N, C, H, W), randn(gen, N, C + 2, H, W)
    loss = term(s, t)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("term", ALL_TERMS, ids=term_id)
def test_non_4d_input_is_rejected(gen, term):
    with pytest.raises(ValueError, match="student_"):
        term(randn(gen, C, H, W), randn(gen, N, C, H, W))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("term", ALL_TERMS, ids=term_id)
def test_cuda_result_matches_cpu_and_stays_on_device(gen, term):
    s, t = randn(gen, N, C, H, W), randn(gen, N, C, H, W)
    on_gpu = term(s.cuda(), t.cuda())
    assert on_gpu.device.type == "cuda"
    assert on_gpu.item() == pytest.approx(term(s, t).item(), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_edge_masks_and_affinity_match_cpu(labels, gen):
    masks = K.bpkd_edge_masks(labels.cuda(), 3, (5, 7), edge_width=4)
    assert masks.device.type == "cuda"
    torch.testing.assert_close(masks.cpu(), K.bpkd_edge_masks(labels, 3, (5, 7), edge_width=4))
    b = torch.rand(N, 1, H, W, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(K.bcd_boundary_affinity(b.cuda(), 2).cpu(), K.bcd_boundary_affinity(b, 2))
    valid = K.bcd_affinity_valid_mask(H, W, 2, device="cuda")
    assert valid.device.type == "cuda"
    assert torch.equal(valid.cpu(), K.bcd_affinity_valid_mask(H, W, 2))


# ---------------------------------------------------------------------------------------------
# Exact rewrites of the methods' cost (issue 14): the old form and the new agree, values and gradients
# ---------------------------------------------------------------------------------------------


def _ctx(student_channels, teacher_channels):
    from kdlab.losses.base import MethodContext

    return MethodContext(student_channels, teacher_channels, list(student_channels), list(teacher_channels), 3)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("size", [(2, 2), (5, 7), (8, 8)])
def test_pooling_before_upsampling_equals_upsample_then_pool(gen, relu, size):
    import torch.nn.functional as F
    from kdlab.losses.skd_pairwise import max_pool2_of_bilinear_up2

    x = torch.randn(2, 6, *size, generator=gen, dtype=torch.float64)
    x = (x.relu() if relu else x).requires_grad_(True)
    weights = torch.randn(2, 6, *size, generator=gen, dtype=torch.float64)
    old = F.max_pool2d(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), 2, 2, ceil_mode=True)
    new = max_pool2_of_bilinear_up2(x)
    torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    (old_grad,) = torch.autograd.grad((old * weights).sum(), x)
    (new_grad,) = torch.autograd.grad((new * weights).sum(), x)
    if not relu:
        torch.testing.assert_close(new_grad, old_grad, rtol=1e-12, atol=1e-12)
    else:
        # Zeros make window entries mathematically equal (e.g. 0.75·x_i + 0.25·0 twice); which of them
        # max-pooling's gradient picks is then decided by rounding in the old form. Either is a valid
        # subgradient, and the two only differ on zero entries, where a ReLU passes no gradient on.
        differs = (new_grad - old_grad).abs() > 1e-12
        assert (x[differs] == 0).all()
        torch.testing.assert_close(new_grad.sum(), old_grad.sum())


def test_skd_pairwise_method_pools_before_upsampling_with_the_same_loss(gen):
    import torch.nn.functional as F
    from kdlab.losses.base import Step
    from kdlab.losses.skd_pairwise import PairwiseKD

    method = PairwiseKD(_ctx({"decoder": 8}, {"decoder": 5}))
    s = torch.randn(2, 8, 6, 5, generator=gen, requires_grad=True)
    t = torch.randn(2, 5, 12, 10, generator=gen)
    new = method({"decoder": s}, {"decoder": t}, {}, Step(1, 10))["pairwise"]
    (new_grad,) = torch.autograd.grad(new, s)
    up = F.interpolate(s, size=(12, 10), mode="bilinear", align_corners=False)
    old = K.pairwise_similarity_kd(up, t, pool_kernel=2)
    (old_grad,) = torch.autograd.grad(old, s)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(new_grad, old_grad, rtol=1e-4, atol=1e-7)


def test_mimic_adapter_before_the_resize_matches_resize_then_adapter(gen):
    import torch.nn.functional as F
    from kdlab.losses.base import Step
    from kdlab.losses.mimic import MimicKD

    torch.manual_seed(0)
    method = MimicKD(_ctx({"decoder": 8}, {"decoder": 4}))
    s = torch.randn(2, 8, 6, 5, generator=gen, requires_grad=True)
    t = torch.randn(2, 4, 12, 11, generator=gen)
    new = method({"decoder": s}, {"decoder": t}, {}, Step(1, 10))["mimic"]
    new_grads = torch.autograd.grad(new, [s, *method.adapter.parameters()])
    old = K.mimic_kd(method.adapter(F.interpolate(s, size=(12, 11), mode="bilinear", align_corners=False)), t)
    old_grads = torch.autograd.grad(old, [s, *method.adapter.parameters()])
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-7)
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bcd_teacher_side_builds_no_graph(gen):
    from kdlab.losses.bcd import BoundaryContextDistillation

    method = BoundaryContextDistillation(_ctx({"s1": 4, "s2": 6}, {"t1": 5, "t2": 7}), width=8, lateral_width=4)
    student = [torch.randn(2, 4, 8, 8, generator=gen, requires_grad=True),
               torch.randn(2, 6, 4, 4, generator=gen, requires_grad=True)]
    teacher = [torch.randn(2, 5, 8, 8, generator=gen), torch.randn(2, 7, 4, 4, generator=gen)]
    s, t = method.fused({"features": student}, {"features": teacher}, torch.zeros(2, 3, 32, 32))
    assert s.requires_grad and not t.requires_grad and t.grad_fn is None
    assert not any(p.requires_grad for p in method.teacher_fusion.parameters())
    assert not any(p.requires_grad for p in method.teacher_boundary.parameters())


def test_bpkd_edge_masks_stay_on_the_device_and_vectorised():
    labels = torch.randint(0, 4, (3, 40, 40))
    masks = K.bpkd_edge_masks(labels, 4, (10, 10), edge_width=7)
    assert masks.shape == (3, 4, 10, 10) and masks.dtype == torch.float32
    per_image = torch.cat([K.bpkd_edge_masks(labels[i:i + 1], 4, (10, 10), edge_width=7) for i in range(3)])
    assert torch.equal(masks, per_image)


def test_bcd_terms_take_the_temperature_as_a_device_tensor_with_the_same_value():
    """BCD's adaptive τ stays on the device (no host read per step): a 0-d tensor gives the float's value,
    and a non-positive one is refused."""
    generator = torch.Generator().manual_seed(0)
    s_aff, t_aff = torch.rand(2, 2, 8, 3, 3, generator=generator).unbind(0)
    s_feat, t_feat = torch.randn(2, 2, 4, 3, 3, generator=generator).unbind(0)
    torch.testing.assert_close(K.boundary_kd(s_aff, t_aff, torch.tensor(1.7)), K.boundary_kd(s_aff, t_aff, 1.7))
    torch.testing.assert_close(K.context_relation_kd(s_feat, t_feat, torch.tensor(1.7)),
                               K.context_relation_kd(s_feat, t_feat, 1.7))
    with pytest.raises(RuntimeError, match="temperature must be positive"):
        K.boundary_kd(s_aff, t_aff, torch.tensor(0.0))
