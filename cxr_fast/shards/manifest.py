"""The end of a cxr-shard build: folds.csv, samples.csv, stale tars removed, then `manifest.json`, last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxr_fast.atomic import atomic_path, sync_dir, write_bytes_atomic
from cxr_fast.data.folds import write_folds_csv
from cxr_fast.data.table import file_sha256
from cxr_fast.shards import format as fmt


def finish(inp, out: Path, asm, shards: list[dict], split_args: dict, method, args: dict,
            rejected: list[dict], ok_train, fold_of_ok, ok_test, enc) -> dict:
    """folds.csv, samples.csv, then (after removing stale tars and syncing) the manifest, last."""
    n, n_folds = len(inp.names), split_args["folds"]
    if n:
        with atomic_path(out / fmt.FOLDS_CSV) as tmp:
            write_folds_csv(tmp, [inp.names[j] for j in ok_train], fold_of_ok, split_args["image_col"])
    asm.write_samples_csv()
    listed = {s["tar"] for s in shards} | {s["idx"] for s in shards}
    remove_own_files(out, keep=lambda p: p.name in listed or p.name in (fmt.SAMPLES_CSV, fmt.FOLDS_CSV))
    done = [r for r in enc.recs if r is not None]
    manifest = {
        "format": fmt.FORMAT, "version": fmt.VERSION, "labels": inp.label_names, "policies": inp.policies,
        "image_col": split_args["image_col"], "group_col": split_args["group_col"], "folds": n_folds,
        "seed": split_args["seed"], "split_method": method,
        "image": {"format": args["format"], "mode": "L", "quality": args["quality"], "resize": args["resize"],
                  "window": args["window"], "max_height": max(r.height for r in done),
                  "max_width": max(r.width for r in done)},
        "source": inp.source,
        "totals": {"train_rows": n, "train_written": len(ok_train),
                   "train_rejected": sum(r["split"] == "train" for r in rejected),
                   "test_images": len(inp.test_names), "test_written": len(ok_test),
                   "test_rejected": sum(r["split"] == "test" for r in rejected)},
        "counts": _counts(inp, ok_train, fold_of_ok, ok_test, n_folds),
        "shards": shards, "samples_csv": fmt.SAMPLES_CSV,
        "samples_csv_sha256": file_sha256(out / fmt.SAMPLES_CSV), "rejected": rejected, "args": args,
    }
    sync_dir(out)  # every shard's rename is durable before the manifest says the output is complete
    write_bytes_atomic(out / fmt.MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8") + b"\n")
    sync_dir(out)
    return manifest


def _counts(inp, ok_train, fold_of_ok, ok_test, n_folds) -> dict:
    counts = {}
    for k in range(1, n_folds + 1):
        lab = inp.labels[ok_train[fold_of_ok == k]]
        counts[fmt.fold_split(k)] = {
            "samples": len(lab),
            "positives": {c: int((lab[:, j] == 1).sum()) for j, c in enumerate(inp.label_names)},
            "unknown": {c: int(np.isnan(lab[:, j]).sum()) for j, c in enumerate(inp.label_names)},
        }
    counts[fmt.TEST_SPLIT] = {"samples": len(ok_test)}
    return counts


def remove_own_files(out: Path, keep=lambda p: False) -> int:
    """Delete what cxr-shard wrote in `out` (but what `keep` names), the manifest first (a crash here leaves an
    incomplete output)."""
    n = 0
    if (out / fmt.MANIFEST).exists():
        (out / fmt.MANIFEST).unlink()
        n += 1
    for p in sorted(out.iterdir()):
        if fmt.is_own(p.name) and p.is_file() and not (fmt.OWN_FILE.match(p.name) and keep(p)):
            p.unlink()
            n += 1
    return n
