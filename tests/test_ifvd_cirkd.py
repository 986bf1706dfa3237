"""IFVD and CIRKD: their functional terms against plain-Python loops on tiny inputs, CIRKD's memory
bookkeeping, and runs that stop and resume (or train in a cohort) exactly as uninterrupted runs alone."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from kdlab.checkpoint import load_checkpoint
from kdlab.config import load_config
from kdlab.distill import distill_objective
from kdlab.engine import run_config, train, train_cohort
from kdlab.losses import MethodContext, Step, build_method
from kdlab.losses import functional as K
from kdlab.losses.cirkd import push, sample_slots

N, C, H, W = 2, 3, 3, 4
CLASSES, IGNORE = 3, 255


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def approx(value):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


@pytest.fixture
def labels():
    """Two 3×4 label maps: class 2 absent from image 0, one ignored pixel in each, and a stray
    value (7 ≥ K) that belongs to no class either."""
    return torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 7, 1]],
                         [[2, 2, 2, 0], [2, 255, 0, 0], [1, 2, 0, 0]]])


# ---------------------------------------------------------------------------------------------
# Plain-Python references
# ---------------------------------------------------------------------------------------------


def vec(x, n, i, j):
    return [float(x[n, c, i, j]) for c in range(x.shape[1])]


def dot(a, b):
    return sum(p * q for p, q in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def cos(a, b):
    return dot(a, b) / (max(norm(a), 1e-8) * max(norm(b), 1e-8))


def unit(a):
    length = max(norm(a), 1e-12)
    return [v / length for v in a]


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def prototype_ref(x, labels, n, k):
    pixels = [vec(x, n, i, j) for i in range(H) for j in range(W) if int(labels[n, i, j]) == k]
    if not pixels:
        return None
    return [sum(p[c] for p in pixels) / len(pixels) for c in range(x.shape[1])]


def ifv_ref(x, labels):
    """{(n, i, j): cos(f, own class prototype)} over the pixels of a class."""
    out = {}
    for n in range(N):
        for i in range(H):
            for j in range(W):
                k = int(labels[n, i, j])
                if 0 <= k < CLASSES:
                    out[n, i, j] = cos(vec(x, n, i, j), prototype_ref(x, labels, n, k))
    return out


# ---------------------------------------------------------------------------------------------
# IFVD
# ---------------------------------------------------------------------------------------------


def test_class_prototypes_are_per_image_class_means(gen, labels):
    x = randn(gen, N, C, H, W)
    prototypes, counts = K.class_prototypes(x, labels, CLASSES)
    for n in range(N):
        for k in range(CLASSES):
            ref = prototype_ref(x, labels, n, k)
            expected_count = sum(int(labels[n, i, j]) == k for i in range(H) for j in range(W))
            assert float(counts[n, k]) == expected_count
            assert prototypes[n, k].tolist() == (approx(ref) if ref else [0.0] * C)


def test_ifv_map_is_cosine_to_own_class_prototype(gen, labels):
    x = randn(gen, N, C, H, W)
    ifv, valid = K.ifv_map(x, labels, CLASSES)
    ref = ifv_ref(x, labels)
    assert valid.tolist() == [[[(n, i, j) in ref for j in range(W)] for i in range(H)] for n in range(N)]
    for n in range(N):
        for i in range(H):
            for j in range(W):
                assert float(ifv[n, i, j]) == approx(ref.get((n, i, j), 0.0))


def test_a_lone_pixel_of_its_class_has_variation_one(gen):
    x = randn(gen, 1, C, 1, 2)
    ifv, _ = K.ifv_map(x, torch.tensor([[[0, 1]]]), 2)
    assert ifv.tolist() == [[[approx(1.0), approx(1.0)]]]


@pytest.mark.parametrize("student_channels", [C, 5])
def test_ifvd_kd_matches_loop(gen, labels, student_channels):
    s, t = randn(gen, N, student_channels, H, W), randn(gen, N, C, H, W)
    rs, rt = ifv_ref(s, labels), ifv_ref(t, labels)
    expected = sum((rs[key] - rt[key]) ** 2 for key in rs) / len(rs)
    assert float(K.ifvd_kd(s, t, labels, CLASSES, IGNORE)) == approx(expected)


def test_ifvd_kd_resizes_labels_by_nearest_neighbour(gen, labels):
    s, t = randn(gen, N, 4, H, W), randn(gen, N, C, H, W)
    large = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)  # 6×8: nearest picks every other pixel
    assert K.labels_at(large, (H, W)).tolist() == labels.tolist()
    assert float(K.ifvd_kd(s, t, large, CLASSES)) == approx(float(K.ifvd_kd(s, t, labels, CLASSES)))


def test_ifvd_kd_gradient_flows_through_the_prototypes(gen, labels):
    s = randn(gen, N, 4, H, W).requires_grad_(True)
    t = randn(gen, N, C, H, W)
    assert torch.autograd.gradcheck(lambda x: K.ifvd_kd(x, t, labels, CLASSES), (s,))


def test_ifvd_of_identical_features_and_of_no_valid_pixel_is_zero(gen, labels):
    x = randn(gen, N, C, H, W)
    assert float(K.ifvd_kd(x, x, labels, CLASSES)) == 0.0
    s = randn(gen, N, C, H, W).requires_grad_(True)
    loss = K.ifvd_kd(s, x, torch.full_like(labels, IGNORE), CLASSES)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


def test_ifvd_rejects_spatial_mismatch_and_bad_labels(gen, labels):
    with pytest.raises(ValueError, match="spatial size"):
        K.ifvd_kd(randn(gen, N, C, H, W + 1), randn(gen, N, C, H, W), labels, CLASSES)
    with pytest.raises(ValueError, match="integer"):
        K.ifv_map(randn(gen, N, C, H, W), labels.double(), CLASSES)
    with pytest.raises(ValueError, match="one shape"):
        K.ifv_map_mse(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))


def test_ifvd_method_resizes_the_student_map_not_its_features(gen, labels):
    ctx = MethodContext({"decoder": 4}, {"decoder": C}, [], [], CLASSES)
    method = build_method("ifvd", ctx)
    s, t = randn(gen, N, 4, 2, 2).float(), randn(gen, N, C, H + 1, W).float()
    big = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    out = method({"decoder": s}, {"decoder": t}, {"label": big}, Step(1, 1))["ifv"]
    s_map, _ = K.ifv_map(s, big, CLASSES)
    t_map, valid = K.ifv_map(t, big, CLASSES)
    s_map = F.interpolate(s_map[:, None], size=(H + 1, W), mode="bilinear", align_corners=False)[:, 0]
    assert float(out) == pytest.approx(float(((s_map - t_map)[valid] ** 2).mean()), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# CIRKD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_minibatch_pair_kd_matches_loop(gen, tau):
    s, t = randn(gen, 3, 4, 2, 2), randn(gen, 3, C, 2, 2)
    n, hw = 3, 4
    pixels = [(i, j) for i in range(2) for j in range(2)]
    total = 0.0
    for a_img in range(n):
        for b_img in range(n):
            for pa in pixels:
                srow = [dot(unit(vec(s, a_img, *pa)), unit(vec(s, b_img, *pb))) / tau for pb in pixels]
                trow = [dot(unit(vec(t, a_img, *pa)), unit(vec(t, b_img, *pb))) / tau for pb in pixels]
                total += kl(softmax(trow), softmax(srow))
    expected = total / (n * n * hw)
    assert float(K.cirkd_minibatch_pair_kd(s, t, tau)) == approx(expected)


def memory_ref(s, t, memory, tau, kappa, memory_mask=None, anchor_mask=None):
    keep = [m for m in range(len(memory)) if memory_mask is None or memory_mask[m]]
    anchors = [a for a in range(len(s)) if anchor_mask is None or anchor_mask[a]]
    total = 0.0
    for a in anchors:
        zs = [dot(unit(s[a]), unit(memory[m])) / tau / kappa for m in keep]
        zt = [dot(unit(t[a]), unit(memory[m])) / tau / kappa for m in keep]
        total += kappa**2 * kl(softmax(zt), softmax(zs))
    return total / max(len(anchors), 1)


@pytest.mark.parametrize("tau, kappa", [(0.1, 1.0), (0.5, 2.0)])
def test_memory_kd_matches_loop(gen, tau, kappa):
    s, t, memory = randn(gen, 5, 4), randn(gen, 5, 4), randn(gen, 6, 4)
    expected = memory_ref(s.tolist(), t.tolist(), memory.tolist(), tau, kappa)
    assert float(K.cirkd_memory_kd(s, t, memory, tau, kappa)) == approx(expected)


def test_memory_kd_masks_leave_out_memory_slots_and_anchors(gen):
    s, t, memory = randn(gen, 5, 4), randn(gen, 5, 4), randn(gen, 6, 4)
    memory_mask = torch.tensor([True, False, True, True, False, True])
    anchor_mask = torch.tensor([True, True, False, True, False])
    expected = memory_ref(s.tolist(), t.tolist(), memory.tolist(), 0.1, 1.0, memory_mask.tolist(),
                          anchor_mask.tolist())
    value = K.cirkd_memory_kd(s, t, memory, 0.1, 1.0, memory_mask, anchor_mask)
    assert float(value) == approx(expected)
    # what a masked-out slot holds does not matter
    memory[~memory_mask] = 1e3
    assert float(K.cirkd_memory_kd(s, t, memory, 0.1, 1.0, memory_mask, anchor_mask)) == approx(expected)


def test_memory_kd_without_anchors_or_memory_is_zero_with_finite_gradient(gen):
    s = randn(gen, 3, 4).requires_grad_(True)
    t, memory = randn(gen, 3, 4), randn(gen, 2, 4)
    none = torch.zeros(3, dtype=torch.bool)
    for value in (K.cirkd_memory_kd(s, t, memory, anchor_mask=none),
                  K.cirkd_memory_kd(s, t, memory, memory_mask=torch.zeros(2, dtype=torch.bool))):
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(s.grad).all()


def test_memory_kd_rejects_bad_shapes(gen):
    with pytest.raises(ValueError, match="2-D"):
        K.cirkd_memory_kd(randn(gen, 3, 4, 1), randn(gen, 3, 4), randn(gen, 2, 4))
    with pytest.raises(ValueError, match="D of memory"):
        K.cirkd_memory_kd(randn(gen, 3, 4), randn(gen, 3, 4), randn(gen, 2, 5))
    with pytest.raises(ValueError, match="memory_mask"):
        K.cirkd_memory_kd(randn(gen, 3, 4), randn(gen, 3, 4), randn(gen, 2, 4), memory_mask=torch.ones(3) > 0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4)])
def test_avg_pool_of_bilinear_up2_equals_the_two_step_form(gen, size):
    x = randn(gen, 2, 3, *size).requires_grad_(True)
    two_step = F.avg_pool2d(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), 2)
    fused = K.avg_pool2_of_bilinear_up2(x)
    assert torch.allclose(fused, two_step, rtol=0, atol=1e-12)
    weights = randn(gen, *two_step.shape)
    (g_two,) = torch.autograd.grad((two_step * weights).sum(), x)
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), x)
    assert torch.allclose(g_fused, g_two, rtol=0, atol=1e-12)


def ring_reference(size, pushes):
    """Per class, a FIFO of the last `size` kept rows, in the order they were pushed."""
    classes = pushes[0][0].shape[0]
    queues = [deque(maxlen=size) for _ in range(classes)]
    for values, keep in pushes:
        for k in range(classes):
            for e in range(values.shape[1]):
                if keep[k, e]:
                    queues[k].append(values[k, e].tolist())
    return queues


def test_push_keeps_the_last_entries_of_each_class_in_a_ring(gen):
    size, classes, dim = 4, 2, 3
    queue = torch.zeros(classes, size + 1, dim, dtype=torch.float64)
    ptr, filled = torch.zeros(classes, dtype=torch.long), torch.zeros(classes, dtype=torch.long)
    pushes = [(randn(gen, classes, e, dim), torch.rand(classes, e, generator=gen) > 0.3) for e in (3, 1, 6, 2, 9)]
    for step, (values, keep) in enumerate(pushes):
        push(queue, ptr, filled, values, keep)
        expected = ring_reference(size, pushes[: step + 1])
        for k in range(classes):
            assert int(filled[k]) == len(expected[k])
            # the ring holds the entries oldest first starting at ptr once full, at 0 before
            start = int(ptr[k]) if int(filled[k]) == size else 0
            rows = [queue[k, (start + r) % size].tolist() for r in range(int(filled[k]))]
            assert rows == list(expected[k])


def test_sample_slots_draws_filled_slots_in_one_order_for_all_classes():
    filled = torch.tensor([10, 3, 0])
    index, ok = sample_slots(filled, 10, 4, torch.Generator().manual_seed(1))
    assert ok.tolist() == [[True] * 4, [True, True, True, False], [False] * 4]
    assert len(set(index[0].tolist())) == 4 and sorted(index[1, :3].tolist()) == [0, 1, 2]
    full, _ = sample_slots(torch.tensor([10, 10]), 10, 4, torch.Generator().manual_seed(1))
    assert torch.equal(full[0], full[1]) and torch.equal(full[0], index[0])


def small_cirkd(student_channels=4, teacher_channels=C, **options):
    ctx = MethodContext({"decoder": student_channels}, {"decoder": teacher_channels}, [], [], CLASSES)
    options = {"pixel_memory_size": 5, "region_memory_size": 3, "pixel_contrast_size": 6,
               "region_contrast_size": 3, "pixel_update": 2, **options}
    return build_method("cirkd", ctx, options=options)


def test_cirkd_enqueues_region_means_and_a_few_pixels_per_class_and_image(gen, labels):
    torch.manual_seed(0)
    method = small_cirkd()
    t = randn(gen, N, C, H, W).float()
    t_unit = F.normalize(t, dim=1)
    method.enqueue(t_unit, labels, torch.Generator().manual_seed(0))
    # images holding each class: 0 -> both, 1 -> both (image 1 one pixel only), 2 -> only image 1
    counts = [[sum(int(labels[n, i, j]) == k for i in range(H) for j in range(W)) for n in range(N)]
              for k in range(CLASSES)]
    assert method.region_filled.tolist() == [sum(c > 0 for c in row) for row in counts] == [2, 2, 1]
    assert method.pixel_filled.tolist() == [sum(min(c, 2) for c in row) for row in counts] == [4, 3, 2]
    means, _ = K.class_prototypes(t_unit, labels, CLASSES)
    for k in range(CLASSES):
        images = [n for n in range(N) if counts[k][n]]
        for slot, n in enumerate(images):
            assert torch.allclose(method.region_queue[k, slot], F.normalize(means[n, k], dim=0), rtol=1e-6, atol=1e-7)
        # the pixel entries: unit teacher embeddings of distinct pixels of that class, in image order
        owners = [n for n in range(N) for _ in range(min(counts[k][n], 2))]
        entries = [tuple(method.pixel_queue[k, slot].tolist()) for slot in range(len(owners))]
        assert len(set(entries)) == len(entries)
        for entry, n in zip(entries, owners):
            assert entry in [tuple(t_unit[n, :, i, j].tolist()) for i in range(H) for j in range(W)
                             if int(labels[n, i, j]) == k]


def test_cirkd_terms_are_finite_and_only_training_fills_memory(gen, labels):
    torch.manual_seed(0)
    method = small_cirkd()
    s, t = randn(gen, N, 4, H, W).float().requires_grad_(True), randn(gen, N, C, H, W).float()
    method.eval()
    out = method({"decoder": s}, {"decoder": t}, {"label": labels}, Step(1, 3))
    assert method.pixel_filled.sum() == 0 and out["pixel_memory"].item() == 0.0
    method.train()
    for it in (1, 2, 3):
        out = method({"decoder": s}, {"decoder": t}, {"label": labels}, Step(it, 3))
    assert set(out) == {"minibatch", "pixel_memory", "region_memory"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in out.values())
    assert method.region_filled.tolist() == [3, 3, 3] and method.pixel_filled.tolist() == [5, 5, 5]
    sum(out.values()).backward()
    assert method.head[0].weight.grad is not None and torch.isfinite(s.grad).all()


def test_cirkd_draws_nothing_from_the_global_rng_while_training(gen, labels):
    torch.manual_seed(0)
    method = small_cirkd()
    s, t = randn(gen, N, 4, H, W).float(), randn(gen, N, C, H, W).float()
    state = torch.get_rng_state()
    first = method({"decoder": s}, {"decoder": t}, {"label": labels}, Step(1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    # the same iteration with the same memory draws the same samples: a second copy agrees
    torch.manual_seed(0)
    twin = small_cirkd()
    again = twin({"decoder": s}, {"decoder": t}, {"label": labels}, Step(1, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cirkd_recipe(tmp_path):
    """CIRKD with memories small enough to wrap around within a four-iteration run."""
    path = tmp_path / "cirkd_small.yaml"
    path.write_text("methods:\n  - method: cirkd\n    options: {pixel_memory_size: 40, region_memory_size: 5, "
                    "pixel_contrast_size: 30, region_contrast_size: 9, pool_kernel: 2}\n")
    return path


def _config(tiny_overrides, teacher, recipe, name):
    return load_config(["configs/student.yaml"], tiny_overrides + [f"distill.teacher={teacher}",
                                                                  f"distill.recipe={recipe}", f"name={name}"])


def _same_state(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    memory = [k for k in ca["objective"] if "_queue" in k or "_filled" in k or "_ptr" in k]
    assert memory and all(torch.equal(ca["objective"][k], cb["objective"][k]) for k in memory)
    assert ca["objective_extra"] == cb["objective_extra"]


def test_a_cirkd_run_stopped_and_resumed_equals_the_uninterrupted_run(tiny_overrides, tiny_teacher, cirkd_recipe):
    straight = train(_config(tiny_overrides, tiny_teacher, cirkd_recipe, "straight"),
                     objective_factory=distill_objective, progress=False)
    partial = train(_config(tiny_overrides, tiny_teacher, cirkd_recipe, "split"), until=2,
                    objective_factory=distill_objective, progress=False)
    assert load_checkpoint(partial)["objective"]["methods.cirkd.pixel_filled"].sum() > 0
    resumed = train(run_config(partial), resume=True, objective_factory=distill_objective, progress=False)
    _same_state(straight, resumed)
    assert int(load_checkpoint(resumed)["objective"]["methods.cirkd.pixel_filled"].max()) == 40  # wrapped


def test_cirkd_in_a_cohort_ends_where_it_would_alone(tiny_overrides, tiny_teacher, cirkd_recipe):
    alone = train(_config(tiny_overrides, tiny_teacher, cirkd_recipe, "alone"),
                  objective_factory=distill_objective, progress=False)
    _, together = train_cohort([_config(tiny_overrides, tiny_teacher, "kd", "with-kd"),
                                _config(tiny_overrides, tiny_teacher, cirkd_recipe, "with-cirkd")],
                               objective_factory=distill_objective, progress=False)
    _same_state(alone, together)
