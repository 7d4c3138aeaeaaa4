"""K-fold assignment: multilabel-stratified (MIS), a real stratified fallback, patient groups kept whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError

MIS = "multilabel-stratified"
FALLBACK = "pattern-stratified"


def _positives(labels: np.ndarray) -> np.ndarray:
    """Binary positive indicator; unknown (NaN) counts as not positive for stratification."""
    return np.nan_to_num(labels, nan=0.0) > 0.5


def _pattern_ids(pos: np.ndarray, n_folds: int) -> np.ndarray:
    """Stratum id per row: its label pattern, with rare patterns merged so that each stratum can fill every fold.

    Patterns are keyed by a sha1 of their bits (stable across processes, unlike Python's salted `hash()`).
    A pattern seen fewer than `n_folds` times is merged into the stratum of its rarest positive label
    (so rare labels still spread over the folds), then into one 'rare' stratum, then into the largest stratum.
    """
    keys = np.array([hashlib.sha1(np.packbits(r).tobytes()).hexdigest() for r in pos])
    counts = pd.Series(keys).value_counts()
    strata = keys.astype(object)
    rare = counts[counts < n_folds].index
    if len(rare):
        prevalence = pos.sum(0)
        for i in np.flatnonzero(pd.Series(keys).isin(rare).to_numpy()):
            on = np.flatnonzero(pos[i])
            strata[i] = f"label:{on[np.argmin(prevalence[on])]}" if len(on) else "label:none"
        counts = pd.Series(strata).value_counts()
        still = pd.Series(strata).isin(counts[counts < n_folds].index).to_numpy()
        strata[still] = "rare"
        counts = pd.Series(strata).value_counts()
        if counts.get("rare", n_folds) < n_folds:
            strata[strata == "rare"] = counts.drop("rare").idxmax() if len(counts) > 1 else "rare"
    _, ids = np.unique(strata.astype(str), return_inverse=True)
    return ids


def make_folds(
    labels: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Assign each row a fold in 1..n_folds. Returns (fold per row, method name).

    MIS (iterative-stratification) is used unless some label has fewer positives than folds, in which case the
    pattern-stratified fallback is used. With `groups`, folds are assigned per group (labels aggregated by max),
    so no group is split across folds.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise UserError(f"--folds must be at least 2, got {n_folds}")
    pos = _positives(labels)
    if groups is not None:
        gids, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        unit_pos = np.zeros((len(gids), pos.shape[1]), dtype=bool)
        np.logical_or.at(unit_pos, inverse, pos)
        what = "groups"
    else:
        inverse = np.arange(len(pos))
        unit_pos = pos
        what = "samples"
    n_units = len(unit_pos)
    if n_units < n_folds:
        raise UserError(f"--folds {n_folds} is more than the number of {what} ({n_units})")

    per_label = unit_pos.sum(0)
    use_mis = not np.any((per_label > 0) & (per_label < n_folds))
    unit_fold = np.zeros(n_units, dtype=np.int64)
    x = np.zeros((n_units, 1))
    if use_mis:
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, unit_pos.astype(int))
        method = MIS
    else:
        strata = _pattern_ids(unit_pos, n_folds)
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, strata)
        method = FALLBACK
    for k, (_, val_idx) in enumerate(splits, start=1):
        unit_fold[val_idx] = k
    assert (unit_fold > 0).all()
    return unit_fold[inverse], method


def write_folds_csv(path: str | Path, names: list[str], folds: np.ndarray, image_col: str = "Image_name") -> None:
    """`folds.csv`: image name, fold (1..K)."""
    pd.DataFrame({image_col: names, "fold": folds.astype(int)}).to_csv(path, index=False)
