"""Reading a finished shard folder: its manifest, the splits' (tar, idx) pairs, samples.csv, and the `SampleSet`
a loader reads. The format's literals live in `cxr_fast.shards.format`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError, first_line
from cxr_fast.shards.format import FORMAT, MANIFEST, SAMPLES_COLUMNS, SAMPLES_CSV, VERSION, split_names

if TYPE_CHECKING:
    from cxr_fast.data.samples import SampleSet


def load_manifest(root: str | Path) -> dict:
    """The manifest of a finished shard folder. UserError if it is missing, unreadable, or of another format/version."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: not found; {root} is not a finished shard folder (run cxr-shard, or rerun it if "
                        f"it was interrupted)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    ver = manifest.get("version") if isinstance(manifest, dict) else None
    if fmt != FORMAT or ver != VERSION:
        raise UserError(f"{path}: shard format {fmt!r} version {ver!r} is not supported; this cxr_fast reads "
                        f"{FORMAT!r} version {VERSION} (rebuild the shards with this version's cxr-shard)")
    return manifest


def manifest_splits(manifest: dict) -> list[str]:
    return split_names(int(manifest["folds"]))


def split_shards(root: str | Path, manifest: dict, split: str) -> list[tuple[Path, Path]]:
    """(tar, idx) paths of one split ("fold1".."foldK" or "test"), in manifest order. UserError if one is missing."""
    root = Path(root)
    if split not in manifest_splits(manifest):
        raise UserError(f"{root / MANIFEST}: no split {split!r} (splits: {', '.join(manifest_splits(manifest))})")
    out = []
    for s in manifest["shards"]:
        if s["split"] != split:
            continue
        tar, idx = root / s["tar"], root / s["idx"]
        for p in (tar, idx):
            if not p.is_file():
                raise UserError(f"{p}: shard file listed in the manifest is missing (check with: cxr-shard verify "
                                f"{root})")
        # A cheap check on every start (full checksums are `cxr-shard verify`'s job): a truncated or grown tar.
        if "bytes" in s and tar.stat().st_size != int(s["bytes"]):
            raise UserError(f"{tar}: {tar.stat().st_size} bytes, the manifest says {s['bytes']}: the shard was "
                            f"truncated or altered after writing (check with: cxr-shard verify {root})")
        out.append((tar, idx))
    return out


def read_samples(root: str | Path, label_names: list[str] | None = None) -> pd.DataFrame:
    """samples.csv: index (int64), split, fold (Int64, <NA> for test), name, then labels as float32 (NaN = unknown).

    Rows are in shard order (manifest shard order, then order within each tar). Label columns are taken by
    position, so a label named like a fixed column cannot be confused with it.
    """
    path = Path(root) / SAMPLES_CSV
    if label_names is None:
        label_names = load_manifest(root)["labels"]
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({first_line(e, 300, with_type=True)})"
                        ) from None
    if raw.shape[1] != len(SAMPLES_COLUMNS) + len(label_names):
        raise UserError(f"{path}: expected {len(SAMPLES_COLUMNS) + len(label_names)} columns, found {raw.shape[1]}")
    raw.columns = SAMPLES_COLUMNS + [f"_label{j}" for j in range(len(label_names))]
    df = pd.DataFrame({
        "index": raw["index"].astype(np.int64),
        "split": raw["split"],
        "fold": pd.array([int(v) if v else None for v in raw["fold"]], dtype="Int64"),
        "name": raw["name"],
    })
    for j, c in enumerate(label_names):
        col = raw[f"_label{j}"]
        df[c] = pd.to_numeric(col.where(col != "", None), errors="raise").astype(np.float32)
    return df


def sample_set(root: str | Path, manifest: dict, splits: list[str]) -> SampleSet:
    """`SampleSet` over `splits`: index and labels from samples.csv in shard order, the (tar, idx) list, image hint."""
    from cxr_fast.data.samples import SampleSet  # imports torch: only for the readers, not for cxr-shard

    df = read_samples(root, manifest["labels"])
    shards, parts = [], []
    for split in splits:
        shards += split_shards(root, manifest, split)
        parts.append(df[df["split"] == split])
    sel = pd.concat(parts) if parts else df.iloc[:0]
    img = manifest["image"]
    return SampleSet(index=sel["index"].to_numpy(np.int64), labels=sel[manifest["labels"]].to_numpy(np.float32),
                     shards=shards, image_hint=(int(img["max_height"]), int(img["max_width"])))
