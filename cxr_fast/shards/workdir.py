"""The work folder beside OUT (`.{name}.cxr-shard-tmp`): the encode spool and the journal a rerun resumes from.

    key.json              what the spool encodes (image paths and encode options, hashed) and its chunk size
    c000123.bin           chunk 123's encoded images back to back (written by a worker)
    c000123.json          the chunk's records and the .bin's size and sha256 (written once the .bin is complete)
    tars-<hash>/<stem>.json  a finished tar's planned rows, size and sha256s, under a hash of all the arguments

A rerun with the same image paths and encode options reuses every chunk whose .bin still has its recorded size and
sha256 and which held no unreadable image (a fixed image is read again); a rerun with the same arguments also keeps
every tar in OUT whose journal rows equal the plan's and whose tar and .idx still hash as recorded. Everything is
checked before reuse, so the journal is written atomically but without fsync. Nothing here is ever inside OUT: a
run stopped by bad images leaves OUT as it was, and a finished output has no work folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_fast.atomic import write_bytes_atomic
from cxr_fast.progress import progress_bar
from cxr_fast.shards import format as fmt
from cxr_fast.shards.cpus import pool_map
from cxr_fast.shards.encode import Encoded, EncodeOptions, check_file, encode_chunk

KEY = "key.json"
CHUNK_MAX = 64  # images per spool chunk: the unit of re-encoding after a kill
ENCODER = 2  # bumped when the same options encode other bytes (2: JPEGs decoded at a reduced DCT scale)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _load(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _dump(path: Path, obj) -> None:
    write_bytes_atomic(path, json.dumps(obj, separators=(",", ":")).encode(), durable=False)


class WorkDir:
    """Spool chunks and the tar journal of one build of OUT."""

    def __init__(self, out: Path, paths: list[str], opts: EncodeOptions, args: dict, workers: int):
        self.path = fmt.work_dir(out)
        self.n = len(paths)
        self.spool_key = {"paths_sha256": digest(paths), "jobs": self.n, "options": digest(repr(opts)),
                          "encoder": ENCODER}
        self.chunk = max(1, min(CHUNK_MAX, -(-self.n // (max(workers, 1) * 8))))
        self.tars = self.path / f"tars-{digest(args)[:16]}"
        self.resumed = False

    def open(self) -> bool:
        """Reuse a work folder of the same images and options (True) or start an empty one (False)."""
        old = _load(self.path / KEY)
        if old is not None and old.get("spool") == self.spool_key and isinstance(old.get("chunk"), int):
            self.chunk, self.resumed = old["chunk"], True  # the old chunk layout, whatever --workers is now
        else:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True)
            _dump(self.path / KEY, {"spool": self.spool_key, "chunk": self.chunk})
        for d in self.path.glob("tars-*"):
            if d != self.tars:
                shutil.rmtree(d, ignore_errors=True)  # journals of other arguments: their tars are not ours
        self.tars.mkdir(exist_ok=True)
        self.remove_temps()
        return self.resumed

    def remove_temps(self) -> int:
        """Delete the half-written files of a killed or failed (full disk) run: they only take space. The caller
        holds OUT's lock, so no other run is writing them."""
        n = 0
        for p in self.path.rglob("*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk, self.n)) for s in range(0, self.n, self.chunk)]

    def bin(self, cid: int) -> Path:
        return self.path / f"c{cid:06d}.bin"

    def load_chunk(self, cid: int, start: int, stop: int) -> dict | None:
        """A chunk's journal when it is complete and worth reusing (all its images were readable)."""
        j = _load(self.path / f"c{cid:06d}.json")
        if j is None or [it[0] for it in j.get("items", [])] != list(range(start, stop)):
            return None
        return j if all(it[1] is not None for it in j["items"]) else None

    def save_chunk(self, cid: int, items: list, nbytes: int, sha: str) -> None:
        _dump(self.path / f"c{cid:06d}.json", {"bytes": nbytes, "sha256": sha,
                                               "items": [[job, rec and list(rec), why] for job, rec, why in items]})

    def load_tar(self, stem: str) -> dict | None:
        return _load(self.tars / f"{stem}.json")

    def save_tar(self, stem: str, split: str, rows: list[int], shard: dict) -> None:
        _dump(self.tars / f"{stem}.json", {"split": split, "rows": rows, "shard": shard})

    def folds(self, ok_train: np.ndarray, make) -> tuple[np.ndarray, str | None]:
        """`make()` = (fold per accepted row, method), computed once per arguments and accepted rows: a resumed run
        reads the earlier run's folds instead of recomputing them (seconds at 100k rows)."""
        rows = hashlib.sha256(ok_train.astype("<i8").tobytes()).hexdigest()
        path = self.tars / f"folds-{rows[:16]}.json"
        old = _load(path)
        if old is not None and old.get("rows_sha256") == rows and len(old.get("folds", [])) == len(ok_train):
            return np.asarray(old["folds"], dtype=np.int64), old.get("method")
        fold_of_ok, method = make()
        _dump(path, {"rows_sha256": rows, "folds": [int(f) for f in fold_of_ok], "method": method})
        return fold_of_ok, method


@dataclass
class Encoding:
    """What the encode pass found: a record per job (None = unreadable), its spool chunk, and the reasons."""

    recs: list[Encoded | None]
    chunk_of: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)
    encoded: int = 0  # images encoded by this run (the rest were reused from the spool)
    reused: int = 0


def encode_pass(paths: list[str], opts: EncodeOptions, wd: WorkDir, pool, progress: bool, log) -> Encoding:
    """Encode every image not already in a verified spool chunk; journal each chunk as it finishes."""
    enc = Encoding([None] * len(paths), np.zeros(len(paths), dtype=np.int64))

    def take(cid: int, items) -> None:
        for job, rec, reason in items:
            enc.chunk_of[job] = cid
            if rec is None:
                enc.reasons[job] = reason
            else:
                enc.recs[job] = Encoded(*rec)

    todo, known = [], {}
    for cid, (a, b) in enumerate(wd.ranges()):
        j = wd.load_chunk(cid, a, b) if wd.resumed else None
        if j is None:
            todo.append(cid)
        else:
            known[cid] = j
    checks = [(cid, str(wd.bin(cid)), j["bytes"], j["sha256"]) for cid, j in known.items()]
    with progress_bar(len(checks), "check spool", progress and bool(checks), unit="chunk") as bar:
        for cid, ok in pool_map(pool, check_file, checks):
            if ok:
                take(cid, known[cid]["items"])
                enc.reused += len(known[cid]["items"])
            else:
                todo.append(cid)
            bar.update(1)
    ranges = wd.ranges()
    todo.sort()
    enc.encoded = sum(ranges[c][1] - ranges[c][0] for c in todo)
    if wd.resumed:
        log(f"resuming an incomplete earlier run from {wd.path}: {enc.reused} of {len(paths)} images already "
            f"encoded, encoding {enc.encoded} images")
    tasks = [(c, [(j, paths[j]) for j in range(*ranges[c])], str(wd.bin(c)), opts) for c in todo]
    with progress_bar(enc.encoded, "encode", progress, unit="img") as bar:
        for cid, items, nbytes, sha in pool_map(pool, encode_chunk, tasks):
            wd.save_chunk(cid, items, nbytes, sha)
            take(cid, items)
            bar.update(len(items))
    return enc
