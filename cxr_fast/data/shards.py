"""Shard format v1: names, the DALI index, and the reader helpers. The spec is `docs/shard-format.md`.

Writing lives in `shard_writer.py` (orchestration), `shard_encode.py` (per-image work, in worker processes) and
`shard_assemble.py` (tars, index, samples.csv); checking in `shard_verify.py`. `write_shards`, `write_test_shards`
and `verify_shards` are re-exported here lazily. Tar member names are only ever parsed as strings, never used as
filesystem paths.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError

FORMAT = "cxr_fast-shards"
VERSION = 1
MANIFEST = "manifest.json"
SAMPLES_CSV = "samples.csv"
FOLDS_CSV = "folds.csv"
IDX_VERSION = "v1.2"  # DALI's wds2idx index format
SAMPLES_COLUMNS = ["index", "split", "fold", "name"]  # then one column per label, in manifest order
COMPONENTS = ("index", "json", "labels")  # plus the image extension ("jpg" or "png")

# Everything cxr-shard may leave in OUT (finished or half-written); nothing else there is ever touched.
OWN_FILE = re.compile(r"^(?:(?:fold\d+|test)-\d{5}\.(?:tar|idx)|samples\.csv|folds\.csv|manifest\.json)(?:\.tmp)?$")
SPOOL_DIR = ".cxr-shard-tmp"


def sample_key(split: str, index: int) -> str:
    """`s{index:08d}` for training rows, `t{index:08d}` for test images: no dots, no slashes."""
    return f"{'t' if split == 'test' else 's'}{index:08d}"


def shard_stem(split: str, i: int) -> str:
    return f"{split}-{i:05d}"


def split_member_name(name: str) -> tuple[str, str]:
    """(key, ext) split at the first dot after the last slash, as webdataset, DALI and wds2idx do."""
    start = name.rfind("/") + 1
    dot = name.find(".", start)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def index_text(members: list[tuple[str, int, int]]) -> str:
    """DALI index for a tar, from its regular-file members as (name, data_offset, size), in tar order.

    Consecutive members sharing a key form one sample line of `<ext> <offset> <size> <name>` groups, exactly as
    `wds2idx` writes it (members whose key is empty are skipped there too).
    """
    samples: list[list[str]] = []
    last = None
    for name, offset, size in members:
        key, ext = split_member_name(name)
        if not key or key.endswith("/"):
            continue
        part = f"{ext} {offset} {size} {name}"
        if key != last:
            samples.append([part])
            last = key
        else:
            samples[-1].append(part)
    return f"{IDX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def tar_members(tar_path: str | Path) -> list[tuple[str, int, int]]:
    """(name, data_offset, size) of every regular file in a tar, read from its headers."""
    with tarfile.open(tar_path, "r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


# ---------------------------------------------------------------------------------------------------- reading

def _index_header(f, idx_path) -> int:
    """The sample count on a DALI index's first line (`v1.2 <num_samples>`)."""
    head = f.readline().split()
    if len(head) != 2 or not head[0].startswith("v") or not head[1].isdigit():
        raise UserError(f"{idx_path}: not a DALI webdataset index (first line {' '.join(head)!r})")
    return int(head[1])


def index_sample_count(idx_path: str | Path) -> int:
    """Samples in a shard, from its index's first line only (cheap: readers size their buffers with it)."""
    try:
        with open(idx_path) as f:
            return _index_header(f, idx_path)
    except OSError as e:
        raise UserError(f"cannot read shard index {idx_path}: {e.strerror}") from None


def read_index(idx_path: str | Path) -> list[dict[str, tuple[int, int]]]:
    """Parse a DALI webdataset index: per sample, {ext: (data offset, size)}."""
    with open(idx_path) as f:
        n = _index_header(f, idx_path)
        samples = []
        for line in f:
            tok = line.split()
            if not tok:
                continue
            if len(tok) % 4:
                raise UserError(f"{idx_path}: malformed index line {len(samples) + 2}")
            samples.append({tok[i]: (int(tok[i + 1]), int(tok[i + 2])) for i in range(0, len(tok), 4)})
    if len(samples) != n:
        raise UserError(f"{idx_path}: header says {n} samples, found {len(samples)}")
    return samples



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


def write_shards(*args, **kwargs) -> dict:
    """See `cxr_fast.data.shard_writer.write_shards` (imported lazily: readers need not load the writer)."""
    from cxr_fast.data.shard_writer import write_shards as impl

    return impl(*args, **kwargs)


def write_test_shards(*args, **kwargs) -> dict:
    """See `cxr_fast.data.shard_writer.write_test_shards`."""
    from cxr_fast.data.shard_writer import write_test_shards as impl

    return impl(*args, **kwargs)


def verify_shards(root: str | Path, workers: int | None = None, progress: bool = False) -> tuple[list[str], str]:
    """See `cxr_fast.data.shard_verify.verify_shards`: (problems, one-line summary)."""
    from cxr_fast.data.shard_verify import verify_shards as impl

    return impl(root, workers, progress)


def split_names(manifest: dict) -> list[str]:
    return [f"fold{k}" for k in range(1, int(manifest["folds"]) + 1)] + ["test"]


def split_shards(root: str | Path, manifest: dict, split: str) -> list[tuple[Path, Path]]:
    """(tar, idx) paths of one split ("fold1".."foldK" or "test"), in manifest order. UserError if one is missing."""
    root = Path(root)
    if split not in split_names(manifest):
        raise UserError(f"{root / MANIFEST}: no split {split!r} (splits: {', '.join(split_names(manifest))})")
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
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
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


def sample_set(root: str | Path, manifest: dict, splits: list[str]):
    """`SampleSet` over `splits`: index and labels from samples.csv in shard order, the (tar, idx) list, image hint."""
    from cxr_fast.pipelines import SampleSet

    df = read_samples(root, manifest["labels"])
    shards, parts = [], []
    for split in splits:
        shards += split_shards(root, manifest, split)
        parts.append(df[df["split"] == split])
    sel = pd.concat(parts) if parts else df.iloc[:0]
    img = manifest["image"]
    return SampleSet(index=sel["index"].to_numpy(np.int64), labels=sel[manifest["labels"]].to_numpy(np.float32),
                     shards=shards, image_hint=(int(img["max_height"]), int(img["max_width"])))
