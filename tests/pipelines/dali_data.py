"""Self-checking data for the DALI tests: sample i of the synthetic set is a flat grey image of level 20 + 5 i whose
labels are the bits of i (plus an "uncertain" column that is NaN for every third i), so any image/label/index mix-up
shows; the "real" set is two NIH radiographs (tests/assets) and shifted copies as 512 px grey JPEG shards."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr_fast.data.samples import SampleSet
from cxr_fast.shards.read import load_manifest, sample_set
from cxr_fast.shards.writer import write_shards

N = 45  # 3 folds of 15, tars of <= 8 samples
FOLDS = ["fold1", "fold2", "fold3"]
REAL = ["00000001_000.png", "00027426_000.png"]
CPU = torch.device("cpu")


def grey(i):
    return 20 + 5 * np.asarray(i)


def expected_labels(i: int) -> np.ndarray:
    return np.array([(i >> b) & 1 for b in range(3)] + [np.nan if i % 3 == 0 else i % 2], np.float32)


def write_set(root: Path, images: list[np.ndarray], labels: list[list[str]], **kw) -> Path:
    (root / "train").mkdir(parents=True)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image_name", "A", "B", "C", "D"])
        for i, (img, lab) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(root / "train" / f"img{i:03d}.png")
            w.writerow([f"img{i:03d}.png", *lab])
    out = root / "shards"
    write_shards(root / "train.csv", root / "train", out, uncertain="ignore", workers=1, progress=False, log=None,
                 **kw)
    return out


def make_synth(root: Path) -> SampleSet:
    """N flat grey images (level grey(i)) with labels expected_labels(i), 3 folds, tars of <= 8 samples."""
    images = [np.full((40, 48), grey(i), np.uint8) for i in range(N)]
    labels = [["-1" if np.isnan(v) else str(int(v)) for v in expected_labels(i)] for i in range(N)]
    out = write_set(root, images, labels, folds=3, seed=0, resize=0, samples_per_shard=8)
    return sample_set(out, load_manifest(out), FOLDS)


def make_real(root: Path) -> tuple[SampleSet, list[np.ndarray]]:
    """The two NIH radiographs and shifted copies (8 samples), as 512 px grey JPEG shards."""
    src = [Path(__file__).parent.parent / "assets" / n for n in REAL]  # shipped in tests/assets (see its README)
    base = [np.asarray(Image.open(p).convert("L")) for p in src]
    images = [np.ascontiguousarray(np.roll(base[i % 2], 7 * i, axis=1)) for i in range(8)]
    out = write_set(root, images, [["0", "1", "0", "1"]] * 8, folds=2, seed=0, resize=512,
                 image_format="jpg", quality=95, samples_per_shard=4)
    return sample_set(out, load_manifest(out), ["fold1", "fold2"]), images


def epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(loader)


def indices(batches) -> list[int]:
    return torch.cat([b[2] for b in batches]).tolist()


def check_alignment(batches) -> None:
    """Centre grey level and labels both encode the index (batches collected first: tensors must not be reused)."""
    for images, labels, index in batches:
        s = images.shape[-1]
        centre = images[:, 0, s // 2 - 2: s // 2 + 2, s // 2 - 2: s // 2 + 2].float().flatten(1).median(1).values
        assert torch.all((centre - torch.from_numpy(grey(index.numpy())).float()).abs() <= 2), (centre, index)
        want = np.stack([expected_labels(int(i)) for i in index])
        np.testing.assert_array_equal(labels.numpy(), want)  # NaN == NaN here


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])
