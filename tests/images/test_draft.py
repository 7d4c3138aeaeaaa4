"""Reduced-scale JPEG decoding for cxr-shard (`read_gray8(shrink_to=)`): the shrunk result stays within a grey level
of a full decode on a real radiograph at MIMIC size, and every other path decodes exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fast.images.read import read_gray8, shrunk_size
from cxr_fast.shards.encode import shrink

ASSET = Path(__file__).resolve().parents[1] / "assets" / "00000001_000.png"


@pytest.fixture(scope="module")
def mimic_jpeg(tmp_path_factory) -> Path:
    """A real NIH radiograph upscaled to 2544x3056 (W x H) with a little noise, as a q95 JPEG (~1 MB, like MIMIC)."""
    img = Image.open(ASSET).convert("L").resize((2544, 3056), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 2, (3056, 2544))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("mimic") / "big.jpg"
    Image.fromarray(arr).save(path, quality=95)
    return path


def test_shrunk_size():
    assert shrunk_size(2544, 3056, 512) == (426, 512) and shrunk_size(3056, 2544, 512) == (512, 426)
    assert shrunk_size(500, 300, 512) is None and shrunk_size(2544, 3056, 0) is None


def test_reduced_scale_decode_is_within_a_grey_level_of_the_full_decode(mimic_jpeg):
    full, info_full = read_gray8(mimic_jpeg)
    small, info = read_gray8(mimic_jpeg, shrink_to=512)
    assert (info.width, info.height) == (info_full.width, info_full.height) == (2544, 3056)  # the original size
    assert full.shape == (3056, 2544) and small.shape == (764, 636)  # 1/4 scale: the smallest still >= 426x512
    a = np.asarray(shrink(full, 512), dtype=np.float64)
    b = np.asarray(shrink(small, 512, (info.width, info.height)), dtype=np.float64)
    assert a.shape == b.shape == (512, 426)
    diff = np.abs(a - b)
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) < 12, (diff.mean(), diff.max())


@pytest.mark.parametrize("shrink_to", [0, 3056, 4000])
def test_no_shrink_decodes_exactly_as_before(mimic_jpeg, shrink_to):
    assert np.array_equal(read_gray8(mimic_jpeg, shrink_to=shrink_to)[0], read_gray8(mimic_jpeg)[0])


def test_non_jpeg_sources_are_unchanged(tmp_path):
    png = tmp_path / "big.png"
    Image.open(ASSET).convert("L").resize((1200, 1400)).save(png)
    full, small = read_gray8(png)[0], read_gray8(png, shrink_to=256)[0]
    assert full.shape == (1400, 1200) and np.array_equal(full, small)


def test_rgb_jpeg_shrunk_reads_as_gray(tmp_path):
    path = tmp_path / "rgb.jpg"
    Image.open(ASSET).convert("RGB").resize((1024, 1024)).save(path, quality=95)
    a = np.asarray(shrink(read_gray8(path)[0], 256), dtype=np.float64)
    small, info = read_gray8(path, shrink_to=256)
    assert small.ndim == 2 and small.shape == (256, 256)  # 1/4 scale lands on the target exactly
    b = np.asarray(shrink(small, 256, (info.width, info.height)), dtype=np.float64)
    assert np.abs(a - b).mean() < 1.5
