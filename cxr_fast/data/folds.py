"""K-fold assignment: multilabel-stratified (MIS), a real stratified fallback, patient groups kept whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.atomic import atomic_path
from cxr_fast.errors import UserError

MIS = "multilabel-stratified"
FALLBACK = "pattern-stratified"
SINGLE = "label-stratified"  # one label column: iterative stratification needs two or more


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


_MAX_CANDIDATES = 256  # distinct unit rows per fold that the rebalancer weighs (bounds its time and memory)
_MAX_STEPS = 1000


def _rebalance(unit_fold: np.ndarray, feats: np.ndarray, n_folds: int, seed: int) -> None:
    """Polish a split in place: move a unit to another fold, or swap two, while that lowers the sum over folds and
    columns of (fold total - column mean)^2. Columns: samples per unit, then positives per label.

    Iterative stratification is greedy (a common label can end 7 positives off in one fold of 60) and the pattern
    fallback balances patterns, not labels; this brings fold sizes and every label's positives to within about 1.
    Deterministic for a given seed; a fold is never emptied.
    """
    rng = np.random.default_rng(seed)
    feats = feats.astype(np.float64)  # small integers: float sums are exact, and BLAS makes the matmuls fast
    totals = np.stack([feats[unit_fold == k].sum(0) for k in range(1, n_folds + 1)])  # (K, m)

    def candidates(k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Distinct rows of fold k (and the first unit holding each), plus a zero row that stands for 'nothing'."""
        members = np.flatnonzero(unit_fold == k + 1)
        rows, first = np.unique(feats[members], axis=0, return_index=True)
        if len(rows) > _MAX_CANDIDATES:
            keep = np.sort(rng.choice(len(rows), _MAX_CANDIDATES, replace=False))
            rows, first = rows[keep], first[keep]
        return np.vstack([rows, np.zeros((1, feats.shape[1]))]), np.append(members[first], -1), len(members)

    cand = [candidates(k) for k in range(n_folds)]
    for _ in range(_MAX_STEPS):
        best, move = 0.0, None
        for a in range(n_folds):
            for b in range(a + 1, n_folds):
                (pa, ua, na), (pb, ub, nb) = cand[a], cand[b]
                diff = totals[a] - totals[b]
                # Fold a gives row i and takes row j of fold b: the objective changes by 2 * delta[i, j].  (Pa, Pb)
                delta = ((pb @ diff)[None, :] - (pa @ diff)[:, None] + (pb * pb).sum(1)[None, :]
                         + (pa * pa).sum(1)[:, None] - 2.0 * (pa @ pb.T))
                if na == 1:
                    delta[:, -1] = np.inf  # a one-way move out of a would empty it
                if nb == 1:
                    delta[-1, :] = np.inf
                i, j = np.unravel_index(np.argmin(delta), delta.shape)
                if delta[i, j] < best - 0.5:
                    best, move = delta[i, j], (a, b, ua[i], ub[j])
        if move is None:
            break
        a, b, ui, uj = move
        for u, src, dst in ((ui, a, b), (uj, b, a)):
            if u >= 0:
                unit_fold[u] = dst + 1
                totals[src] -= feats[u]
                totals[dst] += feats[u]
        cand[a], cand[b] = candidates(a), candidates(b)


def make_folds(
    labels: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Assign each row a fold in 1..n_folds. Returns (fold per row, method name).

    MIS (iterative-stratification) is used unless some label has fewer positives than folds, in which case the
    pattern-stratified fallback is used. With a single label column (which iterative stratification refuses as a
    'binary' target), sklearn's StratifiedKFold on that label is used instead of MIS. With `groups`, folds are
    assigned per group (labels aggregated by max), so no group is split across folds. Either split is then polished by `_rebalance`, so each label's positives
    differ by at most about 1 between folds.
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
    if use_mis and unit_pos.shape[1] == 1:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, unit_pos[:, 0])
        method = SINGLE
    elif use_mis:
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
    # (units, 1 + C): samples per unit, positives per label, counted over samples (not the max over a group)
    feats = np.zeros((n_units, 1 + pos.shape[1]), dtype=np.int64)
    np.add.at(feats, inverse, np.hstack([np.ones((len(pos), 1), dtype=np.int64), pos.astype(np.int64)]))
    _rebalance(unit_fold, feats, n_folds, seed)
    return unit_fold[inverse], method


def write_folds_csv(path: str | Path, names: list[str], folds: np.ndarray, image_col: str = "Image_name") -> None:
    """`folds.csv`: image name, fold (1..K), written atomically (--resume compares against it)."""
    with atomic_path(path) as tmp:
        pd.DataFrame({image_col: names, "fold": folds.astype(int)}).to_csv(tmp, index=False)
