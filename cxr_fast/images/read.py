"""Read one radiograph as 8-bit grayscale, with errors that name the file (never a silent black image).

16-bit PNG/TIFF is windowed to 8 bits over the image's own range (or a percentile window), not truncated; a constant
16-bit image has no range and reads as all zeros. Every 8-bit mode is read as gray: RGB/CMYK/palette by luminance,
1-bit as 0/255; an alpha channel (RGBA, LA, PA, a palette's transparency) is ignored, never composited.
DICOM goes through `cxr_fast.images.dicom` (optional extra `cxr_fast[dicom]`).
A caller that will shrink the image (`shrink_to`) gets a JPEG decoded at a reduced DCT scale (1/2, 1/4, 1/8: the
smallest still at least the shrunk size), which skips most of the decoding work of a 3000 px radiograph.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_fast.errors import UserError, first_line
from cxr_fast.images.dicom import read_dicom_gray8
from cxr_fast.images.window import DEFAULT_MAX_PIXELS, ImageInfo, window_to_uint8


def _bit_depth(img: Image.Image) -> int:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    return 8


def _to_gray(img: Image.Image) -> Image.Image:
    """8-bit gray from any 8-bit mode. A palette goes through RGBA first: PIL's direct P -> L warns about (and
    otherwise ignores) a palette's transparency. Modes PIL cannot take to L directly (LAB, HSV, ...) go through RGB."""
    if img.mode == "L":
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    try:
        return img.convert("L")
    except ValueError:
        return img.convert("RGB").convert("L")


def shrunk_size(width: int, height: int, resize: int) -> tuple[int, int] | None:
    """(width, height) with the longest side `resize`, aspect kept; None when no shrink is due (0 or not smaller)."""
    if not resize or max(width, height) <= resize:
        return None
    s = resize / max(width, height)
    return (resize, max(1, round(height * s))) if width >= height else (max(1, round(width * s)), resize)


def read_gray8(
    path: str | Path, window: tuple[float, float] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    shrink_to: int = 0,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode `path` to a (H, W) uint8 array plus its original size and bit depth. Raises UserError naming the file.

    `shrink_to` > 0: the caller will shrink the image to that longest side (`shrunk_size` of the original size in
    the ImageInfo, not of the array's); a JPEG is then decoded at the smallest DCT scale still at least that size, so
    the array may be smaller than the original (never smaller than the shrunk size). Other formats are unaffected.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return read_dicom_gray8(path, window=window, max_pixels=max_pixels)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: image file is empty (0 bytes)")
    # max_pixels is the one guard. PIL's own is a process-wide limit (~89M pixels, a warning above it, an error at
    # twice it) that would refuse, with a confusing message, images that max_pixels allows: lift it to match.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it better
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise UserError(f"{path}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                                    f"(decompression-bomb guard; raise it with --max_pixels)")
                target = shrunk_size(w, h, shrink_to)
                if target is not None and img.format == "JPEG":
                    img.draft("L", target)  # DCT scaling: both sides stay >= target (PIL picks the scale)
                img.load()
                depth = _bit_depth(img)
                if depth > 8:
                    arr = window_to_uint8(np.asarray(img), window)
                else:
                    arr = np.asarray(_to_gray(img), dtype=np.uint8)
                    if window is not None:
                        arr = window_to_uint8(arr, window)
    except UserError:
        raise
    except Image.DecompressionBombError:  # above twice max_pixels: refused by PIL before the size check above
        raise UserError(f"{path}: image is above the limit of {max_pixels} pixels (decompression-bomb guard; "
                        f"raise it with --max_pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot decode image ({first_line(e, 300, with_type=True)})"
                        ) from None
    return np.ascontiguousarray(arr), ImageInfo(width=w, height=h, bit_depth=depth)
