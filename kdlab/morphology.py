"""Square-window grey-scale morphology (max / min filters) for the whole package.

One implementation for BPKD's edge masks (``kdlab.losses.functional``), the trimap band of the
boundary metrics (``kdlab.metrics``) and the ignore rings of the embedded benchmark
(``kdlab.data.synthetic``). A ``k×k`` max filter is separable: a window max along the rows,
then along the columns. Each 1-D window max is built by doubling (``max(x[i:i+2s]) =
max(max(x[i:i+s]), max(x[i+s:i+2s]))``), so a window of side ``k`` costs about ``2·log2(k)``
element-wise maxima per pixel instead of ``k²`` comparisons, and the result is exactly the
maximum (no arithmetic is done on the values). Everything runs on the input's device, over any
leading (batch, class) dimensions at once, for float, integer and boolean tensors alike.

Window: ``before = (size − 1) // 2`` pixels before each pixel and ``size // 2`` after it (so
even sizes work; odd sizes are centred), along both spatial axes (the last two dimensions).
"""

from __future__ import annotations

import torch

__all__ = ["block_max", "dilate", "erode", "window_max_1d"]


def _lowest(x: torch.Tensor):
    if x.dtype == torch.bool:
        return False
    if x.is_floating_point():
        return float("-inf")
    return torch.iinfo(x.dtype).min


def _highest(x: torch.Tensor):
    if x.dtype == torch.bool:
        return True
    if x.is_floating_point():
        return float("inf")
    return torch.iinfo(x.dtype).max


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _window_1d(x: torch.Tensor, size: int, dim: int, pad_value, reduce) -> torch.Tensor:
    """``reduce`` (``torch.maximum`` or ``torch.minimum``) over the window
    ``[i − (size−1)//2, i + size//2]`` along ``dim``; positions outside the tensor count as
    ``pad_value``. Same shape as ``x``."""
    if size == 1:
        return x
    dim = dim % x.dim()
    length = x.shape[dim]
    before, after = (size - 1) // 2, size // 2
    pad_shape = list(x.shape)
    pieces = []
    if before:
        pad_shape[dim] = before
        pieces.append(x.new_full(pad_shape, pad_value))
    pieces.append(x)
    if after:
        pad_shape[dim] = after
        pieces.append(x.new_full(pad_shape, pad_value))
    current = torch.cat(pieces, dim)  # length + size − 1 along dim
    # Invariant: current[i] reduces the `span` padded entries starting at i.
    span = 1
    while 2 * span <= size:
        n = current.shape[dim] - span
        current = reduce(current.narrow(dim, 0, n), current.narrow(dim, span, n))
        span *= 2
    if span < size:  # two overlapping windows of `span` cover one of `size`
        return reduce(current.narrow(dim, 0, length), current.narrow(dim, size - span, length))
    return current.narrow(dim, 0, length)


def window_max_1d(x: torch.Tensor, size: int, dim: int, pad_value) -> torch.Tensor:
    """Max over the window ``[i − (size−1)//2, i + size//2]`` along ``dim``; positions outside
    the tensor count as ``pad_value``. Same shape as ``x``."""
    _check_size(size)
    return _window_1d(x, size, dim, pad_value, torch.maximum)


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor with at least 2 dimensions (…×H×W), got {getattr(x, 'shape', x)!r}")


def dilate(x: torch.Tensor, size: int, pad_value=None) -> torch.Tensor:
    """Max filter over a ``size×size`` window of the last two dimensions (see the module doc).

    Outside the image counts as ``pad_value``: by default the dtype's lowest value (``False``,
    ``−inf``), so the border adds nothing; for masks of zeros and ones, 0 is the same.
    """
    _check_size(size)
    _check_x(x)
    pad = _lowest(x) if pad_value is None else pad_value
    return _window_1d(_window_1d(x, size, -1, pad, torch.maximum), size, -2, pad, torch.maximum)


def erode(x: torch.Tensor, size: int, pad_value=None) -> torch.Tensor:
    """Min filter over the same window as ``dilate``. Outside the image counts as ``pad_value``:
    by default the dtype's highest value (``True``, ``+inf``), so the image border does not eat
    into a region; for masks of zeros and ones, 1 is the same."""
    _check_size(size)
    _check_x(x)
    pad = _highest(x) if pad_value is None else pad_value
    return _window_1d(_window_1d(x, size, -1, pad, torch.minimum), size, -2, pad, torch.minimum)


def block_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max over non-overlapping ``size×size`` blocks of the last two dimensions, keeping partial
    blocks at the bottom and right edges: ``max_pool2d(x, size, stride=size, ceil_mode=True)``,
    bit for bit, as ``size − 1`` element-wise maxima of strided views per axis (several times
    faster than ``max_pool2d`` on the CPU). On exact ties the gradient is shared between the tied
    entries (``max_pool2d`` gives it to the first), so use it where no gradient is needed (teacher
    maps) or ties do not matter."""
    _check_size(size)
    _check_x(x)
    if size == 1:
        return x
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % size, -width % size
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=_lowest(x))
    rows = x[..., 0::size, :]
    for a in range(1, size):
        rows = torch.maximum(rows, x[..., a::size, :])
    out = rows[..., 0::size]
    for a in range(1, size):
        out = torch.maximum(out, rows[..., a::size])
    return out
