"""What every image reader shares: the size guard, the decoded image's description, and 16-bit windowing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000  # refuse decompression-bomb-sized inputs above this many pixels


@dataclass
class ImageInfo:
    width: int
    height: int
    bit_depth: int


def window_to_uint8(a: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Map an integer/float image to uint8 over [lo, hi]: its own min..max, or percentiles (p_lo, p_hi) if given.

    An image with no range (hi <= lo: a constant image, or a window with equal percentiles) maps to all zeros: there
    is no contrast to show, and this never divides by zero."""
    a = a.astype(np.float64)
    if window is None:
        lo, hi = float(a.min()), float(a.max())
    else:
        lo, hi = (float(v) for v in np.percentile(a, window))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
