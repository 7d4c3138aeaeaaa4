"""cxr-shard's writer: CSV + images -> fold/test WebDataset shards, DALI indexes, samples.csv, manifest (last).

One pass decodes, windows, shrinks and encodes every image in worker processes (every usable CPU by default) into
a spool in the work folder beside OUT (so each image is decoded once) and collects the unreadable ones; no output
file in OUT is created, changed or removed before that pass has seen every input. Then folds are made on the
accepted rows, the samples are shuffled, the tars are assembled from the spool (in the same pool) under temporary
names and renamed, and `manifest.json` (temp + rename) comes last. An output without a manifest is incomplete by
definition. The work folder journals every finished spool chunk and tar (`workdir.py`): a rerun with the same
arguments after a kill or a stop for bad images reuses what still checks out and produces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.atomic import temp_target
from cxr_fast.data.folds import make_folds
from cxr_fast.data.leakage import warn_leakage
from cxr_fast.data.table import list_test_images, read_table
from cxr_fast.disk import disk_full, disk_full_message
from cxr_fast.errors import UserError
from cxr_fast.images.window import DEFAULT_MAX_PIXELS
from cxr_fast.lock import folder_lock
from cxr_fast.shards import format as fmt
from cxr_fast.shards import read as rd
from cxr_fast.shards.assemble import Assembly, plan_shards
from cxr_fast.shards.cpus import default_workers, worker_pool
from cxr_fast.shards.encode import EncodeOptions
from cxr_fast.shards.manifest import finish, remove_own_files
from cxr_fast.shards.space import check_space
from cxr_fast.shards.workdir import WorkDir, encode_pass

_SHOWN = 5
__all__ = ["default_workers", "write_shards", "write_test_shards"]


@dataclass
class _Inputs:
    """Everything the shards are made of, training part optional (test-only shards for cxr-predict)."""

    label_names: list[str]
    names: list[str]
    labels: np.ndarray
    groups: np.ndarray | None
    train_dir: Path | None
    test_names: list[str]
    test_dir: Path | None
    policies: dict | None
    source: dict


def write_shards(
    train_csv: str | Path, train_dir: str | Path, out: str | Path, *, test_dir: str | Path | None = None,
    folds: int = 3, seed: int = 42, labels: str | list[str] | None = None, image_col: str = "Image_name",
    group_col: str | None = None, uncertain: str = "zeros", missing: str = "zeros", resize: int = 512,
    image_format: str = "jpg", quality: int = 95, samples_per_shard: int = 1000, workers: int | None = None,
    skip_bad: bool = False, overwrite: bool = False, window: tuple[float, float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True, log: Callable[[str], None] | None = print,
) -> dict:
    """Build `out` (or find it up to date) from a training CSV and image folders; returns the manifest.

    UserError for bad flags, a bad CSV, unreadable images (unless `skip_bad`), or an existing output made with
    other arguments (unless `overwrite`).
    """
    train_dir = Path(train_dir).absolute()
    if not train_dir.is_dir():
        raise UserError(f"{train_dir}: training image directory not found")
    table = read_table(train_csv, image_col=image_col, labels=labels, uncertain=uncertain, missing=missing,
                       group_col=group_col)
    warn_leakage(train_csv, image_col=image_col, label_names=table.label_names, group_col=group_col, log=log)
    test_names = list_test_images(test_dir) if test_dir is not None else []
    inputs = _Inputs(
        label_names=table.label_names, names=table.names, labels=table.labels, groups=table.groups,
        train_dir=train_dir, test_names=test_names, test_dir=Path(test_dir).absolute() if test_dir else None,
        policies={"uncertain": uncertain, "missing": missing},
        source={"train_csv": str(Path(train_csv).absolute()), "csv_sha256": table.csv_sha256,
                "train_dir": str(train_dir), "test_dir": str(Path(test_dir).absolute()) if test_dir else None},
    )
    return _build(inputs, Path(out), {"image_col": image_col, "group_col": group_col, "folds": folds, "seed": seed},
                  resize=resize, image_format=image_format, quality=quality, samples_per_shard=samples_per_shard,
                  workers=workers, skip_bad=skip_bad, overwrite=overwrite, window=window, max_pixels=max_pixels,
                  progress=progress, log=log)


def write_test_shards(
    test_dir: str | Path, out: str | Path, labels: list[str], *, resize: int = 512, image_format: str = "jpg",
    quality: int = 95, samples_per_shard: int = 1000, workers: int | None = None, skip_bad: bool = False,
    overwrite: bool = False, window: tuple[float, float] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True, log: Callable[[str], None] | None = print,
) -> dict:
    """Test-only shards (no folds: manifest `folds` = 0, splits = ["test"]) with all-NaN label vectors of len(labels)."""
    test_names = list_test_images(test_dir)
    test_dir = Path(test_dir).absolute()
    inputs = _Inputs(label_names=list(labels), names=[], labels=np.zeros((0, len(labels)), np.float32),
                     groups=None, train_dir=None, test_names=test_names, test_dir=test_dir, policies=None,
                     source={"train_csv": None, "csv_sha256": None, "train_dir": None, "test_dir": str(test_dir)})
    return _build(inputs, Path(out), {"image_col": None, "group_col": None, "folds": 0, "seed": 0}, resize=resize,
                  image_format=image_format, quality=quality, samples_per_shard=samples_per_shard, workers=workers,
                  skip_bad=skip_bad, overwrite=overwrite, window=window, max_pixels=max_pixels, progress=progress,
                  log=log)


def _build(inp: _Inputs, out: Path, split_args: dict, *, resize, image_format, quality, samples_per_shard, workers,
           skip_bad, overwrite, window, max_pixels, progress, log) -> dict:
    log = log or (lambda msg: None)
    _check_flags(resize, image_format, quality, samples_per_shard, workers, window, max_pixels)
    _check_splits(inp, split_args["folds"])
    out = out.absolute()
    args = {
        **inp.source, "test_images": len(inp.test_names),
        "test_names_sha256": hashlib.sha256("\n".join(inp.test_names).encode()).hexdigest(),
        "labels": inp.label_names, **split_args, **(inp.policies or {"uncertain": None, "missing": None}),
        "resize": resize, "format": image_format, "quality": quality if image_format == "jpg" else None,
        "window": list(window) if window else None, "max_pixels": max_pixels,
        "samples_per_shard": samples_per_shard, "skip_bad": skip_bad,
    }
    args = json.loads(json.dumps(args))  # the form it takes in the manifest, so the comparison is exact
    opts = EncodeOptions(resize, image_format, quality, tuple(window) if window else None, max_pixels)
    created = not out.exists()
    try:
        with folder_lock(out, "cxr-shard"):  # one build per OUT at a time; the kernel releases it if we are killed
            return _locked_build(inp, out, split_args, args, opts, overwrite=overwrite, skip_bad=skip_bad,
                                 workers=workers, samples_per_shard=samples_per_shard, progress=progress, log=log)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _locked_build(inp: _Inputs, out: Path, split_args: dict, args: dict, opts: EncodeOptions, *, overwrite,
                  skip_bad, workers, samples_per_shard, progress, log) -> dict:
    """The build itself, under OUT's lock: up-to-date check, space check, encode pass, folds, tars, manifest."""
    state, old = _existing_state(out, args, overwrite)
    if state == "uptodate":
        shutil.rmtree(fmt.work_dir(out), ignore_errors=True)  # a run killed after its manifest was written
        log(f"{out} is up to date (its manifest.json was written with these arguments); nothing to do")
        return old

    workers = default_workers() if workers is None else workers
    n, t0 = len(inp.names), time.perf_counter()
    paths = [str(inp.train_dir / s) for s in inp.names] + [str(inp.test_dir / s) for s in inp.test_names]
    wd = WorkDir(out, paths, opts, args, workers)
    needed = check_space(out, paths, opts, samples_per_shard, log)  # refuse now what clearly cannot fit
    try:
        with worker_pool(workers) as pool:
            resumed = wd.open()

            def folds_of(rows: np.ndarray):
                if not n:
                    return np.zeros(0, np.int64), None
                return wd.folds(rows, lambda: make_folds(inp.labels[rows], split_args["folds"], split_args["seed"],
                                                         None if inp.groups is None else inp.groups[rows]))

            # The folds of every row (what a build without unreadable images uses) before the long pass, while the
            # workers start: journaled, so a rerun after a kill does not compute them again.
            folds_of(np.arange(n, dtype=np.int64))
            enc = encode_pass(paths, opts, wd, pool, progress, log)
            rejected, ok_train, ok_test = _accepted(inp, enc, len(paths), skip_bad, wd)
            fold_of_ok, method = folds_of(ok_train)
            out.mkdir(exist_ok=True)
            _clean(out, state, resumed, log)
            asm = Assembly(out, inp.label_names, inp.names, inp.labels, inp.test_names, enc, wd, opts.image_format,
                           progress)
            shards = asm.run(pool, plan_shards(ok_train, fold_of_ok, ok_test, split_args["folds"], split_args["seed"],
                                               samples_per_shard))
        if asm.reused:
            log(f"reused {asm.reused} of {len(shards)} tars finished by the earlier run")
        manifest = finish(inp, out, asm, shards, split_args, method, args, rejected, ok_train, fold_of_ok, ok_test,
                          enc)
    except (OSError, RuntimeError) as e:
        if not disk_full(e):
            raise
        _remove_temps(out, wd)  # the pool is stopped: its half-written files only take space now
        raise UserError(disk_full_message(out, f"the shards of {len(paths)} images (spool in {wd.path})", needed,
                                          hint="then rerun the same command: finished work is kept")) from None
    wd.remove()  # only after the manifest: until then a rerun resumes from it

    per = ", ".join(f"{s} {manifest['counts'][s]['samples']}" for s in rd.manifest_splits(manifest))
    log(f"wrote {len(ok_train) + len(ok_test)} samples ({per}) in {len(shards)} shards, "
        f"{sum(s['bytes'] for s in shards) / 1e6:.1f} MB, to {out} in {time.perf_counter() - t0:.1f} s with "
        f"{max(workers, 1)} worker{'s' if workers > 1 else ''}; encoded {enc.encoded} images"
        + (f", reused {enc.reused} from the earlier run" if enc.reused else "")
        + (f"; {len(rejected)} rejected images are listed in manifest.json" if rejected else ""))
    return manifest


def _remove_temps(out: Path, wd: WorkDir) -> None:
    """Half-written files of a failed build: temporary files in OUT and the work folder (finished ones stay)."""
    wd.remove_temps()
    if out.is_dir():
        for p in out.iterdir():
            if temp_target(p.name) and fmt.is_own(p.name):
                p.unlink(missing_ok=True)


def _check_splits(inp: _Inputs, n_folds: int) -> None:
    clash = [c for c in inp.label_names if c in fmt.SAMPLES_COLUMNS]
    if clash:
        raise UserError(f"label {clash[0]!r} clashes with a samples.csv column ({', '.join(fmt.SAMPLES_COLUMNS)}); "
                        f"rename it")
    if inp.names:  # fail on impossible folds now, not after the long encoding pass (make_folds says it too)
        units = len(set(inp.groups)) if inp.groups is not None else len(inp.names)
        if n_folds < 2 or units < n_folds:
            raise UserError(f"--folds {n_folds} needs at least 2 folds and at most one per "
                            f"{'group' if inp.groups is not None else 'training row'} ({units})")


def _accepted(inp: _Inputs, enc, total: int, skip_bad: bool, wd: WorkDir):
    """(rejected inputs, accepted training rows, accepted test images); UserError for bad images without --skip_bad."""
    n = len(inp.names)
    reasons = enc.reasons
    rejected = [{"name": inp.names[j] if j < n else inp.test_names[j - n], "split": "train" if j < n else "test",
                 "row": j if j < n else None, "reason": reasons[j]}
                for j in sorted(reasons)]
    if rejected and not skip_bad:
        shown = "; ".join(f"{r['name']}" + (f" (row {r['row']})" if r["row"] is not None else " (test image)")
                          + f": {r['reason']}" for r in rejected[:_SHOWN])
        raise UserError(f"{len(rejected)} of {total} images cannot be used: {shown}"
                        f"{'; ...' if len(rejected) > _SHOWN else ''} -- fix them or pass --skip_bad to leave "
                        f"them out (no shard was written; a rerun reuses the {total - len(rejected)} images encoded "
                        f"in {wd.path})")
    ok_train = np.array([j for j in range(n) if j not in reasons], dtype=np.int64)
    ok_test = np.array([j for j in range(len(inp.test_names)) if n + j not in reasons], dtype=np.int64)
    if n and not len(ok_train):
        raise UserError(f"none of the {n} training images can be read (first: {rejected[0]['name']}: "
                        f"{rejected[0]['reason']})")
    if not len(ok_train) and not len(ok_test):
        raise UserError(f"{inp.test_dir}: none of the test images can be read")
    return rejected, ok_train, ok_test


def _clean(out: Path, state: str, resumed: bool, log) -> None:
    """Remove what an earlier run left in OUT, except (when resuming) the tars it finished: the assembly checks and
    keeps those, and replaces or removes the rest."""
    shutil.rmtree(out / fmt.SPOOL_DIR, ignore_errors=True)  # the spool of an older cxr-shard, inside OUT
    if state == "incomplete" and resumed:
        n = remove_own_files(out, keep=lambda p: p.suffix in (".tar", ".idx"))
        log(f"resuming an incomplete earlier run in {out}: removed {n} unfinished files; finished tars are "
            f"checked against the journal and kept")
    elif state in ("incomplete", "replace"):
        what = "an incomplete earlier run" if state == "incomplete" else "the old output"
        log(f"removed {remove_own_files(out)} files of {what} from {out}")


def _check_flags(resize, image_format, quality, samples_per_shard, workers, window, max_pixels) -> None:
    if resize < 0:
        raise UserError(f"--resize must be >= 0 (0 keeps the original size), got {resize}")
    if image_format not in ("jpg", "png"):
        raise UserError(f"--format must be jpg or png, got {image_format!r}")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {quality}")
    if samples_per_shard < 1:
        raise UserError(f"--samples_per_shard must be >= 1, got {samples_per_shard}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    if window is not None and not (len(window) == 2 and 0 <= window[0] < window[1] <= 100):
        raise UserError(f"--window needs two percentiles 0 <= low < high <= 100, got {window}")
    if max_pixels < 1:
        raise UserError(f"--max_pixels must be >= 1, got {max_pixels}")


def _existing_state(out: Path, args: dict, overwrite: bool) -> tuple[str, dict | None]:
    """'fresh', 'incomplete' (leftovers, no manifest), 'replace' (old output, --overwrite) or 'uptodate'."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if not out.exists():
        return "fresh", None
    if not (out / fmt.MANIFEST).exists():
        own = [p for p in out.iterdir() if fmt.is_own(p.name) or p.name == fmt.SPOOL_DIR]
        return ("incomplete" if own else "fresh"), None
    try:
        old = rd.load_manifest(out)
    except UserError as e:
        if overwrite:
            return "replace", None
        raise UserError(f"{out} holds output this cxr-shard cannot reuse ({e}); pass --overwrite to replace it"
                        ) from None
    if old.get("args") != args:
        if overwrite:
            return "replace", old
        prev = old.get("args") or {}
        diff = sorted(k for k in set(prev) | set(args) if prev.get(k) != args.get(k))
        raise UserError(f"{out} holds shards made with different arguments or inputs (differs in: {', '.join(diff)});"
                        f" pass --overwrite to replace them, or choose another --out")
    for s in old["shards"]:
        for name in (s["tar"], s["idx"]):
            p = out / name
            if not p.is_file() or (name == s["tar"] and p.stat().st_size != s["bytes"]):
                raise UserError(f"{p}: missing or of the wrong size although {out / fmt.MANIFEST} matches these "
                                f"arguments; pass --overwrite to rebuild")
    return "uptodate", old
