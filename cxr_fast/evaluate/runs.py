"""Reading a training run folder's out-of-fold outputs: oof.csv, oof_labels.csv and folds.csv."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.data.csv_read import read_csv_text
from cxr_fast.data.table import read_table
from cxr_fast.errors import UserError
from cxr_fast.evaluate.inputs import NOT_LABELS, read_probabilities
from cxr_fast.run_folder import RunPaths


@dataclass
class RunOOF:
    run_dir: Path
    image_col: str
    names: list[str]
    folds: np.ndarray          # (N,) fold of each OOF row
    probs: np.ndarray          # (N, C)
    labels: np.ndarray         # (N, C) NaN = unknown
    label_names: list[str]


def read_folds(run_dir: Path) -> pd.Series:
    """folds.csv as a Series image name -> fold."""
    path = RunPaths(run_dir).folds_csv
    df = read_csv_text(path, "folds")
    if len(df.columns) < 2 or "fold" not in df.columns:
        raise UserError(f"{path}: expected an image column and a 'fold' column")
    image_col = next(c for c in df.columns if c != "fold")
    return pd.Series(pd.to_numeric(df["fold"], errors="coerce").to_numpy(), index=df[image_col].astype(str),
                     name=image_col)


def read_run(run_dir: str | Path, labels: list[str] | None = None) -> RunOOF:
    """The OOF predictions of a run with their truth (oof_labels.csv, unknown kept as NaN), in oof.csv's order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    paths = RunPaths(run_dir)
    oof_path, truth_path = paths.oof, paths.oof_labels
    for p in (oof_path, truth_path):
        if not p.is_file():
            raise UserError(f"{p}: not found (written at the end of a cxr-train run)")
    cols = [str(c).strip() for c in read_csv_text(oof_path, "predictions").columns]
    image_col = cols[0]
    names = labels or [c for c in cols[1:] if c not in NOT_LABELS]
    if not names:
        raise UserError(f"{oof_path}: no probability columns")
    probs = read_probabilities(oof_path, image_col, names)
    fold_col = read_csv_text(oof_path, "predictions")
    folds = (pd.to_numeric(fold_col["fold"], errors="coerce").to_numpy() if "fold" in fold_col.columns
             else np.zeros(len(probs)))
    t = read_table(truth_path, image_col=image_col, labels=names, uncertain="ignore", missing="ignore", log=None)
    truth = pd.DataFrame(t.labels, index=pd.Index(t.names), columns=names)
    absent = [n for n in probs.index if n not in truth.index]
    if absent:
        raise UserError(f"{truth_path}: no truth for {len(absent)} OOF image(s), e.g. {absent[0]!r}")
    order = list(probs.index)
    return RunOOF(run_dir=run_dir, image_col=image_col, names=order, folds=folds,
                  probs=probs.to_numpy(dtype=np.float64), labels=truth.loc[order].to_numpy(dtype=np.float64),
                  label_names=list(names))


def training_csv(run_dir: Path) -> Path | None:
    """The run's training CSV: config.json's train_csv, or the train_csv its shards were built from (manifest
    source); None when neither is recorded or readable."""
    try:
        cfg = json.loads(RunPaths(run_dir).config.read_text())
    except (OSError, ValueError):
        return None
    if cfg.get("train_csv"):
        return Path(cfg["train_csv"])
    if cfg.get("shards"):
        from cxr_fast.shards.format import MANIFEST

        try:
            src = json.loads((Path(cfg["shards"]) / MANIFEST).read_text()).get("source") or {}
        except (OSError, ValueError, AttributeError):
            return None
        return Path(src["train_csv"]) if src.get("train_csv") else None
    return None


def run_csvs(run_dir: Path) -> list[Path]:
    """The CSVs of a run that can hold per-image columns (groups, patients): oof_labels.csv, folds.csv and the
    training CSV, those that exist."""
    paths = RunPaths(run_dir)
    cands = [paths.oof_labels, paths.folds_csv, training_csv(run_dir)]
    return [p for p in cands if p is not None and p.is_file()]


def read_groups(run_dir: Path, group_col: str, image_col: str, names: list[str]) -> np.ndarray:
    """Group ids of `names` from oof_labels.csv, folds.csv or the run's training CSV (config.json train_csv)."""
    cands = run_csvs(run_dir)
    for path in cands:
        if not path.is_file():
            continue
        df = read_csv_text(path)
        if group_col in df.columns and image_col in df.columns:
            g = pd.Series(df[group_col].astype(str).to_numpy(), index=df[image_col].astype(str))
            missing = [n for n in names if n not in g.index]
            if missing:
                raise UserError(f"{path}: no {group_col!r} for image {missing[0]!r}")
            return g.loc[names].to_numpy()
    raise UserError(f"--group_col {group_col!r}: no such column in "
                    f"{', '.join(str(c) for c in cands) or f'{run_dir} (no oof_labels.csv, folds.csv, training CSV)'}")
