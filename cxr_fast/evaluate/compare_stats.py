"""The statistics of `cxr-compare`: within-fold macro-AUC deltas, their two intervals, the verdict, and the pooled
delta kept as a secondary figure.

Each fold's model is scored on its own out-of-fold rows, A and B on the same rows, so a per-fold rescaling of the
scores (calibration) cannot move the delta: AUC is rank-based. The headline `delta` is the mean of the per-fold
deltas (over folds, and over the r runs per arm paired by position). Two intervals:
  - `ci95`: paired percentile bootstrap resampling rows (or whole groups) within each fold, A and B (and every
    pair of runs) on the same resamples: evaluation-set noise;
  - `t_ci95`: the corrected resampled t-interval over the r*K per-fold deltas (Nadeau & Bengio 2003; Bouckaert &
    Frank 2004 for r runs): variance (1/(r*K) + n_val/n_train) * S^2, t with r*K - 1 degrees of freedom; it
    carries training noise (another fold split, another seed).
A run is called better only when both intervals exclude 0 on the same side.
"""

from __future__ import annotations

import numpy as np

from cxr_fast.evaluate.bootstrap import ci95
from cxr_fast.evaluate.metrics import bootstrap_label_stats, macro_auc, macro_of, macro_point

POOLED_NOTE = ("pooled out-of-fold AUC ranks every fold's images against each other, so it mixes each fold's "
               "ranking with whether the fold models' scores share one scale; not the headline")


def label_aucs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(C,) AUC per label by `macro_auc`'s rule (known rows only), NaN where a label lacks a class."""
    _, per_label, _ = macro_auc(y, p, [str(j) for j in range(np.asarray(y).shape[1])])
    return np.array([np.nan if v is None else v for v in per_label.values()], dtype=np.float64)


def _macro(per_label: np.ndarray) -> float | None:
    """`macro_point` from `label_aucs`' values: the mean over labels with an AUC (None when none has one)."""
    ok = np.isfinite(per_label)
    return float(np.mean(per_label[ok])) if ok.any() else None


def fold_deltas(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, folds: np.ndarray, groups: np.ndarray | None,
                n_boot: int, seed: int, progress: bool | None = None) -> list[dict]:
    """Per fold: {"fold", "n", "a", "b", "delta"} (macro-AUCs on the fold's OOF rows) and, private to the caller,
    "_labels" (C,) per-label deltas, "_boot" (B,) macro deltas and "_boot_labels" (B, C) per-label deltas over the
    resamples (rows or groups within the fold; seed + fold, so every pair of runs sees the same resamples)."""
    out = []
    for k in np.unique(folds):
        m = folds == k
        yk, ak, bk = y[m], pa[m], pb[m]
        la, lb = label_aucs(yk, ak), label_aucs(yk, bk)
        va, vb = _macro(la), _macro(lb)  # the macro-AUCs from the same per-label AUCs, not computed again
        usable = np.isfinite(la)
        e = {"fold": int(k), "n": int(m.sum()), "a": va, "b": vb,
             "delta": va - vb if va is not None and vb is not None else None, "_la": la, "_lb": lb, "_labels": la - lb,
             "_boot": None, "_boot_labels": None}
        if n_boot > 0 and usable.any():
            gk = groups[m] if groups is not None else None
            ba = bootstrap_label_stats(yk, ak, gk, n_boot, seed + int(k), progress)["auc"]
            bb = bootstrap_label_stats(yk, bk, gk, n_boot, seed + int(k), progress)["auc"]
            e["_boot"] = macro_of(ba, usable) - macro_of(bb, usable)
            e["_boot_labels"] = np.where(usable[None, :], ba - bb, np.nan)
        out.append(e)
    return out


def t_interval(deltas: list[float], ratio: float) -> dict:
    """Corrected resampled t-interval of the mean of `deltas` (r*K per-fold deltas); ratio = n_val / n_train.
    {"ci95": [lo, hi] or None, "dof", "factor", "sd", "n_deltas", "why"}: None (with "why") under 2 deltas."""
    from scipy.stats import t as student_t

    d = np.asarray([v for v in deltas if v is not None], dtype=np.float64)
    j = len(d)
    out = {"ci95": None, "dof": j - 1 if j else 0, "factor": None, "sd": None, "n_deltas": j, "n_val_over_n_train":
           float(ratio), "why": None}
    if j < 2:
        out["why"] = f"{j} per-fold delta(s): a t-interval needs 2 or more (more folds or runs per arm)"
        return out
    s2 = float(np.var(d, ddof=1))
    factor = 1.0 / j + ratio
    half = float(student_t.ppf(0.975, j - 1)) * float(np.sqrt(factor * s2))
    mean = float(d.mean())
    out.update(ci95=[mean - half, mean + half], factor=factor, sd=float(np.sqrt(s2)))
    return out


def _excludes(ci: list[float] | None) -> int:
    """+1 / -1 when the interval lies above / below 0, else 0 (None: 0)."""
    if ci is None:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def decide(a_name: str, b_name: str, delta: float | None, ci: list[float] | None,
           t_ci: list[float] | None) -> tuple[str, list[str], str]:
    """(verdict line, decided_by, outcome). Better only when both intervals exclude 0 on the same side;
    decided_by lists the intervals that settled it (both for a win; those including 0 or missing otherwise)."""
    head = f"{a_name} - {b_name}:"
    if delta is None:
        return f"{head} no within-fold macro-AUC (no label has both classes in a fold)", [], "undefined"
    sb, st = _excludes(ci), _excludes(t_ci)
    shown = (f"{head} {delta:+.3f} macro-AUC (mean within-fold delta), bootstrap 95% CI {_ci(ci)}, "
             f"corrected t 95% CI {_ci(t_ci)}")
    if sb != 0 and sb == st:
        return f"{shown}: {a_name if sb > 0 else b_name} better (both intervals exclude 0)", ["ci95", "t_ci95"], \
            "a" if sb > 0 else "b"
    by, why = [], []
    for key, iv, side, what in (("ci95", ci, sb, "bootstrap interval"), ("t_ci95", t_ci, st, "t-interval")):
        if iv is None or side == 0:
            by.append(key)
            why.append(f"no {what}" if iv is None else f"the {what} includes 0")
    if not by:
        by, why = ["ci95", "t_ci95"], ["the intervals lie on opposite sides of 0"]
    why = " and ".join(why)
    return f"{shown}: not distinguishable from no effect ({why})", by, "none"


def _ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def pooled_delta(y: np.ndarray, pas: list[np.ndarray], pbs: list[np.ndarray], groups: np.ndarray | None,
                 n_boot: int, seed: int, progress: bool | None = None) -> dict:
    """The pooled OOF macro-AUC delta (mean over the pairs of runs, all scored on the same rows `y`) with a paired
    bootstrap over all OOF rows (or groups): {"a_value", "b_value", "value", "ci95", "note"}."""
    av, bv = [macro_point(y, p) for p in pas], [macro_point(y, p) for p in pbs]
    out = {"a_value": None, "b_value": None, "value": None, "ci95": None, "note": POOLED_NOTE}
    if av[0] is None:  # the same truth for every run: no label with both classes
        return out
    out.update(a_value=float(np.mean(av)), b_value=float(np.mean(bv)))
    out["value"] = out["a_value"] - out["b_value"]
    if n_boot > 0:
        usable = np.isfinite(label_aucs(y, pas[0]))
        boots = []
        for pa, pb in zip(pas, pbs):
            ba = bootstrap_label_stats(y, pa, groups, n_boot, seed, progress)["auc"]
            bb = bootstrap_label_stats(y, pb, groups, n_boot, seed, progress)["auc"]  # same seed: same resamples
            boots.append(macro_of(ba, usable) - macro_of(bb, usable))
        out["ci95"] = ci95(np.mean(boots, axis=0))
    return out
