"""Assembling shards from the encode spool: the shuffled plan of which sample goes in which tar, the tars themselves
(in the worker pool, `tars.write_tar`; tars an interrupted run finished are kept), and samples.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast import seeds
from cxr_fast.atomic import atomic_path
from cxr_fast.progress import progress_bar
from cxr_fast.shards import format as fmt
from cxr_fast.shards.cpus import pool_map
from cxr_fast.shards.tars import Member, TarTask, write_tar
from cxr_fast.shards.workdir import Encoding, WorkDir


def plan_shards(ok_train: np.ndarray, fold_of_ok: np.ndarray, ok_test: np.ndarray, n_folds: int, seed: int,
                per_shard: int) -> list[tuple[str, int | None, int, np.ndarray]]:
    """(split, fold, shard number, rows) of every tar, in manifest order (fold1.., foldK.., test..).

    One permutation of the accepted training rows, then one of the accepted test images, from the run seed's
    "shard_shuffle" stream (`cxr_fast.seeds`).
    """
    rng = seeds.rng(seed, "shard_shuffle")
    perm = rng.permutation(len(ok_train))
    order_test = ok_test[rng.permutation(len(ok_test))]
    plan = []
    for k in range(1, n_folds + 1):
        rows = ok_train[perm][fold_of_ok[perm] == k]
        plan += [(fmt.fold_split(k), k, i, rows[s:s + per_shard])
                 for i, s in enumerate(range(0, len(rows), per_shard))]
    plan += [(fmt.TEST_SPLIT, None, i, order_test[s:s + per_shard])
             for i, s in enumerate(range(0, len(order_test), per_shard))]
    return plan


class Assembly:
    """Cuts the shuffled accepted samples into tars (+ .idx) and keeps the rows samples.csv needs.

    Jobs (indexes into `enc.recs`) are training rows 0..N-1, then test images N..N+T-1.
    """

    def __init__(self, out: Path, label_names: list[str], train_names: list[str], train_labels: np.ndarray,
                 test_names: list[str], enc: Encoding, wd: WorkDir, ext: str, progress: bool):
        self.out, self.label_names = out, label_names
        self.train_names, self.train_labels, self.test_names = train_names, train_labels, test_names
        self.enc, self.wd, self.ext, self.progress = enc, wd, ext, progress
        self.rows: list[tuple] = []  # samples.csv rows, in shard order
        self.reused = 0

    def run(self, pool, plan: list[tuple[str, int | None, int, np.ndarray]]) -> list[dict]:
        """Write (or keep) every shard of `plan`; returns the manifest's shard list."""
        tasks = []
        for split, k, i, rows in plan:
            stem = fmt.shard_stem(split, i)
            rows = [int(r) for r in rows]
            old = self.wd.load_tar(stem)
            expect = old["shard"] if old and old.get("split") == split and old.get("rows") == rows else None
            tasks.append((TarTask(str(self.out), stem, split, self.ext, [], expect), k, rows))
            self.rows += [self._row(split, k, r) for r in rows]
        shards: dict[str, dict] = {}
        rows_of = {t.stem: rows for t, _, rows in tasks}
        with progress_bar(len(tasks), "write", self.progress, unit="shard") as bar:
            for stem, shard, kept in pool_map(pool, write_tar, (self._fill(*t) for t in tasks)):
                shards[stem] = shard
                if kept:
                    self.reused += 1
                else:
                    self.wd.save_tar(stem, shard["split"], rows_of[stem], shard)
                bar.update(1)
        return [shards[t.stem] for t, _, _ in tasks]

    def _row(self, split: str, k: int | None, r: int) -> tuple:
        if split == fmt.TEST_SPLIT:
            return r, split, k, self.test_names[r], np.full(len(self.label_names), np.nan, dtype=np.float32)
        return r, split, k, self.train_names[r], self.train_labels[r]

    def _fill(self, task: TarTask, k: int | None, rows: list[int]) -> TarTask:
        """The task with its samples' bytes and spool places (made lazily: only one tar's worth at a time here)."""
        if task.expect is not None:
            return task  # the worker only checks the finished tar's hashes
        return task._replace(samples=[self._member(task.split, k, r) for r in rows])

    def _member(self, split: str, k: int | None, r: int) -> Member:
        job = r if split != fmt.TEST_SPLIT else len(self.train_names) + r
        rec = self.enc.recs[job]
        _, _, _, name, lab = self._row(split, k, r)
        meta = {"name": name, "split": split, "fold": k, "width": rec.orig_width, "height": rec.orig_height,
                "bit_depth": rec.bit_depth}
        small = {
            "index": np.array([r], dtype=fmt.INDEX_DTYPE).tobytes(),
            "json": json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            "labels": np.asarray(lab, dtype=fmt.LABEL_DTYPE).tobytes(),
        }
        return Member(fmt.sample_key(split, r), small, str(self.wd.bin(int(self.enc.chunk_of[job]))), rec.offset,
                      rec.nbytes)

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
        with atomic_path(self.out / fmt.SAMPLES_CSV) as tmp:
            df.to_csv(tmp, index=False, float_format="%g", na_rep="", encoding="utf-8")
