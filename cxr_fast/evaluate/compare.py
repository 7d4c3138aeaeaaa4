"""Paired comparison of runs trained on the same folds: the within-fold macro-AUC delta (A - B) with a paired
bootstrap and a corrected resampled t-interval, the pooled OOF delta as a secondary figure, and a verdict.

`--a RUN [RUN...] --b RUN [RUN...]`: r runs per arm (e.g. seeds), paired by position; every run must have the
same folds. The statistics are in `compare_stats` (why within-fold: see there and docs/evidence.md). A run compared
with itself gives a delta of 0 with both intervals [0, 0].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_fast.errors import UserError
from cxr_fast.evaluate.bootstrap import ci95
from cxr_fast.evaluate.compare_stats import decide, fold_deltas, pooled_delta, t_interval
from cxr_fast.evaluate.runs import RunOOF, read_folds, read_groups, read_run
from cxr_fast.run_folder import RunPaths


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


def align_all(runs: list[RunOOF]) -> tuple[list[str], list[str], np.ndarray, list[np.ndarray], np.ndarray]:
    """The OOF rows and labels every run has: (names, labels, truth, probs of each run, folds), in the first run's
    order. UserError when the runs share no label or row, or their truth differs."""
    first = runs[0]
    labels = [n for n in first.label_names if all(n in r.label_names for r in runs[1:])]
    if not labels:
        raise UserError(f"{', '.join(str(r.run_dir) for r in runs)} share no label")
    index = [{n: i for i, n in enumerate(r.names)} for r in runs]
    names = [n for n in first.names if all(n in ix for ix in index[1:])]
    if not names:
        raise UserError(f"{', '.join(str(r.run_dir) for r in runs)} have no out-of-fold image in common")
    truth, probs, folds = None, [], None
    for r, ix in zip(runs, index):
        rows, cols = [ix[n] for n in names], [r.label_names.index(n) for n in labels]
        t = r.labels[np.ix_(rows, cols)]
        if truth is None:
            truth, folds = t, r.folds[rows]
        elif not np.array_equal(np.isnan(t), np.isnan(truth)) or not np.array_equal(np.nan_to_num(t),
                                                                                      np.nan_to_num(truth)):
            raise UserError(f"{RunPaths(first.run_dir).oof_labels} and {RunPaths(r.run_dir).oof_labels} differ: the "
                            f"runs used other labels (e.g. another --uncertain / --missing policy)")
        probs.append(r.probs[np.ix_(rows, cols)])
    return names, labels, truth, probs, folds


def fold_size_ratio(run_dir: Path, folds_used: np.ndarray) -> float:
    """Mean validation size over mean training size of the folds scored, from folds.csv (the t-interval's n_val /
    n_train: a fold trains on every other fold)."""
    fs = read_folds(run_dir).to_numpy()
    fs = fs[np.isfinite(fs)]
    ks = np.unique(folds_used)
    n_val = np.array([(fs == k).sum() for k in ks], dtype=np.float64)
    return float(n_val.mean() / max(len(fs) - n_val.mean(), 1.0))


def _as_list(runs) -> list[Path]:
    return [Path(r) for r in ([runs] if isinstance(runs, (str, Path)) else runs)]


def _arm_name(runs: list[Path]) -> str:
    name = runs[0].resolve().name
    return name if len(runs) == 1 else f"{name} (+{len(runs) - 1} run{'s' if len(runs) > 2 else ''})"


def _mean_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Element-wise mean over the finite entries of equally shaped arrays (NaN where none is finite)."""
    x = np.stack(rows)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(0), np.where(ok, x, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)


def _per_label(label_names: list[str], entries: list[dict]) -> dict:
    """Per label: the mean within-fold AUC delta over the (run pair, fold) entries where the label has both
    classes, with its bootstrap CI."""
    out = {}
    for j, name in enumerate(label_names):
        use = [e for e in entries if np.isfinite(e["_labels"][j])]
        boot = [e["_boot_labels"][:, j] for e in use if e["_boot_labels"] is not None]
        value = float(np.mean([e["_labels"][j] for e in use])) if use else None
        out[name] = {"a": float(np.mean([e["_la"][j] for e in use])) if use else None,
                     "b": float(np.mean([e["_lb"][j] for e in use])) if use else None,
                     "delta": {"value": value,
                               "ci95": ci95(_mean_rows(boot)) if use and len(boot) == len(use) else None}}
    return out


def compare_runs(run_a, run_b, *, n_boot: int = 1000, seed: int = 0, group_col: str | None = None,
                 progress: bool | None = None) -> dict:
    """The compare.json dictionary (run_a / run_b: a run folder or a list, paired by position): a, b, runs_a,
    runs_b, n, labels, a_value, b_value (mean per-fold macro-AUCs), delta {value, ci95, t_ci95}, ci95, t_ci95,
    t_test, decided_by, outcome, verdict, per_fold, per_label, pooled, bootstrap, seed, resampling."""
    runs_a, runs_b = _as_list(run_a), _as_list(run_b)
    if len(runs_a) != len(runs_b) or not runs_a:
        raise UserError(f"--a has {len(runs_a)} run(s) and --b {len(runs_b)}: runs are paired by position "
                        f"(e.g. the same seed in both arms), give as many in each")
    runs = [read_run(r) for r in runs_a + runs_b]
    for other in runs[1:]:
        check_same_folds(runs[0], other)
    names, label_names, y, probs, folds = align_all(runs)
    r = len(runs_a)
    groups = read_groups(runs[0].run_dir, group_col, runs[0].image_col, names) if group_col else None
    entries = []
    for i in range(r):
        for e in fold_deltas(y, probs[i], probs[r + i], folds, groups, n_boot, seed, progress):
            entries.append({"pair": i + 1, **e})
    defined = [e for e in entries if e["delta"] is not None]
    delta = float(np.mean([e["delta"] for e in defined])) if defined else None
    boots = [e["_boot"] for e in defined if e["_boot"] is not None]
    ci = ci95(_mean_rows(boots)) if defined and len(boots) == len(defined) else None
    t = t_interval([e["delta"] for e in defined], fold_size_ratio(runs[0].run_dir, folds))
    text, by, outcome = decide(_arm_name(runs_a), _arm_name(runs_b), delta, ci, t["ci95"])
    return {"a": str(runs_a[0]), "b": str(runs_b[0]), "runs_a": [str(p) for p in runs_a],
            "runs_b": [str(p) for p in runs_b], "image_col": runs[0].image_col, "n": len(names), "labels": label_names,
            "statistic": "mean over folds (and run pairs) of the macro-AUC difference A - B, each fold's models "
                         "scored on that fold's out-of-fold rows",
            "a_value": float(np.mean([e["a"] for e in defined])) if defined else None,
            "b_value": float(np.mean([e["b"] for e in defined])) if defined else None,
            "delta": {"value": delta, "ci95": ci, "t_ci95": t["ci95"]}, "ci95": ci, "t_ci95": t["ci95"],
            "t_test": {k: v for k, v in t.items() if k != "ci95"}, "decided_by": by, "outcome": outcome,
            "verdict": text, "per_fold": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries],
            "per_label": _per_label(label_names, entries),
            "pooled": pooled_delta(y, probs[:r], probs[r:], groups, n_boot, seed, progress),
            "bootstrap": int(n_boot), "seed": int(seed), "resampling": "groups" if groups is not None else "rows"}
