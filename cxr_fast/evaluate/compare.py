"""Paired comparison of two training runs on the same folds: OOF macro-AUC delta (A - B) with a paired bootstrap.

Both runs are resampled with the same rows (or groups) in every bootstrap resample, so the interval is that of the
difference, not of two independent AUCs. A run compared with itself gives a delta of 0 with a CI of [0, 0].
"""

from __future__ import annotations

import numpy as np

from cxr_fast.errors import UserError
from cxr_fast.evaluate.bootstrap import ci95
from cxr_fast.evaluate.metrics import bootstrap_label_stats, macro_of, macro_point, point_values
from cxr_fast.evaluate.runs import RunOOF, read_folds, read_groups, read_run


def check_same_folds(a: RunOOF, b: RunOOF) -> None:
    """UserError unless both folds.csv assign the same images to the same folds."""
    fa, fb = read_folds(a.run_dir), read_folds(b.run_dir)
    if set(fa.index) != set(fb.index):
        only = sorted(set(fa.index) ^ set(fb.index))
        raise UserError(f"{a.run_dir} and {b.run_dir} were trained on different images (folds.csv differ, e.g. "
                        f"{only[0]!r}): a paired comparison needs the same data and folds")
    diff = fa.index[fa.to_numpy() != fb.loc[fa.index].to_numpy()]
    if len(diff):
        raise UserError(f"{a.run_dir} and {b.run_dir} used different folds ({len(diff)} images differ, e.g. "
                        f"{diff[0]!r}): train both with the same --seed and --folds (and --group_col)")


def align(a: RunOOF, b: RunOOF) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The OOF rows and labels both runs have: (names, labels, truth, probs_a, probs_b, folds)."""
    labels = [n for n in a.label_names if n in b.label_names]
    if not labels:
        raise UserError(f"{a.run_dir} and {b.run_dir} share no label")
    ib = {n: i for i, n in enumerate(b.names)}
    rows_a = [i for i, n in enumerate(a.names) if n in ib]
    if not rows_a:
        raise UserError(f"{a.run_dir} and {b.run_dir} have no out-of-fold image in common")
    rows_b = [ib[a.names[i]] for i in rows_a]
    ca = [a.label_names.index(n) for n in labels]
    cb = [b.label_names.index(n) for n in labels]
    ta, tb = a.labels[np.ix_(rows_a, ca)], b.labels[np.ix_(rows_b, cb)]
    if not np.array_equal(np.isnan(ta), np.isnan(tb)) or not np.array_equal(np.nan_to_num(ta), np.nan_to_num(tb)):
        raise UserError(f"{a.run_dir}/oof_labels.csv and {b.run_dir}/oof_labels.csv differ: the runs used other "
                        f"labels (e.g. another --uncertain / --missing policy)")
    names = [a.names[i] for i in rows_a]
    return names, labels, ta, a.probs[np.ix_(rows_a, ca)], b.probs[np.ix_(rows_b, cb)], a.folds[rows_a]


def verdict(a_name: str, b_name: str, delta: float | None, ci: list[float] | None) -> str:
    """One line: the delta, its CI, and whether the CI excludes 0."""
    if delta is None:
        return f"{a_name} - {b_name}: no macro-AUC (no label has both classes)"
    if ci is None:
        return f"{a_name} - {b_name}: {delta:+.3f} macro-AUC (no bootstrap CI)"
    word = ("not distinguishable from no effect" if ci[0] <= 0.0 <= ci[1]
            else f"{a_name if ci[0] > 0 else b_name} better")
    return f"{a_name} - {b_name}: {delta:+.3f} macro-AUC, 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]: {word}"


def per_fold(labels: np.ndarray, pa: np.ndarray, pb: np.ndarray, folds: np.ndarray) -> list[dict]:
    """Macro-AUC of A and B on the OOF rows of each fold (= each fold's validation set), and their delta."""
    out = []
    for k in np.unique(folds):
        m = folds == k
        va, vb = macro_point(labels[m], pa[m]), macro_point(labels[m], pb[m])
        out.append({"fold": int(k), "a": va, "b": vb,
                    "delta": va - vb if va is not None and vb is not None else None})
    return out


def compare_runs(run_a, run_b, *, n_boot: int = 1000, seed: int = 0, group_col: str | None = None,
                 progress: bool | None = None) -> dict:
    """The compare.json dictionary: a, b, a_value, b_value, delta {value, ci95}, per_fold, per_label, verdict."""
    a, b = read_run(run_a), read_run(run_b)
    check_same_folds(a, b)
    names, label_names, y, pa, pb, folds = align(a, b)
    groups = read_groups(a.run_dir, group_col, a.image_col, names) if group_col else None
    usable = np.array([point_values(y[~np.isnan(y[:, j]), j], pa[~np.isnan(y[:, j]), j])["auc"] is not None
                       for j in range(len(label_names))])
    a_value, b_value = macro_point(y, pa), macro_point(y, pb)
    delta = a_value - b_value if a_value is not None else None
    dm, dl = None, None
    if n_boot > 0 and usable.any():
        ba = bootstrap_label_stats(y, pa, groups, n_boot, seed, progress)["auc"]
        bb = bootstrap_label_stats(y, pb, groups, n_boot, seed, progress)["auc"]  # same seed: same resamples
        dm, dl = macro_of(ba, usable) - macro_of(bb, usable), ba - bb
    per_label = {}
    for j, name in enumerate(label_names):
        known = ~np.isnan(y[:, j])
        va, vb = (point_values(y[known, j], p[known, j])["auc"] for p in (pa, pb))
        per_label[name] = {"a": va, "b": vb, "delta": {"value": va - vb if usable[j] else None,
                                                       "ci95": ci95(dl[:, j]) if dl is not None and usable[j]
                                                       else None}}
    ci = ci95(dm) if dm is not None else None
    a_name, b_name = a.run_dir.resolve().name, b.run_dir.resolve().name
    return {"a": str(a.run_dir), "b": str(b.run_dir), "n": len(names), "labels": label_names,
            "a_value": a_value, "b_value": b_value, "delta": {"value": delta, "ci95": ci},
            "per_fold": per_fold(y, pa, pb, folds), "per_label": per_label,
            "verdict": verdict(a_name, b_name, delta, ci), "bootstrap": int(n_boot), "seed": int(seed),
            "resampling": "groups" if groups is not None else "rows"}
