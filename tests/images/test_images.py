"""read_gray8: 8-bit and 16-bit round trips, windowing, and errors that name the file (never a black image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fast.errors import UserError
from cxr_fast.images.read import ImageInfo, read_gray8, window_to_uint8

NIH_SAMPLE = Path(__file__).parents[1] / "assets" / "00000001_000.png"


def noise(seed: int, shape=(48, 64), dtype=np.uint8, lo: int = 0, hi: int = 256) -> np.ndarray:
    """Seeded so the expected image can be regenerated from its index."""
    return np.random.default_rng(seed).integers(lo, hi, shape, dtype=dtype)


def read_error(path, **kw) -> str:
    with pytest.raises(UserError) as e:
        read_gray8(path, **kw)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


# --- round trips -------------------------------------------------------------------------------------------------

def test_png_8bit_round_trip_exact(tmp_path):
    a = noise(0)
    Image.fromarray(a).save(tmp_path / "a.png")
    arr, info = read_gray8(tmp_path / "a.png")
    assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    np.testing.assert_array_equal(arr, a)
    assert info == ImageInfo(width=64, height=48, bit_depth=8)


def test_rgb_png_converted_to_luminance(tmp_path):
    rgb = np.stack([noise(1), noise(2), noise(3)], axis=-1)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    arr, info = read_gray8(tmp_path / "rgb.png")
    # ITU-R 601-2 luma, as PIL's convert("L") computes it (within rounding)
    expected = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert arr.shape == (48, 64) and info.bit_depth == 8
    assert np.abs(arr - expected).max() <= 1.0


def test_rgba_and_palette_pngs(tmp_path):
    a = noise(4)
    Image.fromarray(np.stack([a, a, a, np.full_like(a, 255)], -1), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(a).convert("P").save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_gray8(tmp_path / "rgba.png")[0], a)
    assert np.abs(read_gray8(tmp_path / "p.png")[0].astype(int) - a).max() <= 16  # a 256-colour palette of greys


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_round_trip(tmp_path, mode):
    # A smooth ramp: JPEG's error on it is small, a wrong channel or a transposed image is not.
    yy, xx = np.mgrid[0:96, 0:128]
    a = ((xx * 2 + yy) % 256).astype(np.uint8)
    img = Image.fromarray(a) if mode == "L" else Image.fromarray(np.stack([a] * 3, -1), "RGB")
    img.save(tmp_path / "a.jpg", quality=95)
    arr, info = read_gray8(tmp_path / "a.jpg")
    assert arr.shape == (96, 128) and info == ImageInfo(width=128, height=96, bit_depth=8)
    assert np.abs(arr.astype(int) - a).mean() < 3


def test_png_16bit_windowed_over_its_own_range(tmp_path):
    # 1000..5000: truncating to 8 bits (or dividing by 256) would give a dark, low-contrast image
    a = np.linspace(1000, 5000, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a16.png")
    arr, info = read_gray8(tmp_path / "a16.png")
    assert info == ImageInfo(width=64, height=48, bit_depth=16)
    expected = np.rint((a.astype(np.float64) - 1000) * 255 / 4000).astype(np.uint8)
    np.testing.assert_array_equal(arr, expected)
    assert arr.min() == 0 and arr.max() == 255


def test_png_16bit_percentile_window(tmp_path):
    a = noise(5, dtype=np.uint16, lo=0, hi=65536)
    Image.fromarray(a).save(tmp_path / "a16.png")
    arr, _ = read_gray8(tmp_path / "a16.png", window=(2, 98))
    lo, hi = np.percentile(a.astype(np.float64), (2, 98))
    np.testing.assert_array_equal(arr, np.clip(np.rint((a - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8))
    assert (arr == 0).mean() >= 0.02 and (arr == 255).mean() >= 0.02  # the tails saturate
    full, _ = read_gray8(tmp_path / "a16.png")
    assert (full == 255).mean() < 0.01


def test_window_to_uint8():
    np.testing.assert_array_equal(window_to_uint8(np.array([10, 20, 30])), [0, 128, 255])
    np.testing.assert_array_equal(window_to_uint8(np.full((2, 2), 7)), np.zeros((2, 2)))  # flat: no division by 0
    np.testing.assert_array_equal(window_to_uint8(np.arange(101), window=(10, 90))[[0, 10, 50, 90, 100]],
                                  [0, 0, 128, 255, 255])


def test_exotic_file_name(tmp_path):
    d = tmp_path / "a.b c"
    d.mkdir()
    Image.fromarray(noise(6)).save(d / "ü.png")
    np.testing.assert_array_equal(read_gray8(d / "ü.png")[0], noise(6))


@pytest.mark.skipif(not NIH_SAMPLE.is_file(), reason="tests/assets/00000001_000.png not copied in yet")
def test_real_nih_radiograph():
    arr, info = read_gray8(NIH_SAMPLE)
    assert arr.dtype == np.uint8 and arr.shape == (info.height, info.width)
    assert min(arr.shape) >= 256
    assert arr.std() > 10 and arr.max() > arr.min() + 100  # a radiograph, not a blank


# --- errors ------------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    assert "not found" in read_error(tmp_path / "missing.png")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "0 bytes" in read_error(tmp_path / "empty.png")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext):
    good = tmp_path / f"good.{ext}"
    Image.fromarray(noise(7, shape=(128, 128))).save(good)  # noise: the pixel data fills most of the file
    data = good.read_bytes()
    bad = tmp_path / f"truncated.{ext}"
    bad.write_bytes(data[: len(data) // 2])
    assert "cannot decode" in read_error(bad)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("Image_name,A\nx.png,1\n")
    assert "cannot decode" in read_error(p)


def test_over_max_pixels(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(noise(8, shape=(100, 100))).save(p)
    msg = read_error(p, max_pixels=9_999)
    assert "100x100" in msg and "9999" in msg and "--max_pixels" in msg
    assert read_gray8(p, max_pixels=10_000)[0].shape == (100, 100)  # the limit itself is allowed


def test_max_pixels_is_the_only_guard(tmp_path, monkeypatch):
    # PIL's own process-wide limit (~89M pixels; ours defaults to 100M) must neither refuse an image that
    # max_pixels allows, nor replace our message with its DecompressionBomb warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    p = tmp_path / "a.png"
    Image.fromarray(noise(9, shape=(60, 60))).save(p)  # 3600 pixels: above twice PIL's limit
    np.testing.assert_array_equal(read_gray8(p)[0], noise(9, shape=(60, 60)))
    for limit in (1_500, 2_000):  # PIL would raise its error (3600 > 2 * 1500) or its warning (3600 > 2000)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
        msg = read_error(p, max_pixels=limit)
        assert f"limit of {limit}" in msg and "--max_pixels" in msg and "Bomb" not in msg
