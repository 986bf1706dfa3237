"""`kdlab.morphology`: separable square-window max / min filters, bit-identical to the three
implementations they replace (BPKD's edge masks, the trimap band, the synthetic ignore rings)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.data import synthetic
from kdlab.losses import functional as K
from kdlab.metrics import trimap_band
from kdlab.morphology import dilate, erode


# ---- the replaced implementations, kept here as references -------------------------------------

def old_bpkd_dilate(masks, size):
    before, after = (size - 1) // 2, size // 2
    return F.max_pool2d(F.pad(masks, (before, after, before, after), value=0.0), kernel_size=size, stride=1)


def old_bpkd_erode(masks, size):
    return 1.0 - old_bpkd_dilate(1.0 - masks, size)


def old_bpkd_edge_masks(labels, num_classes, out_size, edge_width=7, ignore_index=255):
    valid = labels != ignore_index
    classes = torch.arange(num_classes).view(1, -1, 1, 1)
    one_hot = ((labels.unsqueeze(1) == classes) & valid.unsqueeze(1)).float()
    edges = old_bpkd_dilate(one_hot, edge_width) - old_bpkd_erode(one_hot, edge_width)
    return F.adaptive_avg_pool2d(edges, out_size)


def old_metrics_dilate(mask, width):
    dilated = F.max_pool2d(mask[:, None].float(), kernel_size=2 * width - 1, stride=1, padding=width - 1)
    return dilated[:, 0] > 0


def old_synthetic_dilate(mask, steps=1):
    for _ in range(steps):
        padded = np.pad(mask, 1)
        h, w = mask.shape
        mask = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                mask |= padded[dy:dy + h, dx:dx + w]
    return mask


def loop_max_filter(x, size, pad_value):
    """The definition, one window at a time."""
    before, after = (size - 1) // 2, size // 2
    h, w = x.shape[-2:]
    padded = F.pad(x.double(), (before, after, before, after), value=float(pad_value))
    out = torch.empty(x.shape, dtype=torch.double)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = padded[..., i:i + size, j:j + size].amax((-2, -1))
    return out.to(x.dtype)


# ---- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8, 13])
def test_dilate_and_erode_match_the_window_definition(size):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, 9, 12, generator=gen)
    assert torch.equal(dilate(x, size), loop_max_filter(x, size, float("-inf")))
    assert torch.equal(erode(x, size), -loop_max_filter(-x, size, float("-inf")))
    assert torch.equal(dilate(x, size, pad_value=0.0), loop_max_filter(x, size, 0.0))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float16])
def test_other_dtypes_and_a_window_larger_than_the_image(dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 5, 4, generator=gen) * 5).to(dtype)
    for size in (3, 9):
        ref = loop_max_filter(x.double(), size, float("-inf")).to(dtype)
        assert torch.equal(dilate(x, size), ref)
        assert dilate(x, size).dtype == dtype
    assert torch.equal(erode(x, 3), loop_max_filter(-x.double(), 3, float("-inf")).neg().to(dtype))


@pytest.mark.parametrize("size", [1, 2, 3, 6, 7, 9])
def test_binary_masks_match_the_old_bpkd_max_pool_form(size):
    gen = torch.Generator().manual_seed(size)
    masks = (torch.rand(3, 4, 17, 21, generator=gen) < 0.3).float()
    assert torch.equal(dilate(masks, size, pad_value=0.0), old_bpkd_dilate(masks, size))
    assert torch.equal(erode(masks, size, pad_value=1.0), old_bpkd_erode(masks, size))
    assert torch.equal(dilate(masks.bool(), size).float(), old_bpkd_dilate(masks, size))
    assert torch.equal(erode(masks.bool(), size).float(), old_bpkd_erode(masks, size))


@pytest.mark.parametrize("edge_width", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("out_size", [(16, 16), (9, 11), (64, 48)])
def test_bpkd_edge_masks_bit_identical_to_the_old_implementation(edge_width, out_size):
    gen = torch.Generator().manual_seed(edge_width)
    # blocky labels (regions with boundaries) plus scattered ignore pixels
    labels = torch.randint(0, 5, (3, 8, 6), generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[torch.rand(labels.shape, generator=gen) < 0.05] = 255
    new = K.bpkd_edge_masks(labels, 5, out_size, edge_width=edge_width)
    assert torch.equal(new, old_bpkd_edge_masks(labels, 5, out_size, edge_width=edge_width))


@pytest.mark.parametrize("width", [1, 2, 3, 7, 20])
def test_trimap_band_bit_identical_to_the_old_max_pool_form(width):
    gen = torch.Generator().manual_seed(width)
    mask = torch.rand(2, 33, 40, generator=gen) < 0.02
    from kdlab.metrics import _dilate
    assert torch.equal(_dilate(mask, width), old_metrics_dilate(mask, width))
    label = torch.randint(0, 3, (2, 5, 6), generator=gen).repeat_interleave(7, 1).repeat_interleave(7, 2)
    valid = label != 255
    band = trimap_band(label, width)
    assert band.dtype == torch.bool and band.shape == label.shape
    assert torch.equal(band, _dilate(_boundary(label), width) & valid)


def _boundary(label):
    from kdlab.metrics import _boundary_pixels
    return _boundary_pixels(label, 255)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_synthetic_rings_bit_identical_to_the_old_numpy_loop(steps):
    rng = np.random.default_rng(steps)
    for _ in range(5):
        mask = rng.random((37, 29)) < rng.uniform(0.01, 0.6)
        assert synthetic._dilate(mask, steps).dtype == np.bool_
        assert np.array_equal(synthetic._dilate(mask, steps), old_synthetic_dilate(mask, steps))
        assert np.array_equal(synthetic._erode(mask, steps), ~old_synthetic_dilate(~mask, steps))


def test_runs_on_the_input_device_without_leaving_it():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(2, 3, 20, 20, device=device) < 0.2
    out = dilate(x, 7)
    assert out.device == x.device
    assert torch.equal(out.cpu(), dilate(x.cpu(), 7))


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        dilate(torch.zeros(3, 3), 0)
    with pytest.raises(ValueError, match="size"):
        erode(torch.zeros(3, 3), True)
    with pytest.raises(ValueError, match="2 dimensions"):
        dilate(torch.zeros(3), 3)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (1, 5)])
def test_block_max_is_ceil_mode_max_pool_bit_for_bit(size, shape):
    from kdlab.morphology import block_max

    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(size))
    assert torch.equal(block_max(x, size), F.max_pool2d(x, size, size, ceil_mode=True))
