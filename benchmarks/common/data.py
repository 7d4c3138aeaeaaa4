"""The benchmark's data: a cached cxr-synth set (or the user's --data), its shards, the sample lists, packing speed.

Every row reads the same images, the shards' training rows (all folds); `pil-files` reads the original files behind
exactly those rows (samples.csv `name`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cxr_fast.data.samples import SampleSet
from cxr_fast.errors import UserError
from cxr_fast.shards.read import load_manifest, read_samples, sample_set
from cxr_fast.shards.writer import write_shards
from cxr_fast.synth.write import generate

FOLDS = 2  # the minimum cxr-shard accepts; every row reads all folds
SEED = 0


@dataclass
class BenchData:
    source: Path          # folder with train.csv + train/
    shards: Path          # cxr-shard output (JPEG at --shard_size)
    all_folds: SampleSet  # shards, every training fold
    info: dict            # what the JSON records about the data

    def files(self, samples: SampleSet) -> SampleSet:
        """The same rows as `samples`, read from the original image files (for pil-files)."""
        df = read_samples(self.shards)
        name_of = dict(zip(df["index"], df["name"]))
        train_dir = Path(load_manifest(self.shards)["source"]["train_dir"])
        return SampleSet(index=samples.index, labels=samples.labels,
                         files=[train_dir / name_of[int(i)] for i in samples.index])


def _shard_args(shard_size: int, workers: int) -> dict:
    return {"folds": FOLDS, "seed": SEED, "resize": shard_size, "image_format": "jpg", "quality": 95,
            "workers": workers, "progress": False, "log": None}


def prepare(cache: Path, *, data: Path | None, synthetic: int, source_size: int, shard_size: int,
            workers: int, log=print) -> BenchData:
    """Build (or reuse) the source set and its shards under `cache`."""
    cache = Path(cache)
    if data is not None:
        data = Path(data).absolute()
        if not (data / "train.csv").is_file() or not (data / "train").is_dir():
            raise UserError(f"--data {data}: expected train.csv and train/ (the seed's dataset layout)")
        key = "data-" + hashlib.sha256(str(data).encode()).hexdigest()[:10]
        source, kind = data, "user"
    else:
        if synthetic < 2 * FOLDS:
            raise UserError(f"--synthetic must be at least {2 * FOLDS} images, got {synthetic}")
        key = f"synth-n{synthetic}-{source_size}px-seed{SEED}"
        source, kind = cache / key, "cxr-synth"
        if not (source / "train.csv").is_file():  # train.csv is written last: its presence means complete
            log(f"generating {synthetic} synthetic {source_size} px PNG radiographs in {source} (cached) ...")
            t = time.perf_counter()
            generate(source, n_train=synthetic, n_test=0, size=source_size, seed=SEED, fmt="png", bit_depth=8,
                     workers=workers, progress=False, overwrite=True)
            log(f"  done in {time.perf_counter() - t:.0f} s")
    shards = cache / f"shards-{key}-{shard_size}px"
    if not (shards / "manifest.json").is_file():
        log(f"sharding {source} to {shard_size} px JPEG in {shards} (cached) ...")
    # up to date -> returns at once; a changed source (same path) is re-sharded because the CSV hash differs
    manifest = write_shards(source / "train.csv", source / "train", shards, overwrite=True,
                            **_shard_args(shard_size, workers))
    folds = [f"fold{k}" for k in range(1, FOLDS + 1)]
    all_folds = sample_set(shards, manifest, folds)
    src_files = sorted((source / "train").iterdir())
    info = {"kind": kind, "source": str(source), "shards": str(shards), "images": len(all_folds),
            "source_size": source_size if kind == "cxr-synth" else None,
            "source_format": src_files[0].suffix.lstrip(".").lower() if src_files else None,
            "source_bytes_mean": sum(p.stat().st_size for p in src_files) / max(1, len(src_files)),
            "shard_size": shard_size, "shard_format": "jpg", "shard_quality": 95,
            "shard_bytes_mean": sum(s["bytes"] for s in manifest["shards"]) / max(1, len(all_folds)),
            "labels": len(manifest["labels"])}
    return BenchData(source=source, shards=shards, all_folds=all_folds, info=info)


def time_packing(bd: BenchData, shard_size: int, workers: int) -> dict:
    """`write_shards` from scratch into a temporary folder: images/s for decode + resize + JPEG + tars + manifest."""
    with tempfile.TemporaryDirectory(prefix="cxr-bench-pack-", dir=bd.shards.parent) as tmp:
        t = time.perf_counter()
        m = write_shards(bd.source / "train.csv", bd.source / "train", Path(tmp) / "out",
                         **_shard_args(shard_size, workers))
        seconds = time.perf_counter() - t
        shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    n = int(m["totals"]["train_written"])
    return {"images": n, "seconds": seconds, "img_per_s": n / seconds, "workers": workers}
