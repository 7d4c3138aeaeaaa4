"""Percentile bootstrap: resampling rows or whole groups, and vectorised AUC / average precision for the resamples.

A bootstrap resample is held as integer counts per row (how often each row was drawn). An AUC (or average
precision) on the resampled rows equals the count-weighted AUC on the original rows, and that is computed for a
whole chunk of resamples at once from the rows sorted once by score: ties are pooled per distinct score, as
`sklearn.metrics.roc_auc_score` and `average_precision_score` do, so the two agree exactly on every resample
(tests check it). Point estimates are always sklearn's own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

CHUNK = 100  # resamples per chunk: bounds memory at CHUNK x rows counts


def resample_counts(n: int, groups: np.ndarray | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) int32 counts: how often each row is drawn in each resample. Rows are drawn with replacement, or,
    with `groups` (one id per row), whole groups are drawn with replacement and every row of a drawn group comes
    along, so all rows of one group share one count."""
    if groups is None:
        idx = rng.integers(0, n, size=(size, n))
        flat = (idx + np.arange(size)[:, None] * n).ravel()
        return np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.int32)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.ravel()
    g = int(inverse.max()) + 1
    gc = resample_counts(g, None, size, rng)
    return gc[:, inverse]


def resample_chunks(n: int, groups: np.ndarray | None, n_boot: int, seed: int,
                    progress: bool | None = None, desc: str = "bootstrap") -> Iterator[np.ndarray]:
    """The `n_boot` resamples of `resample_counts` in chunks, from numpy `default_rng(seed)`: the same arguments give
    the same resamples (a paired comparison runs both models over them). A tqdm bar where stderr is a terminal
    (progress=None) and n_boot is large."""
    rng = np.random.default_rng(seed)
    sizes = [min(CHUNK, n_boot - s) for s in range(0, n_boot, CHUNK)]
    if progress is None:
        progress = sys.stderr.isatty() and n_boot >= 500
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_boot, desc=desc, unit="resample", leave=False)
    try:
        for size in sizes:
            yield resample_counts(n, groups, size, rng)
            if bar is not None:
                bar.update(size)
    finally:
        if bar is not None:
            bar.close()


class SortedLabel:
    """One label's known rows sorted by descending score, with their tie groups: ready for weighted curves."""

    def __init__(self, y: np.ndarray, p: np.ndarray, rows: np.ndarray):
        order = np.argsort(-p, kind="stable")
        self.rows = rows[order]          # original row index of each sorted entry
        self.pos = y[order] > 0.5
        ps = p[order]
        new = np.ones(len(ps), dtype=bool)
        new[1:] = ps[1:] != ps[:-1]
        self.starts = np.flatnonzero(new)  # first entry of each distinct score (descending)

    def cumulative(self, counts_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G, B) cumulative positive and negative weights down to each distinct score (highest score first), from
        (n, B) integer counts; integer arithmetic, so exact."""
        w = counts_t[self.rows]
        wp = w * self.pos[:, None]
        cp, cn = np.cumsum(wp, axis=0), np.cumsum(w - wp, axis=0)
        if len(self.starts) == len(self.rows):  # no ties (or no rows): each entry is its own group
            return cp, cn
        ends = np.append(self.starts[1:] - 1, len(self.rows) - 1)
        return cp[ends], cn[ends]


def weighted_auc_ap(sl: SortedLabel, counts_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) AUC and (B,) average precision of each resample, given (n, B) counts (resamples as columns, the layout
    the per-row gathers and cumulative sums are fast in); NaN where a resample has one class only."""
    if len(sl.rows) == 0:
        nan = np.full(counts_t.shape[1], np.nan)
        return nan, nan.copy()
    tps, fps = (a.astype(np.float64) for a in sl.cumulative(counts_t))
    p, n = np.diff(tps, axis=0, prepend=0.0), np.diff(fps, axis=0, prepend=0.0)
    tot_p, tot_n = tps[-1], fps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        # a positive beats the negatives scoring lower (tot_n - fps, fps counting its own tie group) and half of
        # the n negatives tied with it
        auc = (p * (2.0 * (tot_n[None, :] - fps) + n)).sum(0) / (2.0 * tot_p * tot_n)
        ap = (p * tps / np.maximum(tps + fps, 1.0)).sum(0) / tot_p
    auc[(tot_p == 0) | (tot_n == 0)] = np.nan
    ap[tot_p == 0] = np.nan
    return auc, ap


def ci95(values: np.ndarray) -> list[float] | None:
    """Percentile 95% interval of the finite values; None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]
