"""Property-based tests (hypothesis) of every public function of `kdlab.losses.functional` and of the
metrics: valid input of any small size (1×1 and odd sizes, all-ignore labels, empty masks) gives a
finite value whose gradient is finite and reaches the student (never the teacher); a wrong dtype,
a wrong shape or out-of-range labels give a ValueError naming the argument, or a finite value that
still backpropagates."""

import inspect
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdlab.losses.functional as KF
from kdlab import metrics

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IGNORE = 255


class Case:
    """A valid call: ``fn(**kwargs)``; ``grads``: inputs whose gradient must be finite and not None;
    ``constants``: inputs that must receive no gradient (the teacher's)."""

    def __init__(self, fn, kwargs, grads=(), constants=()):
        self.fn, self.kwargs, self.grads, self.constants = fn, kwargs, tuple(grads), tuple(constants)


@st.composite
def sizes(draw):
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 4)), h=draw(st.integers(1, 5)),
                w=draw(st.integers(1, 5)), seed=draw(st.integers(0, 2**16)),
                scale=draw(st.sampled_from([1e-3, 1.0, 30.0])), all_ignore=draw(st.booleans()),
                empty_mask=draw(st.booleans()))


def _cases(d) -> dict[str, Case]:
    g = torch.Generator().manual_seed(d["seed"])
    n, c, h, w, scale = d["n"], d["c"], d["h"], d["w"], d["scale"]

    def rand(*shape, grad=True):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(grad)

    def labels(classes=c, hh=h, ww=w):
        if d["all_ignore"]:
            return torch.full((n, hh, ww), IGNORE)
        lab = torch.randint(0, classes, (n, hh, ww), generator=g)
        return torch.where(torch.rand(n, hh, ww, generator=g) < 0.2, IGNORE, lab)

    def mask(*shape):
        return torch.zeros(*shape, dtype=torch.bool) if d["empty_mask"] else torch.rand(*shape, generator=g) < 0.6

    def pair(fn, s="student_feat", t="teacher_feat", tc=None, **extra):
        return Case(fn, {s: rand(n, c, h, w), t: rand(n, c if tc is None else tc, h, w, grad=False), **extra},
                    [s], [t])

    edge = KF.bpkd_edge_masks(labels(), c, (h, w), edge_width=3, ignore_index=IGNORE)
    radius = 2
    embed_a, embed_m = n * 3, 5
    return {
        "pixel_kd": pair(KF.pixel_kd, "student_logits", "teacher_logits", valid_mask=mask(n, h, w)),
        "pairwise_similarity_kd": pair(KF.pairwise_similarity_kd, tc=c + 1, pool_kernel=2, max_block_elems=7),
        "local_pairwise_kd": pair(KF.local_pairwise_kd, tc=c + 2),
        "attention_transfer": pair(KF.attention_transfer, tc=1),
        "mimic_kd": pair(KF.mimic_kd),
        "channel_wise_kd": pair(KF.channel_wise_kd, "student_logits", "teacher_logits", temperature=4.0),
        "bpkd_edge_masks": Case(KF.bpkd_edge_masks, {"labels": labels(), "num_classes": c, "out_size": (h, w),
                                                     "edge_width": 3}),
        "bpkd_edge_loss": pair(KF.bpkd_edge_loss, "student_logits", "teacher_logits", edge_masks=edge),
        "bpkd_body_loss": pair(KF.bpkd_body_loss, "student_logits", "teacher_logits", edge_masks=edge),
        "bcd_boundary_affinity": Case(KF.bcd_boundary_affinity,
                                      {"boundary_prob": rand(n, 1, h, w).sigmoid().detach().requires_grad_(),
                                       "radius": radius}, ["boundary_prob"]),
        "bcd_affinity_valid_mask": Case(KF.bcd_affinity_valid_mask, {"height": h, "width": w, "radius": radius}),
        "boundary_kd": Case(KF.boundary_kd, {"student_affinity": rand(n, 8 * radius, h, w),
                                             "teacher_affinity": rand(n, 8 * radius, h, w, grad=False),
                                             "valid": KF.bcd_affinity_valid_mask(h, w, radius)},
                            ["student_affinity"], ["teacher_affinity"]),
        "context_relation_kd": pair(KF.context_relation_kd, tc=c + 1, max_block_elems=5),
        "gam": Case(KF.gam, {"feat": rand(n, c, h, w), "p": 2}, ["feat"]),
        "partial_l2": Case(KF.partial_l2, {"student": rand(n, h, w), "teacher": rand(n, h, w, grad=False)},
                           ["student"], ["teacher"]),
        "ppd_pixel_kd": pair(KF.ppd_pixel_kd, tc=c + 1),
        "ppd_pairwise_kd": pair(KF.ppd_pairwise_kd, tc=c + 1, grid=2),
        "wgan_critic_loss": Case(KF.wgan_critic_loss, {"d_student": rand(n, 1), "d_teacher": rand(n, 1)},
                                 ["d_student", "d_teacher"]),
        "gradient_penalty": Case(KF.gradient_penalty, {"critic": _Critic(c), "real": rand(n, c, h, w, grad=False),
                                                       "fake": rand(n, c, h, w), "condition": rand(n, 3, h, w, grad=False),
                                                       "generator": torch.Generator().manual_seed(0)}),
        "critic_objective": Case(KF.critic_objective, {"critic": _Critic(c), "real": rand(n, c, h, w, grad=False),
                                                       "fake": rand(n, c, h, w), "condition": rand(n, 3, h, w, grad=False),
                                                       "penalty_weight": 10.0, "generator": torch.Generator().manual_seed(0)}),
        "holistic_generator_loss": Case(KF.holistic_generator_loss, {"d_student": rand(n, 1)}, ["d_student"]),
        "labels_at": Case(KF.labels_at, {"labels": labels(), "size": (max(1, h // 2), w + 1)}),
        "class_prototypes": Case(KF.class_prototypes, {"feat": rand(n, c, h, w), "labels": labels(3, 2 * h, w),
                                                       "num_classes": 3}, ["feat"]),
        "ifv_map": Case(KF.ifv_map, {"feat": rand(n, c, h, w), "labels": labels(3), "num_classes": 3}, ["feat"]),
        "ifv_map_mse": Case(KF.ifv_map_mse, {"student_map": rand(n, h, w), "teacher_map": rand(n, h, w, grad=False),
                                             "valid_mask": mask(n, h, w)}, ["student_map"], ["teacher_map"]),
        "ifvd_kd": pair(KF.ifvd_kd, tc=c + 1, labels=labels(3), num_classes=3),
        "avg_pool2_of_bilinear_up2": Case(KF.avg_pool2_of_bilinear_up2, {"x": rand(n, c, h, w)}, ["x"]),
        "cirkd_minibatch_pair_kd": pair(KF.cirkd_minibatch_pair_kd, tc=c + 1),
        "cirkd_memory_kd": Case(KF.cirkd_memory_kd, {"student_embed": rand(embed_a, c), "teacher_embed": rand(embed_a, c, grad=False),
                                                     "memory": rand(embed_m, c, grad=False), "memory_mask": mask(embed_m),
                                                     "anchor_mask": mask(embed_a)},
                                ["student_embed"], ["teacher_embed", "memory"]),
    }


class _Critic(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels + 1, 1, 1)

    def forward(self, seg, image):  # any image size and channel count
        image = torch.nn.functional.interpolate(image.mean(1, keepdim=True), size=seg.shape[-2:])
        return self.conv(torch.cat([seg, image], 1)).flatten(1).mean(1)


PUBLIC = sorted(name for name, obj in inspect.getmembers(KF, inspect.isfunction)
                if not name.startswith("_") and obj.__module__ == KF.__name__)
NAMES = sorted(_cases(dict(n=1, c=1, h=1, w=1, seed=0, scale=1.0, all_ignore=False, empty_mask=False)))


# Public functions of kdlab.losses.functional that take no tensor (argument parsing), tested apart.
HELPERS = {"pool_kernel_pair"}


def test_every_public_function_has_a_case():
    assert sorted(set(PUBLIC) - HELPERS) == NAMES


@FAST
@given(kernel=st.one_of(st.integers(-2, 4), st.booleans(), st.none(), st.floats(0.5, 3),
                        st.lists(st.one_of(st.integers(-1, 4), st.booleans()), max_size=3)))
def test_pool_kernel_pair_is_a_pair_of_positive_ints_or_a_value_error(kernel):
    try:
        pair = KF.pool_kernel_pair(kernel)
    except ValueError as err:
        assert "pool_kernel" in str(err)
        return
    assert len(pair) == 2 and all(type(k) is int and k >= 1 for k in pair)


def _tensors(out) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


def _check_result(case: Case, out) -> None:
    """Finite floating outputs; their sum backpropagates finite gradients to ``case.grads`` only."""
    floats = [t for t in _tensors(out) if t.is_floating_point()]
    for t in floats:
        assert torch.isfinite(t).all(), t
    differentiable = [t for t in floats if t.requires_grad]
    if not differentiable:
        assert not case.grads
        return
    sum(t.sum() for t in differentiable).backward()
    for name in case.grads:
        grad = case.kwargs[name].grad
        assert grad is not None, f"{name} received no gradient"
        assert torch.isfinite(grad).all(), f"{name}: non-finite gradient"
    for name in case.constants:
        assert case.kwargs[name].grad is None, f"{name} is a constant but received a gradient"


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(d=sizes())
def test_valid_input_gives_a_finite_value_that_backpropagates(name, d):
    case = _cases(d)[name]
    _check_result(case, case.fn(**case.kwargs))


def _call_or_value_error(case: Case, corrupted: str) -> None:
    try:
        out = case.fn(**case.kwargs)
    except ValueError as err:
        assert corrupted in str(err), f"the error does not name {corrupted}: {err}"
        return
    _check_result(case, out)


def _tensor_args(case: Case) -> list[str]:
    return [k for k, v in case.kwargs.items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "bcd_affinity_valid_mask"])
@FAST
@given(d=sizes(), data=st.data())
def test_a_wrong_dtype_is_a_value_error_naming_it(name, d, data):
    case = _cases(d)[name]
    arg = data.draw(st.sampled_from(_tensor_args(case)))
    value = case.kwargs[arg].detach()
    if value.is_floating_point():
        dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool]))
    else:
        dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    case.kwargs[arg] = value.to(dtype)
    case.grads = tuple(g for g in case.grads if g != arg)
    case.constants = tuple(g for g in case.constants if g != arg)
    _call_or_value_error(case, arg)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "bcd_affinity_valid_mask"])
@FAST
@given(d=sizes(), data=st.data())
def test_a_wrong_shape_is_a_value_error_naming_it(name, d, data):
    case = _cases(d)[name]
    arg = data.draw(st.sampled_from(_tensor_args(case)))
    value = case.kwargs[arg].detach()
    how = data.draw(st.sampled_from(["drop", "add", "grow"]))
    if how == "drop" and value.dim() > 0:
        value = value[0]
    elif how == "add":
        value = value[None]
    else:
        dim = data.draw(st.integers(0, max(0, value.dim() - 1))) if value.dim() else 0
        value = torch.cat([value, value.narrow(dim, 0, 1)], dim) if value.dim() else value[None]
    case.kwargs[arg] = value.requires_grad_(case.kwargs[arg].requires_grad and value.is_floating_point())
    if not case.kwargs[arg].requires_grad:
        case.grads = tuple(g for g in case.grads if g != arg)
    _call_or_value_error(case, arg)


LABELLED = {"bpkd_edge_masks": "labels", "labels_at": "labels", "class_prototypes": "labels", "ifv_map": "labels",
            "ifvd_kd": "labels"}


@pytest.mark.parametrize("name", sorted(LABELLED))
@FAST
@given(d=sizes(), bad=st.sampled_from([-1, -7, 3, 4, 100, 254, 256]))
def test_out_of_range_labels_are_a_value_error_or_belong_to_no_class(name, d, bad):
    case = _cases(d)[name]
    labels = case.kwargs[LABELLED[name]].clone()
    labels[0, 0, 0] = bad + (case.kwargs.get("num_classes", 3) if bad > 0 else 0)
    case.kwargs[LABELLED[name]] = labels
    _call_or_value_error(case, "labels")


# ---------------------------------------------------------------- metrics


@st.composite
def label_maps(draw):
    n, h, w, k = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    label = torch.randint(0, k, (n, h, w), generator=g)
    ignore = torch.ones(n, h, w, dtype=torch.bool) if draw(st.booleans()) else torch.rand(n, h, w, generator=g) < 0.2
    return torch.randint(0, k, (n, h, w), generator=g), torch.where(ignore, IGNORE, label), k


def _scores_are_fractions_or_nan(scores: dict) -> None:
    for key in ("mIoU", "mAcc", "aAcc"):
        assert math.isnan(scores[key]) or 0 <= scores[key] <= 1


@FAST
@given(maps=label_maps(), width=st.integers(1, 4))
def test_metrics_on_valid_maps(maps, width):
    pred, label, k = maps
    cm = metrics.confusion_matrix(pred, label, k)
    assert cm.sum() == (label != IGNORE).sum()
    scores = metrics.scores_from_confusion(cm)
    _scores_are_fractions_or_nan(scores)
    if (label == IGNORE).all():
        assert math.isnan(scores["mIoU"])  # an empty set is NaN, as documented
    band = metrics.trimap_band(label, width)
    assert band.dtype == torch.bool and band.shape == label.shape and not (band & (label == IGNORE)).any()
    for value in (metrics.trimap_miou(pred, label, k, width), metrics.edge_pixel_accuracy(pred, label, width)):
        assert math.isnan(value) == (not band.any()) and (math.isnan(value) or 0 <= value <= 1)
    meter = metrics.SegmentationMeter(k, widths=(1, width), band_width=width)
    meter.update(pred, label)
    result = meter.compute()
    assert torch.equal(meter.whole, cm)
    assert result["mIoU"] == scores["mIoU"] or math.isnan(result["mIoU"]) and math.isnan(scores["mIoU"])


METRIC_CALLS = {
    "confusion_matrix": lambda p, lab, k: metrics.confusion_matrix(p, lab, k),
    "trimap_miou": lambda p, lab, k: metrics.trimap_miou(p, lab, k, 2),
    "edge_pixel_accuracy": lambda p, lab, k: metrics.edge_pixel_accuracy(p, lab, 2),
    "meter": lambda p, lab, k: metrics.SegmentationMeter(k, widths=(1,), band_width=1).update(p, lab),
}


@pytest.mark.parametrize("call", sorted(METRIC_CALLS))
@FAST
@given(maps=label_maps(), which=st.sampled_from(["pred", "label"]), data=st.data())
def test_metrics_reject_bad_maps_naming_them(call, maps, which, data):
    pred, label, k = maps
    fault = data.draw(st.sampled_from(["float", "bool", "drop", "add", "size"]
                                      + (["range"] if call != "edge_pixel_accuracy" else [])))
    bad = pred if which == "pred" else label
    bad = {"float": lambda t: t.float(), "bool": lambda t: t.bool(), "drop": lambda t: t[0], "add": lambda t: t[None],
           "size": lambda t: torch.cat([t, t[:, :1]], 1),
           "range": lambda t: torch.where(torch.ones_like(t, dtype=torch.bool), k if which == "pred" else -1, t)}[fault](bad)
    args = (bad, label) if which == "pred" else (pred, bad)
    with pytest.raises(ValueError) as err:
        METRIC_CALLS[call](*args, k)
    assert which in str(err.value)


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.0])
def test_metrics_reject_a_bad_class_count(num_classes):
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(label, label, num_classes)


def test_scores_reject_a_non_square_matrix():
    with pytest.raises(ValueError, match="cm"):
        metrics.scores_from_confusion(torch.zeros(2, 3))
