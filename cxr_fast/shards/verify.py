"""`cxr-shard verify`: re-read a shard folder and check it against its manifest and samples.csv.

Per tar (in parallel): sha256 of tar and idx, member layout and keys, sample count, index/json/labels of every sample
against its samples.csv row, a full decode of every image, and the .idx against one rebuilt from the tar's headers.
Member data are read through `tarfile.extractfile` (into memory); member names are never used as paths.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_fast.data.table import file_sha256
from cxr_fast.progress import progress_bar
from cxr_fast.shards import format as fmt
from cxr_fast.shards import read as rd
from cxr_fast.shards.cpus import default_workers, pool_map, worker_pool

_MAX_PER_SHARD = 20


def verify_shards(root: str | Path, workers: int | None = None, progress: bool = False) -> tuple[list[str], str]:
    """Returns (problems, one-line summary). Raises UserError if `root` has no readable manifest of this version."""
    t0 = time.perf_counter()
    root = Path(root)
    man = rd.load_manifest(root)
    problems: list[str] = []
    labels = man["labels"]
    ext = man["image"]["format"]
    splits = rd.manifest_splits(man)

    sha = file_sha256(root / fmt.SAMPLES_CSV) if (root / fmt.SAMPLES_CSV).is_file() else None
    if sha != man.get("samples_csv_sha256"):
        problems.append(f"{fmt.SAMPLES_CSV}: " + ("missing" if sha is None else "sha256 differs from the manifest"))
    df = rd.read_samples(root, labels) if sha is not None else None

    tot = man["totals"]
    rej = {s: sum(r["split"] == s for r in man["rejected"]) for s in ("train", "test")}
    if tot["train_written"] + rej["train"] != tot["train_rows"]:
        problems.append(f"manifest: {tot['train_written']} written + {rej['train']} rejected training rows != "
                        f"{tot['train_rows']} CSV rows")
    if tot["test_written"] + rej["test"] != tot["test_images"]:
        problems.append(f"manifest: {tot['test_written']} written + {rej['test']} rejected test images != "
                        f"{tot['test_images']}")
    for split in splits:
        in_shards = sum(s["samples"] for s in man["shards"] if s["split"] == split)
        if in_shards != man["counts"][split]["samples"]:
            problems.append(f"manifest: {split} shards hold {in_shards} samples, counts say "
                            f"{man['counts'][split]['samples']}")
        if df is not None and (df["split"] == split).sum() != in_shards:
            problems.append(f"{fmt.SAMPLES_CSV}: {(df['split'] == split).sum()} {split} rows, manifest shards hold "
                            f"{in_shards}")
    if df is not None:
        for group, sel in (("training", df["split"] != "test"), ("test", df["split"] == "test")):
            dup = df.loc[sel, "index"].duplicated()
            if dup.any():
                problems.append(f"{fmt.SAMPLES_CSV}: {group} index {int(df.loc[sel, 'index'][dup].iloc[0])} appears "
                                f"more than once")
    listed = {s["tar"] for s in man["shards"]} | {s["idx"] for s in man["shards"]}
    stray = sorted(p.name for p in root.iterdir() if fmt.OWN_FILE.match(p.name) and p.suffix in (".tar", ".idx")
                   and p.name not in listed)
    if stray:
        problems.append(f"shard files not listed in the manifest: {', '.join(stray[:5])}")

    tasks, pos = [], 0
    for s in man["shards"]:
        rows = None
        if df is not None and pos + s["samples"] <= len(df):
            part = df.iloc[pos:pos + s["samples"]]
            lab = part[labels].to_numpy(np.float32).astype(fmt.LABEL_DTYPE)
            rows = [(int(i), sp, nm, lab[j].tobytes())
                    for j, (i, sp, nm) in enumerate(zip(part["index"], part["split"], part["name"]))]
        pos += s["samples"]
        tasks.append((str(root), s, ext, len(labels), rows, man["image"]))
    workers = min(default_workers() if workers is None else workers, len(tasks))
    results = []
    with worker_pool(workers) as pool, progress_bar(len(tasks), "verify", progress, unit="shard") as bar:
        for res in pool_map(pool, check_shard, tasks, ordered=True):  # ordered: problems in manifest order
            results.append(res)
            bar.update(1)
    n = 0
    for errs, count in results:
        problems += errs
        n += count
    per = ", ".join(f"{s} {man['counts'][s]['samples']}" for s in splits)
    summary = (f"OK: {root}: {len(man['shards'])} shards, {n} samples ({per}); checksums, indexes, labels and "
               f"every image decode agree with manifest.json and samples.csv ({time.perf_counter() - t0:.1f} s)")
    return problems, summary


def check_shard(task) -> tuple[list[str], int]:
    """Check one tar + idx. Returns (problems, samples seen)."""
    root, s, ext, n_labels, rows, image = task
    root = Path(root)
    tar_path, idx_path = root / s["tar"], root / s["idx"]
    errs: list[str] = []

    def bad(msg: str) -> bool:
        errs.append(f"{s['tar']}: {msg}")
        return len(errs) >= _MAX_PER_SHARD

    for p, key in ((tar_path, "sha256"), (idx_path, "idx_sha256")):
        what = "" if p == tar_path else f"{p.name}: "
        if not p.is_file():
            bad(f"{what}missing")
            return errs, 0
        if file_sha256(p) != s[key]:
            bad(f"{what}sha256 differs from the manifest (file changed or damaged)")
    expected_comps = {ext, *fmt.COMPONENTS}
    split = s["split"]
    members: list[tuple[str, int, int]] = []
    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                if not m.isreg():
                    bad(f"member {m.name!r} is not a regular file")
                    continue
                members.append((m.name, m.offset_data, m.size))
                key, comp = fmt.split_member_name(m.name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][comp] = tar.extractfile(m).read()
    except Exception as e:  # noqa: BLE001 - any unreadable tar is a finding, not a crash
        bad(f"cannot read the tar ({type(e).__name__}: {e})")
        return errs, 0

    if len(samples) != s["samples"]:
        bad(f"holds {len(samples)} samples, the manifest says {s['samples']}")
    if rows is not None and len(rows) != len(samples):
        rows = None  # counts already reported; a positional comparison would only add noise
    for i, (key, comps) in enumerate(samples):
        if _check_sample(key, comps, split, expected_comps, n_labels, rows[i] if rows is not None else None, ext,
                         image, bad):
            break
    idx_text = idx_path.read_text(encoding="utf-8", errors="replace")
    if idx_text != fmt.index_text(members):
        want = fmt.index_text(members).splitlines()
        got = idx_text.splitlines()
        line = next((j + 1 for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)) + 1)
        bad(f"{idx_path.name} disagrees with the tar's members (first at line {line})")
    return errs, len(samples)


def _check_sample(key: str, comps: dict[str, bytes], split: str, expected_comps: set, n_labels: int, row, ext: str,
                  image: dict, bad) -> bool:
    """Check one sample's components (and its samples.csv row); True when `bad` says to stop."""
    where = f"sample {key}"
    index = fmt.key_index(key, split)
    if index is None:
        return bad(f"{where}: malformed key for split {split}")
    if set(comps) != expected_comps:
        return bad(f"{where}: components {sorted(comps)}, expected {sorted(expected_comps)}")
    if len(comps["index"]) != 8 or int(np.frombuffer(comps["index"], fmt.INDEX_DTYPE)[0]) != index:
        bad(f"{where}: index component does not match the key")
    try:
        meta = json.loads(comps["json"].decode("utf-8"))
        assert meta["split"] == split and meta["fold"] == fmt.split_fold(split), "split/fold differ from the shard's"
    except Exception as e:  # noqa: BLE001
        bad(f"{where}: bad json component ({type(e).__name__}: {e})")
        meta = {}
    if len(comps["labels"]) != 4 * n_labels:
        bad(f"{where}: labels component has {len(comps['labels'])} bytes, expected {4 * n_labels}")
    if row is not None:
        r_index, r_split, r_name, r_labels = row
        if r_index != index or r_split != split:
            bad(f"{where}: samples.csv has {r_split} index {r_index} at this position")
        elif comps["labels"] != r_labels and not np.array_equal(
                np.frombuffer(comps["labels"], fmt.LABEL_DTYPE), np.frombuffer(r_labels, fmt.LABEL_DTYPE),
                equal_nan=True):
            bad(f"{where} ({r_name}): labels differ from samples.csv")
        elif meta and meta.get("name") != r_name:
            bad(f"{where}: json name {meta.get('name')!r} differs from samples.csv {r_name!r}")
    problem = _check_image(comps[ext], ext, image)
    return bool(problem) and bad(f"{where} ({meta.get('name', '?')}): {problem}")


def _check_image(data: bytes, ext: str, image: dict) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt_ok = img.format == {"jpg": "JPEG", "png": "PNG"}[ext]
            if not fmt_ok or img.mode != "L":
                return f"image is {img.format} {img.mode}, expected {ext} L"
            if ext == "jpg" and ("progressive" in img.info or "progression" in img.info):
                return "JPEG is progressive, expected baseline"
            if img.height > image["max_height"] or img.width > image["max_width"]:
                return f"image is {img.width}x{img.height}, above the manifest's maximum"
    except Exception as e:  # noqa: BLE001
        return f"image does not decode ({type(e).__name__}: {e})"
    return None
