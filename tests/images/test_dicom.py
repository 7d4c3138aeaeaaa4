"""DICOM ingest: real radiographs (MONOCHROME2 and its MONOCHROME1 twin), LUT/window handling, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fast.errors import UserError
from cxr_fast.images.dicom import read_dicom_gray8
from cxr_fast.images.read import read_gray8

pydicom = pytest.importorskip("pydicom")
Dataset, FileMetaDataset = pydicom.dataset.Dataset, pydicom.dataset.FileMetaDataset
ExplicitVRLittleEndian, generate_uid = pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.generate_uid

DATA = Path(__file__).parents[1] / "assets"
MONO2 = DATA / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
MONO1_FAKE = DATA / "Fake_MONOHR1.dcm"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                transfer_syntax=ExplicitVRLittleEndian, pixel_bytes: bytes | None = None, **attrs) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(arr.dtype, np.signedinteger))
    for k, v in attrs.items():
        setattr(ds, k, v)
    if pixel_bytes is None:
        ds.PixelData = arr.tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_bytes])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(lo: int, hi: int, shape=(32, 48), dtype=np.uint16) -> np.ndarray:
    return np.linspace(lo, hi, shape[0] * shape[1]).reshape(shape).round().astype(dtype)


def looks_like_radiograph(a: np.ndarray) -> None:
    assert a.dtype == np.uint8 and a.ndim == 2
    assert a.std() > 30, "near-constant image"
    assert 40 < a.mean() < 215
    assert a.min() <= 5 and a.max() >= 250  # spread over the 8-bit range
    assert len(np.unique(a)) > 100


def test_real_monochrome2_reads_as_radiograph():
    a, info = read_dicom_gray8(MONO2)
    assert (info.width, info.height, info.bit_depth) == (1024, 1024, 8)
    looks_like_radiograph(a)
    # Same pixels through the generic dispatcher
    b, info2 = read_gray8(MONO2)
    assert np.array_equal(a, b) and info2 == info


def test_real_monochrome1_twin_is_inverted_for_display():
    """Fake_MONOHR1.dcm stores the very same values as the MONOCHROME2 file but is tagged MONOCHROME1, which means
    "lowest value = white". Honouring the tag must therefore give the photographic negative of the MONOCHROME2 read;
    without the inversion the two would come out identical."""
    a, _ = read_dicom_gray8(MONO2)
    b, info = read_dicom_gray8(MONO1_FAKE)
    assert info.bit_depth == 8
    looks_like_radiograph(b)
    assert np.abs(b.astype(int) - (255 - a.astype(int))).mean() < 0.5
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < -0.99


def test_true_monochrome1_encoding_displays_like_monochrome2(tmp_path):
    """A MONOCHROME1 file that encodes the same *picture* (stored = max - value) must display like the original."""
    a, _ = read_dicom_gray8(MONO2)
    stored = pydicom.dcmread(MONO2).pixel_array.astype(np.uint16)
    m1 = write_dicom(tmp_path / "m1.dcm", (4095 - stored * 16).astype(np.uint16), "MONOCHROME1", bits_stored=12)
    b, info = read_dicom_gray8(m1)
    assert info.bit_depth == 12
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_percentile_window_replaces_own_range():
    a, _ = read_dicom_gray8(MONO2)
    w, _ = read_dicom_gray8(MONO2, window=(5, 95))
    assert (w == 0).mean() >= 0.04 and (w == 255).mean() >= 0.04
    assert (a == 0).mean() < (w == 0).mean()


def test_rescale_and_window_center_width(tmp_path):
    raw = ramp(0, 4095)
    # values = raw * 2 - 1024 in [-1024, 7166]; window 1000..3000 (center 2000.5, width 2001 -> LINEAR edges)
    p = write_dicom(tmp_path / "w.dcm", raw, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                    WindowCenter=2000.5, WindowWidth=2001)
    out, info = read_dicom_gray8(p)
    vals = raw.astype(float) * 2 - 1024
    assert info.bit_depth == 12
    assert (out[vals <= 1000] == 0).all() and (out[vals >= 3000] == 255).all()
    mid = (vals > 1100) & (vals < 2900)
    expected = (vals[mid] - 1000) / 2000 * 255
    assert np.abs(out[mid] - expected).max() <= 1.5
    # MONOCHROME1 with the same window: the negative
    p1 = write_dicom(tmp_path / "w1.dcm", raw, "MONOCHROME1", bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                     WindowCenter=2000.5, WindowWidth=2001)
    out1, _ = read_dicom_gray8(p1)
    assert np.array_equal(out1, 255 - out)


def test_voi_lut_sequence(tmp_path):
    raw = ramp(0, 1023)
    item = Dataset()
    item.LUTDescriptor = [512, 256, 16]  # 512 entries for inputs 256..767, 16-bit outputs
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 60000, 512)])
    p = write_dicom(tmp_path / "lut.dcm", raw, bits_stored=10, VOILUTSequence=[item])
    out, _ = read_dicom_gray8(p)
    assert (out[raw <= 256] == 0).all() and (out[raw >= 767] == 255).all()
    mid = (raw > 300) & (raw < 700)
    assert np.abs(out[mid] - (raw[mid] - 256) / 511 * 255).max() <= 1.5


def test_no_voi_uses_own_range_signed(tmp_path):
    raw = ramp(-500, 1500, dtype=np.int16)
    out, info = read_dicom_gray8(write_dicom(tmp_path / "s.dcm", raw, bits_stored=12))
    assert out.min() == 0 and out.max() == 255 and info.bit_depth == 12
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone in the stored value


def test_16bit_png_narrow_range_is_stretched(tmp_path):
    a = ramp(1000, 1100)
    p = tmp_path / "narrow16.png"
    Image.fromarray(a).save(p)
    out, info = read_gray8(p)
    assert info.bit_depth == 16
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)
    assert len(np.unique(out)) == 101  # each of the 101 stored values keeps its own grey level


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom's own warning about the truncated file
@pytest.mark.parametrize("content", [b"", b"hello, not a dicom", None])
def test_non_dicom_and_corrupt_files(tmp_path, content):
    p = tmp_path / "bad.dcm"
    if content is None:  # a real DICOM cut in half
        p.write_bytes(MONO2.read_bytes()[:5000])
    else:
        p.write_bytes(content)
    with pytest.raises(UserError, match="bad.dcm"):
        read_dicom_gray8(p)


def test_png_renamed_dcm(tmp_path):
    p = tmp_path / "really_png.dcm"
    p.write_bytes((DATA / "00000001_000.png").read_bytes())
    with pytest.raises(UserError, match="really_png.dcm"):
        read_gray8(p)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_dicom_gray8(tmp_path / "nope.dcm")


def test_max_pixels_guard():
    with pytest.raises(UserError, match="above the limit"):
        read_gray8(MONO2, max_pixels=1000)


def test_undecodable_codec_names_package(tmp_path):
    from pydicom.uid import JPEGLSLossless

    try:
        from pydicom.pixels.decoders.base import get_decoder

        if get_decoder(JPEGLSLossless).is_available:
            pytest.skip("a JPEG-LS decoder is installed here")
    except ImportError:
        pass
    p = write_dicom(tmp_path / "jls.dcm", ramp(0, 100), transfer_syntax=JPEGLSLossless,
                    pixel_bytes=b"\xff\xd8\xff\xf7not-really-jpeg-ls\xff\xd9")
    with pytest.raises(UserError, match=r"jls\.dcm.*JPEG-LS.*pip install .*(pylibjpeg|gdcm)"):
        read_dicom_gray8(p)


def test_pydicom_missing_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(UserError, match=r"pip install cxr_fast\[dicom\]"):
        read_dicom_gray8(MONO2)
