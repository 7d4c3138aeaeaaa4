"""Per-image work of cxr-shard (runs in worker processes): decode, window to 8 bits, shrink, encode.

Kept apart from the writer so a spawned worker imports only numpy, PIL and `images.py`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8


@dataclass(frozen=True)
class EncodeOptions:
    resize: int              # longest side after shrinking; 0 = keep the original size
    image_format: str        # "jpg" or "png"
    quality: int             # JPEG quality
    window: tuple[float, float] | None
    max_pixels: int


def shrink(arr: np.ndarray, resize: int) -> Image.Image:
    """Scale so the longest side is `resize` (never up), with an antialiasing Lanczos filter."""
    img = Image.fromarray(arr)
    h, w = arr.shape
    if resize and max(h, w) > resize:
        s = resize / max(h, w)
        size = (resize, max(1, round(h * s))) if w >= h else (max(1, round(w * s)), resize)
        # reducing_gap=2: for shrinks of 4x and more, an exact box reduction by an integer factor first, then
        # Lanczos over at least 2x; visually the same as one full Lanczos pass and ~2x faster on 2-3k px radiographs.
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return img


def encode(img: Image.Image, opts: EncodeOptions) -> bytes:
    """8-bit grayscale ("L") baseline JPEG (what nvJPEG's hardware decoder takes) or PNG."""
    assert img.mode == "L"
    buf = io.BytesIO()
    if opts.image_format == "jpg":
        img.save(buf, "JPEG", quality=opts.quality, progressive=False, optimize=False)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def worker_init() -> None:
    """Pool initializer: die with the parent (Linux), so a `kill -9`ed cxr-shard leaves no orphan encoders behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def encode_chunk(task: tuple[int, list[tuple[int, str]], str, EncodeOptions]) -> tuple[int, list[tuple]]:
    """Encode one chunk of images into one spool file. Returns (chunk id, one record per image):

    (job, (offset, nbytes, height, width, orig_width, orig_height, bit_depth), None) for a good image,
    (job, None, reason) for one that cannot be read.
    """
    chunk_id, items, spool_path, opts = task
    out = []
    with open(spool_path, "wb") as f:
        for job, path in items:
            try:
                arr, info = read_gray8(path, window=opts.window, max_pixels=opts.max_pixels)
            except UserError as e:
                msg = str(e)
                prefix = f"{Path(path)}: "
                out.append((job, None, msg.removeprefix(prefix)))
                continue
            img = shrink(arr, opts.resize)
            data = encode(img, opts)
            out.append((job, (f.tell(), len(data), img.height, img.width, info.width, info.height, info.bit_depth),
                        None))
            f.write(data)
    return chunk_id, out
