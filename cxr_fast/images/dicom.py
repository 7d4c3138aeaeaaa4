"""Read a DICOM radiograph as 8-bit grayscale the way a viewer shows it (optional extra `cxr_fast[dicom]`).

Order, as in DICOM PS3.3 C.11: stored values -> Modality LUT (rescale slope/intercept or LUT) -> VOI LUT or
window centre/width -> 8 bits over the VOI's output range -> MONOCHROME1 inverted so that bone is bright.
A percentile `window` replaces the file's own VOI (as for 16-bit PNGs). Without a VOI, the image's own min..max
is used. Every failure is a UserError that names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_fast.errors import UserError
from cxr_fast.images.window import ImageInfo, window_to_uint8

# Codec packages by transfer syntax UID (what pydicom needs to decode it), for the error a user sees.
_JPEG = "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
_J2K = "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)"
_HTJ2K = "pylibjpeg pylibjpeg-openjpeg"
_CODECS = {
    "1.2.840.10008.1.2.4.50": _JPEG, "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG, "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.90": _J2K, "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _HTJ2K, "1.2.840.10008.1.2.4.202": _HTJ2K, "1.2.840.10008.1.2.4.203": _HTJ2K,
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


def _import_pydicom():
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise UserError("reading DICOM needs pydicom: pip install cxr_fast[dicom]") from None
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return pydicom, InvalidDicomError, apply_modality_lut, apply_voi_lut


def _has_decoder(tsyntax) -> bool:
    """Whether pydicom has a working decoder for this transfer syntax (unknown with pydicom 2: say no)."""
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(tsyntax).is_available)
    except Exception:  # noqa: BLE001 - pydicom 2, or a syntax pydicom has no decoder class for
        return False


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0]}" if s else type(e).__name__


def _read_dataset(path: Path):
    pydicom, InvalidDicomError, _, _ = _import_pydicom()
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass  # no 128-byte preamble + 'DICM': old files omit it, so try once more without the check
    except Exception as e:  # noqa: BLE001 - a truncated or garbled file can fail anywhere in pydicom's parser
        raise UserError(f"{path}: not a readable DICOM file ({_first_line(e)})") from None
    try:
        ds = pydicom.dcmread(path, force=True)
        ok = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:  # noqa: BLE001 - forced parsing of a non-DICOM file fails in arbitrary ways
        ok = False
    if not ok:
        raise UserError(f"{path}: not a DICOM file (no DICOM header or pixel data)")
    return ds


def _voi_range(ds, apply_voi_lut, use_lut: bool) -> tuple[float, float]:
    """Output range of the file's VOI transform, found by pushing its extreme inputs through pydicom's own code."""
    if use_lut:
        desc = ds.VOILUTSequence[0].LUTDescriptor
        n_entries, first = (desc[0] or 1 << 16), desc[1]
        probe = np.arange(first, first + n_entries, dtype=np.int64)
    else:
        probe = np.array([-1e300, 1e300])  # LINEAR clips to (y_min, y_max); SIGMOID tends to them
    with np.errstate(over="ignore"):
        out = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    return float(out.min()), float(out.max())


def _to_gray(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        # pydicom returns RGB for these by default; a scanned film saved in colour is still a radiograph
        return arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    raise UserError(f"{path}: unsupported DICOM pixel layout (shape {arr.shape}, {photometric}); "
                    f"expected a single-frame grayscale image")


def read_dicom_gray8(
    path: str | Path, window: tuple[float, float] | None = None, max_pixels: int = 100_000_000
) -> tuple[np.ndarray, ImageInfo]:
    """Decode a DICOM file to (H, W) uint8 as displayed, plus ImageInfo(width, height, bit_depth=BitsStored)."""
    path = Path(path)
    _, _, apply_modality_lut, apply_voi_lut = _import_pydicom()
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: image file is empty (0 bytes)")
    ds = _read_dataset(path)
    if "PixelData" not in ds:
        raise UserError(f"{path}: DICOM file has no pixel data (truncated, or not an image object)")
    try:
        h, w = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    except (AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: DICOM image header is incomplete ({_first_line(e)})") from None
    if w * h > max_pixels:
        raise UserError(f"{path}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                        f"(decompression-bomb guard; raise it with --max_pixels)")
    if frames != 1:
        raise UserError(f"{path}: DICOM has {frames} frames; expected a single-frame radiograph")

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises several types for missing codecs and bad data
        if tsyntax is not None and tsyntax.is_compressed:
            codec = _CODECS.get(str(tsyntax), "pylibjpeg with its plugins (or python-gdcm)")
            if _has_decoder(tsyntax):
                raise UserError(f"{path}: corrupt {tsyntax.name} pixel data ({_first_line(e)}); if the file opens "
                                f"elsewhere, try another codec: pip install {codec}") from None
            raise UserError(f"{path}: cannot decode {tsyntax.name} pixel data ({_first_line(e)}); "
                            f"install a codec: pip install {codec}") from None
        raise UserError(f"{path}: cannot decode DICOM pixel data ({_first_line(e)})") from None
    gray = _to_gray(stored, ds, path)
    if gray.shape != (h, w):
        raise UserError(f"{path}: DICOM pixel data is {gray.shape}, header says {h}x{w}")

    try:
        values = apply_modality_lut(gray, ds) if gray is stored else gray
        if window is not None:
            out = window_to_uint8(values, window)
        else:
            lut = ds.get("VOILUTSequence")
            has_lut = bool(lut) and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]
            has_window = "WindowCenter" in ds and "WindowWidth" in ds
            if gray is stored and (has_lut or has_window):
                if has_lut and not np.issubdtype(values.dtype, np.integer):
                    values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
                lo, hi = _voi_range(ds, apply_voi_lut, use_lut=has_lut)
                voi = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
                out = np.zeros((h, w), np.uint8) if hi <= lo else \
                    np.clip(np.rint((voi - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
            else:
                out = window_to_uint8(values, None)
    except UserError:
        raise
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError) as e:
        raise UserError(f"{path}: invalid DICOM LUT/window attributes ({_first_line(e)})") from None
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: the lowest value is displayed white
    return np.ascontiguousarray(out), ImageInfo(width=w, height=h, bit_depth=bits)
