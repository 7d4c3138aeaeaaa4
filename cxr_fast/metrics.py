"""Validation metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def macro_auc(labels: np.ndarray, probs: np.ndarray,
              label_names: Sequence[str]) -> tuple[float, dict[str, float | None], list[str]]:
    """Macro ROC-AUC over labels: (macro, per_label, skipped).

    Per label, samples whose target is NaN (unknown) are dropped; a label left with a single class (or no sample)
    has no AUC: it is listed in `skipped`, maps to None in `per_label`, and is left out of the mean. `macro` is NaN
    when every label is skipped. Non-finite probabilities raise ValueError: sklearn would otherwise either fail
    obscurely or rank NaNs arbitrarily and return a silently wrong AUC.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    names = list(label_names)
    if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
        raise ValueError(f"macro_auc: labels {labels.shape}, probs {probs.shape} and {len(names)} label names "
                         "do not match")
    bad = ~np.isfinite(probs)
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad.any(0))]
        raise ValueError(f"macro_auc: {int(bad.sum())} non-finite predictions (labels: {', '.join(cols[:5])}"
                         f"{', ...' if len(cols) > 5 else ''}); the model diverged (try --no_amp or a lower --lr)")
    per_label: dict[str, float | None] = {}
    skipped: list[str] = []
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j] > 0.5
        if y.size == 0 or y.all() or not y.any():
            per_label[name] = None
            skipped.append(name)
            continue
        per_label[name] = float(roc_auc_score(y, probs[known, j]))
    scores = [v for v in per_label.values() if v is not None]
    macro = float(np.mean(scores)) if scores else float("nan")
    return macro, per_label, skipped
