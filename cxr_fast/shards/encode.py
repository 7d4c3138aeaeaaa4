"""Per-image work of cxr-shard (runs in worker processes): decode, window to 8 bits, shrink, encode.

Kept apart from the writer so a spawned worker imports only numpy, PIL and `images.py`.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8, shrunk_size


@dataclass(frozen=True)
class EncodeOptions:
    resize: int              # longest side after shrinking; 0 = keep the original size
    image_format: str        # "jpg" or "png"
    quality: int             # JPEG quality
    window: tuple[float, float] | None
    max_pixels: int


class Encoded(NamedTuple):
    """Where an encoded image lies in its spool chunk file, and what the json component records about it."""

    offset: int
    nbytes: int
    height: int        # stored size
    width: int
    orig_width: int    # before windowing and --resize
    orig_height: int
    bit_depth: int


def shrink(arr: np.ndarray, resize: int, orig_size: tuple[int, int] | None = None) -> Image.Image:
    """Scale so the longest side is `resize` (never up), with an antialiasing Lanczos filter.

    `orig_size` (width, height): the image's size before a reduced-scale JPEG decode (`read_gray8(shrink_to=)`);
    the output size is computed from it, so it is the same whether or not the decoder already scaled down."""
    img = Image.fromarray(arr)
    w, h = orig_size or (arr.shape[1], arr.shape[0])
    size = shrunk_size(w, h, resize)
    if size is not None and size != img.size:
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


def hash_file(path: str | Path) -> str | None:
    """sha256 of a file, None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def check_file(task: tuple[int, str, int, str]) -> tuple[int, bool]:
    """(id, whether the file at path has the recorded size and sha256): a pool task, so checks run in parallel."""
    tid, path, nbytes, sha = task
    p = Path(path)
    return tid, p.is_file() and p.stat().st_size == nbytes and hash_file(p) == sha


def encode_chunk(task: tuple[int, list[tuple[int, str]], str, EncodeOptions]):
    """Encode one chunk of images into one spool file. Returns (chunk id, records, spool bytes, spool sha256) with
    one record per image: (job, Encoded, None) for a good image, (job, None, reason) for one that cannot be read.
    """
    chunk_id, items, spool_path, opts = task
    out = []
    h, pos = hashlib.sha256(), 0
    # a private name, renamed when complete: an encoder orphaned by a killed run cannot write into this run's chunk
    tmp = f"{spool_path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            for job, path in items:
                try:
                    arr, info = read_gray8(path, window=opts.window, max_pixels=opts.max_pixels,
                                           shrink_to=opts.resize)
                except UserError as e:
                    out.append((job, None, str(e).removeprefix(f"{Path(path)}: ")))
                    continue
                img = shrink(arr, opts.resize, (info.width, info.height))
                data = encode(img, opts)
                out.append((job, Encoded(pos, len(data), img.height, img.width, info.width, info.height,
                                         info.bit_depth), None))
                f.write(data)
                h.update(data)
                pos += len(data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk (ENOSPC) leaves no half chunk behind
        raise
    os.replace(tmp, spool_path)
    return chunk_id, out, pos, h.hexdigest()
