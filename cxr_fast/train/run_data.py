"""Where a run's samples come from: a CSV + image folders (file mode) or a shards folder (labels and folds from
its manifest). Either way the trainer asks the same questions: fold k's train/val SampleSets and the test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_fast.data.folds import make_folds
from cxr_fast.data.leakage import warn_leakage
from cxr_fast.data.samples import SampleSet
from cxr_fast.data.table import list_test_images, read_table
from cxr_fast.errors import UserError


@dataclass
class RunData:
    label_names: list[str]
    names: list[str]          # training image names, by index (CSV row)
    labels: np.ndarray        # (N, C) float32, NaN = unknown
    folds: np.ndarray         # (N,) fold id 1..K
    n_folds: int
    split_method: str
    train_dir: Path | None = None
    shards_root: Path | None = None
    manifest: dict | None = None
    test_names: list[str] | None = None
    test_dir: Path | None = None

    def fold_sets(self, k: int) -> tuple[SampleSet, SampleSet]:
        """(train, validation) samples of fold k: validation = fold k, train = every other fold."""
        if self.shards_root is not None:
            from cxr_fast.shards.format import fold_split
            from cxr_fast.shards.read import sample_set

            others = [fold_split(j) for j in range(1, self.n_folds + 1) if j != k]
            return (sample_set(self.shards_root, self.manifest, others),
                    sample_set(self.shards_root, self.manifest, [fold_split(k)]))
        return self._file_set(np.flatnonzero(self.folds != k)), self._file_set(np.flatnonzero(self.folds == k))

    def _file_set(self, rows: np.ndarray) -> SampleSet:
        return SampleSet(index=rows, labels=self.labels[rows], files=[self.train_dir / self.names[i] for i in rows])

    def test_set(self) -> SampleSet | None:
        if self.test_names is None:
            return None
        if self.shards_root is not None and self.test_dir is None:
            from cxr_fast.shards.read import sample_set

            return sample_set(self.shards_root, self.manifest, ["test"])
        return test_file_set(self.test_dir, self.test_names, len(self.label_names))


def test_file_set(test_dir: Path, names: list[str], n_labels: int) -> SampleSet:
    n = len(names)
    return SampleSet(index=np.arange(n), labels=np.full((n, n_labels), np.nan, np.float32),
                     files=[Path(test_dir) / s for s in names])


def say_left_out(bad: list[tuple[str, str]], log=print, shown: int = 20) -> None:
    """The --skip_bad note: how many unreadable test images were left out, and (the first `shown` of) which, why."""
    if bad:
        log(f"--skip_bad: left out {len(bad)} unreadable test image(s): "
            + "; ".join(f"{name}: {why}" for name, why in bad[:shown]) + (" ..." if len(bad) > shown else ""))


def checked_test_names(test_dir, skip_bad: bool = False, log=print) -> list[str]:
    """The test folder's images, each decoded once now so a bad one stops the run before training (not after every
    fold); with `skip_bad` the unreadable ones are left out and listed instead (through `log`: rank 0's print).
    Under torchrun only rank 0 decodes (every core it has) and the others get its answer, or its error line."""
    from cxr_fast import dist

    return dist.run_on_main(lambda: _checked_test_names(test_dir, skip_bad, log))


def _checked_test_names(test_dir, skip_bad: bool, log) -> list[str]:
    from cxr_fast.images.check import unreadable

    names = list_test_images(test_dir)
    bad = unreadable([Path(test_dir) / n for n in names])
    if bad and not skip_bad:
        i, why = min(bad.items())
        raise UserError(f"{Path(test_dir) / names[i]}: {why} ({len(bad)} unreadable test image(s); fix or remove "
                        f"them, or pass --skip_bad to leave them out)")
    if bad:
        say_left_out([(names[i], why) for i, why in sorted(bad.items())], log)
        if len(bad) == len(names):
            raise UserError(f"{test_dir}: none of the {len(names)} test images can be read")
    return [n for i, n in enumerate(names) if i not in bad]


def from_csv(train_csv, train_dir, test_dir, *, image_col, labels, uncertain, missing, group_col, folds: int,
             seed: int, skip_bad: bool = False, log=print) -> RunData:
    """`log` gets the notes (label columns chosen and left out, images skipped): `dist.log` under torchrun, so they
    are printed once, not once per process."""
    table = read_table(train_csv, image_col=image_col, labels=labels, uncertain=uncertain, missing=missing,
                       group_col=group_col, log=log)
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise UserError(f"{train_dir}: training image directory not found")
    _check_files_exist(train_dir, table.names, what=f"{train_csv} lists")
    warn_leakage(train_csv, image_col=image_col, label_names=table.label_names, group_col=group_col, log=log)
    fold, method = make_folds(table.labels, folds, seed, table.groups)
    return RunData(label_names=table.label_names, names=table.names, labels=table.labels, folds=fold,
                   n_folds=folds, split_method=method, train_dir=train_dir,
                   test_names=checked_test_names(test_dir, skip_bad, log) if test_dir else None,
                   test_dir=Path(test_dir) if test_dir else None)


def _check_files_exist(folder: Path, names: list[str], what: str) -> None:
    """Missing or empty image files are found before training starts (undecodable ones when first read)."""
    dirs = [n for n in names if (folder / n).is_dir()]
    if dirs:
        raise UserError(f"{what} {folder / dirs[0]}: is a directory, not an image file"
                        f"{f' ({len(dirs)} such rows)' if len(dirs) > 1 else ''}")
    bad = [n for n in names if not (folder / n).is_file() or (folder / n).stat().st_size == 0]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5])
        raise UserError(f"{what} {len(bad)} image(s) missing or empty under {folder}: {shown}"
                        f"{' ...' if len(bad) > 5 else ''}")


def names_by_index(samples) -> list[str]:
    """Image names of a samples.csv selection, placed at their index (a list with "" where --skip_bad left a hole)."""
    names = [""] * (int(samples["index"].max()) + 1 if len(samples) else 0)
    for i, name in zip(samples["index"], samples["name"]):
        names[int(i)] = name
    return names


def from_shards(root, labels: list[str] | None = None, test_dir=None, skip_bad: bool = False, log=print) -> RunData:
    """Labels, folds and names come from the shards' manifest and samples.csv; test images from the shards' test
    split, or from `test_dir` as files when the shards have none."""
    from cxr_fast.shards.read import load_manifest, read_samples

    root = Path(root)
    manifest = load_manifest(root)
    if labels is not None and list(labels) != list(manifest["labels"]):
        raise UserError(f"{root}/manifest.json: the shards hold labels {manifest['labels']}, "
                        f"not the --labels given ({labels})")
    df = read_samples(root)
    train = df[df["split"] != "test"]
    names = names_by_index(train)
    n = len(names)
    lab = np.full((n, len(manifest["labels"])), np.nan, np.float32)
    fold = np.zeros(n, dtype=np.int64)  # 0 = not in the shards (a CSV row rejected by --skip_bad)
    idx = train["index"].to_numpy()
    lab[idx] = train[manifest["labels"]].to_numpy(np.float32)
    fold[idx] = train["fold"].to_numpy()
    test = df[df["split"] == "test"]
    if len(test):  # the shards' own test split wins; --test_dir is read as files only for shards without one
        if test_dir is not None:
            log(f"note: {root} has its own test split ({len(test)} images); --test_dir {test_dir} is not used")
        test_names, test_dir = names_by_index(test), None
    else:
        test_names = checked_test_names(test_dir, skip_bad, log) if test_dir is not None else None
    return RunData(label_names=list(manifest["labels"]), names=names, labels=lab, folds=fold,
                   n_folds=int(manifest["folds"]), split_method=manifest["split_method"], shards_root=root,
                   manifest=manifest, test_names=test_names, test_dir=Path(test_dir) if test_dir else None)


def shard_resize(img_size: int) -> int:
    """Longest side of images stored in shards built for a run: 512 px, or more for larger inputs."""
    return max(512, int(img_size))


def shards_for_training(cfg, build: bool = True) -> Path:
    """Build (or reuse) shards for `cxr-train --pipeline dali` without `--shards`: `<shards_root>/<csv stem>-<hash>`,
    the hash covering the CSV's bytes and every setting that changes the shards, so a changed CSV or setting gets
    new shards and an unchanged one reuses the old (cxr-shard's own up-to-date check). `cfg` is the run's
    `TrainConfig`. Under DDP only rank 0 builds (`build=True`), with every usable core (not --num_workers, which
    sizes the training loaders); the others name the folder and wait (`dist.wait_for_main`)."""
    import hashlib
    import json

    from cxr_fast.data.table import file_sha256
    from cxr_fast.shards.writer import write_shards

    csv = Path(cfg.train_csv)
    if not csv.is_file():
        raise UserError(f"{csv}: CSV file not found")
    resize = shard_resize(cfg.img_size)
    keys = {"csv_sha256": file_sha256(csv), "train_dir": str(Path(cfg.train_dir).absolute()),
            "test_dir": str(Path(cfg.test_dir).absolute()) if cfg.test_dir else None, "resize": resize,
            **{k: getattr(cfg, k) for k in ("labels", "image_col", "group_col", "uncertain", "missing", "folds",
                                            "seed", "skip_bad")}}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cfg.shards_root or "shards") / f"{csv.stem}-{digest}"
    if not build:
        return out
    print(f"--pipeline dali without --shards: shards for this CSV and these settings go to {out}", flush=True)
    write_shards(csv, cfg.train_dir, out, test_dir=cfg.test_dir, folds=cfg.folds, seed=cfg.seed, labels=cfg.labels,
                 image_col=cfg.image_col, group_col=cfg.group_col, uncertain=cfg.uncertain, missing=cfg.missing,
                 resize=resize, workers=None, progress=cfg.progress, skip_bad=cfg.skip_bad)
    return out
