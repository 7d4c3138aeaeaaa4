"""Per-label AUC, average precision, prevalence and counts with percentile bootstrap 95% CIs; macro-AUC with its CI.

Unknown labels (NaN) are left out per label. Point values are scikit-learn's (`roc_auc_score`,
`average_precision_score`); the resamples use the equivalent vectorised form in `cxr_fast.evaluate.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_fast.evaluate.bootstrap import SortedLabel, ci95, resample_chunks, weighted_auc_ap


def _check(labels: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape}, probs {probs.shape} and {len(names)} label names do not match")
    if not np.isfinite(probs).all():
        raise ValueError("non-finite probabilities")
    return labels, probs


def point_values(y: np.ndarray, p: np.ndarray) -> dict:
    """AUC and AP (None with a single class), prevalence and counts of one label's known rows."""
    n_pos, n_neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
    both = n_pos > 0 and n_neg > 0
    return {
        "auc": float(roc_auc_score(y > 0.5, p)) if both else None,
        "ap": float(average_precision_score(y > 0.5, p)) if n_pos > 0 else None,
        "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else None,
        "n_pos": n_pos, "n_neg": n_neg,
    }


def bootstrap_label_stats(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None, n_boot: int,
                          seed: int, progress: bool | None = None) -> dict[str, np.ndarray]:
    """(n_boot, C) arrays per statistic ("auc", "ap", "prevalence", "n_pos", "n_neg") over the resamples of
    `resample_chunks(n, groups, n_boot, seed)`; NaN where a resample leaves a label undefined."""
    n, c = labels.shape
    sorted_labels = []
    for j in range(c):
        known = np.flatnonzero(~np.isnan(labels[:, j]))
        sorted_labels.append(SortedLabel(labels[known, j], probs[known, j], known))
    pos = np.where(np.isnan(labels), 0.0, labels > 0.5).astype(np.float64)
    neg = np.where(np.isnan(labels), 0.0, labels <= 0.5).astype(np.float64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("auc", "ap", "prevalence", "n_pos", "n_neg")}
    for counts in resample_chunks(n, groups, n_boot, seed, progress):
        counts_t = np.ascontiguousarray(counts.T)
        res = [weighted_auc_ap(sl, counts_t) for sl in sorted_labels]
        out["auc"].append(np.stack([r[0] for r in res], axis=1))
        out["ap"].append(np.stack([r[1] for r in res], axis=1))
        cf = counts.astype(np.float64)
        npos, nneg = cf @ pos, cf @ neg
        out["n_pos"].append(npos)
        out["n_neg"].append(nneg)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["prevalence"].append(npos / (npos + nneg))
    return {k: (np.concatenate(v) if v else np.empty((0, c))) for k, v in out.items()}


def macro_of(per_resample_auc: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(B,) macro-AUC of each resample: mean over the labels `usable` in the full data (both classes) of the
    resample's AUCs, skipping a label in the resamples where it has one class."""
    sub = per_resample_auc[:, usable]
    ok = np.isfinite(sub)
    cnt = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(ok, sub, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)


def evaluate(labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str], *, groups: np.ndarray | None = None,
             n_boot: int = 1000, seed: int = 0, progress: bool | None = None) -> dict:
    """The eval.json dictionary: {"n", "labels", "macro_auc": {"value", "ci95"}, "per_label": {LABEL: {"auc":
    {"value", "ci95"}, "ap": {...}, "prevalence": {...}, "n_pos", "n_neg", "n_pos_ci95", "n_neg_ci95"}},
    "skipped": {LABEL: reason}, "bootstrap", "seed", "resampling"}. labels: (N, C) with NaN = unknown; probs: (N, C) in [0, 1].
    The macro-AUC is the mean over labels with both classes; with one such label it is that label's AUC."""
    names = list(label_names)
    labels, probs = _check(labels, probs, names)
    boot = bootstrap_label_stats(labels, probs, groups, n_boot, seed, progress) if n_boot > 0 else None
    per_label, skipped, usable = {}, {}, np.zeros(len(names), dtype=bool)
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        pv = point_values(labels[known, j], probs[known, j])
        usable[j] = pv["auc"] is not None
        if not usable[j]:
            skipped[name] = (f"only {'positives' if pv['n_pos'] else 'negatives'} among its {int(known.sum())} "
                             f"known rows: no AUC" if known.any() else "no known rows")
        ci = {k: (ci95(boot[k][:, j]) if boot is not None and v is not None else None) for k, v in pv.items()}
        per_label[name] = {k: {"value": pv[k], "ci95": ci[k]} for k in ("auc", "ap", "prevalence")}
        per_label[name].update(n_pos=pv["n_pos"], n_neg=pv["n_neg"], n_pos_ci95=ci["n_pos"], n_neg_ci95=ci["n_neg"])
    aucs = [per_label[nm]["auc"]["value"] for nm, u in zip(names, usable) if u]
    macro = {"value": float(np.mean(aucs)) if aucs else None,
             "ci95": ci95(macro_of(boot["auc"], usable)) if boot is not None and aucs else None}
    return {"n": int(labels.shape[0]), "labels": names, "macro_auc": macro, "per_label": per_label,
            "skipped": skipped, "bootstrap": int(n_boot), "seed": int(seed),
            "resampling": "groups" if groups is not None else "rows"}


def macro_auc(labels: np.ndarray, probs: np.ndarray,
              label_names: Sequence[str]) -> tuple[float, dict[str, float | None], list[str]]:
    """The one macro-AUC rule (training's validation, cv_summary, `cxr-eval`, `cxr-compare`): (macro, per_label,
    skipped). Per label, rows whose target is NaN (unknown) are dropped; a label left with a single class (or no
    row) has no AUC: it is listed in `skipped`, maps to None in `per_label`, and is left out of the mean. `macro`
    is NaN when every label is skipped. Non-finite probabilities raise ValueError: sklearn would otherwise either
    fail obscurely or rank NaNs arbitrarily and return a silently wrong AUC."""
    names = list(label_names)
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
        raise ValueError(f"macro_auc: labels {labels.shape}, probs {probs.shape} and {len(names)} label names "
                         "do not match")
    bad = ~np.isfinite(probs)
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad.any(0))]
        raise ValueError(f"macro_auc: {int(bad.sum())} non-finite predictions (labels: {', '.join(cols[:5])}"
                         f"{', ...' if len(cols) > 5 else ''}); the model diverged (try --no_amp or a lower --lr)")
    per_label: dict[str, float | None] = {}
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        per_label[name] = point_values(labels[known, j], probs[known, j])["auc"]
    skipped = [n for n, v in per_label.items() if v is None]
    scores = [v for v in per_label.values() if v is not None]
    return (float(np.mean(scores)) if scores else float("nan")), per_label, skipped


def macro_point(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """`macro_auc`'s value without label names (None when no label has both classes)."""
    macro, _, _ = macro_auc(labels, probs, [str(j) for j in range(np.asarray(labels).shape[1])])
    return None if np.isnan(macro) else macro
