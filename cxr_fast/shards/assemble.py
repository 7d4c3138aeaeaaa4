"""Assembling shards from the encode spool: reproducible tars with their DALI index, samples.csv, atomic renames."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr_fast.shards import format as fmt


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def commit(path: Path) -> None:
    """fsync `path.tmp`, then rename it to `path` (atomic on POSIX)."""
    with open(tmp_path(path), "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp_path(path), path)


def write_atomic(path: Path, data: bytes) -> None:
    with open(tmp_path(path), "wb") as f:
        f.write(data)
    commit(path)


def sync_dir(path: Path) -> None:
    """fsync a directory: makes the renames in it durable (before the manifest claims the output is complete)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashWriter:
    """File wrapper that hashes and counts what tarfile writes."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
    return ti


class Assembly:
    """Cuts the shuffled accepted samples into tars (+ .idx) and keeps the rows samples.csv needs.

    `recs[job]` = (spool offset, nbytes, height, width, orig width, orig height, bit depth) of an encoded image;
    jobs are training rows 0..N-1, then test images N..N+T-1.
    """

    def __init__(self, out: Path, label_names: list[str], train_names: list[str], train_labels: np.ndarray,
                 test_names: list[str], recs: list, chunk_of: np.ndarray, spool: Path, ext: str, progress: bool):
        self.out, self.label_names = out, label_names
        self.train_names, self.train_labels, self.test_names = train_names, train_labels, test_names
        self.recs, self.chunk_of, self.spool, self.ext, self.progress = recs, chunk_of, spool, ext, progress
        self.rows: list[tuple] = []  # samples.csv rows, in shard order

    def run(self, ok_train: np.ndarray, fold_of_ok: np.ndarray, ok_test: np.ndarray, n_folds: int, seed: int,
            per_shard: int) -> list[dict]:
        """Write every shard; returns the manifest's shard list (fold1.., foldK.., test..)."""
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(ok_train))
        order_test = ok_test[rng.permutation(len(ok_test))]
        plan = []
        for k in range(1, n_folds + 1):
            rows = ok_train[perm][fold_of_ok[perm] == k]
            plan += [(f"fold{k}", k, i, rows[s:s + per_shard]) for i, s in enumerate(range(0, len(rows), per_shard))]
        plan += [("test", None, i, order_test[s:s + per_shard])
                 for i, s in enumerate(range(0, len(order_test), per_shard))]
        return [self._write_shard(split, k, i, rows)
                for split, k, i, rows in tqdm(plan, unit="shard", desc="write", disable=not self.progress,
                                              dynamic_ncols=True)]

    def _read_spool(self, job: int) -> bytes:
        off, nbytes = self.recs[job][0], self.recs[job][1]
        with open(self.spool / f"c{self.chunk_of[job]:06d}.bin", "rb") as f:
            f.seek(off)
            data = f.read(nbytes)
        assert len(data) == nbytes, "spool file shorter than recorded"
        return data

    def _sample(self, split: str, k: int | None, r: int) -> tuple[str, np.ndarray, dict[str, bytes]]:
        job = r if split != "test" else len(self.train_names) + r
        rec = self.recs[job]
        if split == "test":
            name, lab = self.test_names[r], np.full(len(self.label_names), np.nan, dtype=np.float32)
        else:
            name, lab = self.train_names[r], self.train_labels[r]
        meta = {"name": name, "split": split, "fold": k, "width": rec[4], "height": rec[5], "bit_depth": rec[6]}
        return name, lab, {
            "index": np.array([r], dtype="<i8").tobytes(),
            "json": json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            "labels": np.asarray(lab, dtype="<f4").tobytes(),
            self.ext: self._read_spool(job),
        }

    def _write_shard(self, split: str, k: int | None, i: int, rows: np.ndarray) -> dict:
        stem = fmt.shard_stem(split, i)
        tar_path, idx_path = self.out / f"{stem}.tar", self.out / f"{stem}.idx"
        members = []  # (name, data offset, size), for the index
        with open(tmp_path(tar_path), "wb") as raw:
            hw = _HashWriter(raw)
            # USTAR: our member names are short ASCII, so no PAX/GNU extension headers (what wds2idx reads best)
            with tarfile.open(fileobj=hw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for r in map(int, rows):
                    name, lab, comps = self._sample(split, k, r)
                    key = fmt.sample_key(split, r)
                    for ext in sorted(comps):  # sorted members: reproducible, one key's members adjacent
                        data = comps[ext]
                        ti = _tarinfo(f"{key}.{ext}", len(data))
                        tar.addfile(ti, io.BytesIO(data))
                        # tar.offset is now past the data, padded to 512 bytes
                        members.append((ti.name, tar.offset - 512 * math.ceil(len(data) / 512), len(data)))
                    self.rows.append((r, split, k, name, lab))
        commit(tar_path)
        idx = fmt.index_text(members).encode("ascii")
        write_atomic(idx_path, idx)
        return {"split": split, "tar": tar_path.name, "idx": idx_path.name, "samples": len(rows),
                "bytes": hw.n, "sha256": hw.h.hexdigest(), "idx_sha256": hashlib.sha256(idx).hexdigest()}

    def write_samples_csv(self) -> None:
        df = pd.DataFrame({
            "index": [r[0] for r in self.rows], "split": [r[1] for r in self.rows],
            "fold": pd.array([r[2] for r in self.rows], dtype="Int64"), "name": [r[3] for r in self.rows],
        })
        c = len(self.label_names)
        lab = np.stack([r[4] for r in self.rows]) if self.rows else np.zeros((0, c), np.float32)
        for j, name in enumerate(self.label_names):
            df[f"_label{j}"] = lab[:, j]  # positional: a label may share a name with nothing here
        df.columns = fmt.SAMPLES_COLUMNS + list(self.label_names)
        path = self.out / fmt.SAMPLES_CSV
        df.to_csv(tmp_path(path), index=False, float_format="%g", na_rep="", encoding="utf-8")
        commit(path)
