import math

import pytest
import torch

from kdlab.metrics import (
    SegmentationMeter,
    confusion_matrix,
    edge_pixel_accuracy,
    scores_from_confusion,
    trimap_band,
    trimap_miou,
)

IGNORE = 255
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=[torch.uint8, torch.int64], ids=["uint8", "int64"])
def dtype(request):
    return request.param


def random_maps(num_classes, shape=(2, 9, 11), ignore_fraction=0.15, seed=0):
    """Random pred / label with some ignore labels."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes, shape, generator=generator)
    label[torch.rand(shape, generator=generator) < ignore_fraction] = IGNORE
    pred = torch.randint(0, num_classes, shape, generator=generator)
    return pred, label


def blocky_maps(num_classes, seed=0):
    """Pred / label made of 5×6 blocks (plus a few ignore pixels), so bands of small width leave a body."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (2, 3, 3), generator=generator)
    label = coarse.repeat_interleave(5, dim=1).repeat_interleave(6, dim=2)[:, :13, :17].clone()
    label[torch.rand(label.shape, generator=generator) < 0.05] = IGNORE
    pred = label.clone()
    flip = torch.rand(label.shape, generator=generator) < 0.3
    pred[flip] = torch.randint(0, num_classes, label.shape, generator=generator)[flip]
    pred[pred == IGNORE] = 0
    return pred, label


def loop_confusion(pred, label, num_classes, keep=None):
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for index in range(label.numel()):
        true, guess = int(label.flatten()[index]), int(pred.flatten()[index])
        if true != IGNORE and (keep is None or bool(keep.flatten()[index])):
            cm[true, guess] += 1
    return cm


def loop_band(label, width):
    """Band by definition: valid pixels within chessboard distance < width of a boundary pixel."""
    n, h, w = label.shape
    label = label.tolist()

    def is_boundary(b, i, j):
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            y, x = i + di, j + dj
            if 0 <= y < h and 0 <= x < w and label[b][y][x] != IGNORE and label[b][y][x] != label[b][i][j]:
                return True
        return False

    boundary = [(b, i, j) for b in range(n) for i in range(h) for j in range(w) if is_boundary(b, i, j)]
    band = torch.zeros(n, h, w, dtype=torch.bool)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                near = any(bb == b and max(abs(i - y), abs(j - x)) < width for bb, y, x in boundary)
                band[b, i, j] = near and label[b][i][j] != IGNORE
    return band


def loop_miou(pred, label, num_classes, keep):
    """Mean over classes present in label or pred (on kept, valid pixels) of TP / union."""
    ious = []
    for c in range(num_classes):
        tp = union = 0
        for p, t, k in zip(pred.flatten().tolist(), label.flatten().tolist(), keep.flatten().tolist()):
            if k and t != IGNORE:
                tp += p == c and t == c
                union += p == c or t == c
        if union:
            ious.append(tp / union)
    return sum(ious) / len(ious) if ious else math.nan


def square_label():
    """20×20 image of class 0 with a 6×6 square of class 1 at rows / columns 7..12."""
    label = torch.zeros(1, 20, 20, dtype=torch.int64)
    label[:, 7:13, 7:13] = 1
    return label


def assert_scores_equal(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert first[key] == pytest.approx(second[key], nan_ok=True), key


def test_confusion_matrix_matches_loop_count(device, dtype):
    pred, label = random_maps(num_classes=4)
    cm = confusion_matrix(pred.to(device, dtype), label.to(device, dtype), num_classes=4)
    assert cm.dtype == torch.int64 and cm.device.type == device
    assert torch.equal(cm.cpu(), loop_confusion(pred, label, 4))


def test_confusion_matrix_mask_restricts_counted_pixels(device):
    pred, label = random_maps(num_classes=3, seed=1)
    keep = torch.rand(label.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    cm = confusion_matrix(pred.to(device), label.to(device), 3, mask=keep.to(device))
    assert torch.equal(cm.cpu(), loop_confusion(pred, label, 3, keep))


@pytest.mark.parametrize(
    "pred_value, label_value, message",
    [(0, 4, "label"), (4, 0, "pred"), (-1, 0, "pred")],
)
def test_out_of_range_classes_raise(pred_value, label_value, message):
    pred, label = random_maps(num_classes=4)
    pred[0, 3, 5], label[0, 3, 5] = pred_value, label_value
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred, label, num_classes=4)
    meter = SegmentationMeter(num_classes=4)
    with pytest.raises(ValueError, match=message):
        meter.update(pred, label)


def test_bad_inputs_raise_naming_the_argument():
    pred, label = random_maps(num_classes=4)
    with pytest.raises(ValueError, match="label"):
        confusion_matrix(pred, label.float(), num_classes=4)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(pred[:, :, :-1], label, num_classes=4)
    with pytest.raises(ValueError, match="mask"):
        confusion_matrix(pred, label, num_classes=4, mask=torch.ones_like(label))
    with pytest.raises(ValueError, match="width"):
        trimap_band(label, 0)


def test_square_band_counts_by_hand(dtype):
    label = square_label().to(dtype)
    # Boundary pixels: the square's own outer ring (6·6 − 4·4 = 20) and the class-0 pixels
    # 4-adjacent to it (4 sides · 6 = 24; the diagonal corners are not 4-adjacent):
    # the 8×8 block at rows 6..13 minus its 4 corners minus the inner 4×4, 64 − 4 − 16 = 44.
    assert int(trimap_band(label, 1).sum()) == 44
    # w = 2 adds chessboard distance 1: outside, the 10×10 block at rows 5..14 minus its
    # 4 corners (their nearest boundary pixel, e.g. (6, 7) for (5, 5), is 2 away); inside,
    # the central 2×2 (rows 9..10) stays 2 away from the ring at rows 7 / 12: 100 − 4 − 4 = 92.
    band = trimap_band(label, 2)
    assert int(band.sum()) == 92
    assert not band[0, 5, 5] and band[0, 5, 6] and not band[0, 9, 9] and band[0, 8, 8]
    # w = 3: the 12×12 block at rows 4..15 minus its 4 corners ((4, 4) is 3 away from (6, 7)),
    # the whole inside covered: 144 − 4 = 140.
    band = trimap_band(label, 3)
    assert int(band.sum()) == 140
    assert not band[0, 4, 4] and band[0, 4, 5] and band[0, 9, 9]


@pytest.mark.parametrize("width", [1, 2, 4])
def test_band_matches_definition_on_random_labels(width, device):
    _, label = random_maps(num_classes=3, seed=3)
    band = trimap_band(label.to(device), width)
    assert band.dtype == torch.bool and band.device.type == device
    assert torch.equal(band.cpu(), loop_band(label, width))


def ignore_ring_label():
    """The square of class 1 surrounded by a 1-pixel ignore ring (rows / columns 6 and 13)."""
    label = square_label()
    label[:, 6:14, 6:14] = IGNORE
    label[:, 7:13, 7:13] = 1
    return label


def test_ignore_ring_seeds_the_band_but_is_never_scored():
    label = ignore_ring_label()
    # Only the 28 ring pixels are boundary pixels (both of their valid neighbours differ from
    # 255); they are ignore pixels, so the band of width 1 is empty and its metrics are NaN.
    assert int(trimap_band(label, 1).sum()) == 0
    pred = torch.where(label == IGNORE, 0, label)
    assert math.isnan(trimap_miou(pred, label, 2, width=1))
    assert math.isnan(edge_pixel_accuracy(pred, label, width=1))
    # Width 2: the ring dilated by 3×3 is the 10×10 block at rows 5..14 minus the inner 4×4
    # (84 pixels); without the 28 ring pixels: 20 square pixels + 36 class-0 pixels = 56.
    band = trimap_band(label, 2)
    assert int(band.sum()) == 56
    assert not band[label == IGNORE].any()
    # pred is right on every valid pixel and wrong (class 0 / 1) on the ignore ring.
    for wrong_class in (0, 1):
        pred = torch.where(label == IGNORE, wrong_class, label)
        assert trimap_miou(pred, label, 2, width=2) == 1.0
        assert edge_pixel_accuracy(pred, label, width=2) == 1.0


def test_scores_by_hand_with_absent_classes():
    label = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    scores = scores_from_confusion(confusion_matrix(pred, label, num_classes=3), class_names=["a", "b", "c"])
    # Rows label, columns pred: [[1, 1, 0], [0, 2, 0], [0, 0, 0]]; class 2 absent from both.
    assert scores["IoU"][:2] == pytest.approx([1 / 2, 2 / 3]) and math.isnan(scores["IoU"][2])
    assert scores["Acc"][:2] == pytest.approx([1 / 2, 2 / 2]) and math.isnan(scores["Acc"][2])
    assert scores["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores["mAcc"] == pytest.approx((1 / 2 + 1) / 2)
    assert scores["aAcc"] == pytest.approx(3 / 4)
    assert scores["classes"] == ["a", "b", "c"]


def test_class_only_predicted_has_zero_iou():
    label = torch.tensor([[[0, 0, 0, 1]]])
    pred = torch.tensor([[[0, 2, 0, 1]]])
    scores = scores_from_confusion(confusion_matrix(pred, label, num_classes=3))
    # Class 2 never in the label: IoU 0 / (0 + 1 − 0) = 0, accuracy 0 / 0 undefined.
    assert scores["IoU"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert math.isnan(scores["Acc"][2])
    assert scores["mIoU"] == pytest.approx((2 / 3 + 1) / 3)


def test_empty_confusion_gives_nan():
    scores = scores_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(scores[key]) for key in ("mIoU", "mAcc", "aAcc"))
    assert all(math.isnan(value) for value in scores["IoU"] + scores["Acc"])


@pytest.mark.parametrize("width", [1, 3])
def test_trimap_scores_match_loop(width, dtype):
    pred, label = blocky_maps(num_classes=3, seed=4)
    band = loop_band(label, width)
    assert trimap_miou(pred.to(dtype), label.to(dtype), 3, width) == pytest.approx(loop_miou(pred, label, 3, band))
    expected_accuracy = int(((pred == label) & band).sum()) / int(band.sum())
    assert edge_pixel_accuracy(pred.to(dtype), label.to(dtype), width) == pytest.approx(expected_accuracy)


def test_meter_matches_functional_metrics(device):
    pred, label = blocky_maps(num_classes=4, seed=5)
    pred, label = pred.to(device), label.to(device)
    meter = SegmentationMeter(num_classes=4, widths=(1, 2, 3), band_width=2)
    meter.update(pred, label)
    result = meter.compute()
    assert meter.whole.device.type == device
    whole = scores_from_confusion(confusion_matrix(pred, label, 4))
    assert result["mIoU"] == pytest.approx(whole["mIoU"])
    assert result["aAcc"] == pytest.approx(whole["aAcc"])
    assert result["trimap_mIoU"] == pytest.approx(trimap_miou(pred, label, 4, 2))
    assert result["edge_pixel_accuracy"] == pytest.approx(edge_pixel_accuracy(pred, label, 2))
    body = (label != IGNORE) & ~trimap_band(label, 2)
    assert body.any()
    assert result["body_mIoU"] == pytest.approx(loop_miou(pred.cpu(), label.cpu(), 4, body.cpu()))
    assert result["trimap_curve"] == pytest.approx({w: trimap_miou(pred, label, 4, w) for w in (1, 2, 3)})


def test_meter_two_batches_equal_one_concatenated_call(dtype):
    first, second = blocky_maps(num_classes=4, seed=6), blocky_maps(num_classes=4, seed=7)
    split = SegmentationMeter(num_classes=4)
    split.update(first[0].to(dtype), first[1].to(dtype))
    split.update(second[0].to(dtype), second[1].to(dtype))
    joined = SegmentationMeter(num_classes=4)
    joined.update(torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    assert_scores_equal(split.compute(), joined.compute())
    assert list(split.compute()["trimap_curve"]) == [1, 2, 3, 5, 7, 10, 15, 20]


def test_meter_reset_forgets_counts():
    pred, label = blocky_maps(num_classes=4, seed=8)
    meter = SegmentationMeter(num_classes=4)
    meter.update(pred, label)
    meter.reset()
    assert math.isnan(meter.compute()["mIoU"])
    meter.update(pred, label)
    fresh = SegmentationMeter(num_classes=4)
    fresh.update(pred, label)
    assert_scores_equal(meter.compute(), fresh.compute())
