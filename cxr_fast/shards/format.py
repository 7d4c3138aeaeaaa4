"""Shard format v1: every literal of the format (file names, the sample-key rule, component names and dtypes, the
manifest's format/version) and the DALI index. The prose spec is `docs/shard-format.md`.

Writing lives in `writer.py` (orchestration), `encode.py` (per-image work, in worker processes) and `assemble.py`
(tars, index, samples.csv); reading a finished folder in `read.py`; checking in `verify.py`. Tar member names are
only ever parsed as strings, never used as filesystem paths.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from cxr_fast.atomic import temp_target
from cxr_fast.errors import UserError

FORMAT = "cxr_fast-shards"
VERSION = 1
MANIFEST = "manifest.json"
SAMPLES_CSV = "samples.csv"
FOLDS_CSV = "folds.csv"
IDX_VERSION = "v1.2"  # DALI's wds2idx index format
SAMPLES_COLUMNS = ["index", "split", "fold", "name"]  # then one column per label, in manifest order
COMPONENTS = ("index", "json", "labels")  # plus the image extension ("jpg" or "png")
LABEL_DTYPE = "<f4"  # the `labels` component: C little-endian float32, NaN = unknown
INDEX_DTYPE = "<i8"  # the `index` component: one little-endian int64
TEST_SPLIT = "test"
SAMPLE_KEY = re.compile(r"^[st]\d{8}$")

# Everything cxr-shard may leave in OUT (finished or half-written); nothing else there is ever touched.
OWN_FILE = re.compile(r"^(?:(?:fold\d+|test)-\d{5}\.(?:tar|idx)|samples\.csv|folds\.csv|manifest\.json)(?:\.tmp)?$")
SPOOL_DIR = ".cxr-shard-tmp"  # inside OUT in older versions; now the suffix of the work folder beside OUT


def fold_split(k: int) -> str:
    """The split name of fold k (1-based): `fold{k}`."""
    return f"fold{k}"


def split_fold(split: str) -> int | None:
    """The fold number of a split name (`fold3` -> 3), None for the test split."""
    return None if split == TEST_SPLIT else int(split.removeprefix("fold"))


def split_names(n_folds: int) -> list[str]:
    """Every split of a K-fold output, in manifest order: fold1..foldK, test."""
    return [fold_split(k) for k in range(1, n_folds + 1)] + [TEST_SPLIT]


def sample_key(split: str, index: int) -> str:
    """`s{index:08d}` for training rows, `t{index:08d}` for test images: no dots, no slashes."""
    return f"{'t' if split == TEST_SPLIT else 's'}{index:08d}"


def key_index(key: str, split: str) -> int | None:
    """The index a sample key encodes, or None when the key is malformed or of the other split kind."""
    if not SAMPLE_KEY.match(key) or (key[0] == "t") != (split == TEST_SPLIT):
        return None
    return int(key[1:])


def work_dir(out: Path) -> Path:
    """`.{name}.cxr-shard-tmp` beside OUT: the encode spool and the journal a rerun resumes from (never inside OUT,
    so a run stopped by bad images leaves OUT as it was)."""
    return out.parent / f".{out.name}{SPOOL_DIR}"


def is_own(name: str) -> bool:
    """A file name cxr-shard may have left in OUT: an output file or the temporary file of one."""
    return bool(OWN_FILE.match(name) or OWN_FILE.match(temp_target(name) or ""))


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
