"""Figures as base64 PNG strings (matplotlib, Agg backend) for embedding in self-contained HTML pages."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_base64(fig) -> str:
    """PNG bytes of `fig`, base64-encoded; the figure is closed."""
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _known(labels: np.ndarray, probs: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray] | None:
    known = ~np.isnan(labels[:, j])
    y = labels[known, j] > 0.5
    if y.all() or not y.any():
        return None
    return y, probs[known, j]


def roc_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], title: str = "ROC curves") -> str:
    """ROC curve of every label with both classes, on one axis."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    for j, name in enumerate(names):
        d = _known(labels, probs, j)
        if d is not None:
            fpr, tpr, _ = roc_curve(*d)
            ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({roc_auc_score(*d):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return to_base64(fig)


def pr_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], title: str = "Precision-recall") -> str:
    """Precision-recall curve of every label with positives, on one axis."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    for j, name in enumerate(names):
        d = _known(labels, probs, j)
        if d is not None:
            prec, rec, _ = precision_recall_curve(*d)
            ax.plot(rec, prec, lw=1.2, label=f"{name} (AP {average_precision_score(*d):.3f})")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper right")
    return to_base64(fig)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Mean |fraction positive - mean probability| over the uniform bins of `calibration_curve`, weighted by the
    bins' sizes."""
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(bins[1:-1], p)  # sklearn.calibration.calibration_curve's binning
    n = np.bincount(ids, minlength=n_bins)
    pos = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    mean_p = np.bincount(ids, weights=p, minlength=n_bins)
    nz = n > 0
    return float(np.sum(np.abs(pos[nz] - mean_p[nz])) / max(len(p), 1))


def calibration_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str],
                       n_bins: int = 10) -> tuple[str, dict[str, float]]:
    """Reliability diagram of every label with both classes, and each label's expected calibration error."""
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    eces = {}
    for j, name in enumerate(names):
        d = _known(labels, probs, j)
        if d is None:
            continue
        y, p = d
        frac, mean_p = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        eces[name] = expected_calibration_error(y, p, n_bins)
        ax.plot(mean_p, frac, "o-", ms=3, lw=1, label=f"{name} (ECE {eces[name]:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive", title="Reliability (calibration)",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper left")
    return to_base64(fig), eces


def training_curves_figure(records: list[dict]) -> str:
    """Loss, learning rate and validation macro-AUC per epoch, one line per fold."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    folds = sorted({r.get("fold") for r in records if r.get("fold") is not None})
    for key, ax, title in zip(("loss", "lr", "val_auc"), axes, ("training loss", "learning rate",
                                                                "validation macro-AUC")):
        for k in folds:
            pts = sorted((r["epoch"], r[key]) for r in records
                         if r.get("fold") == k and isinstance(r.get(key), (int, float)) and "epoch" in r)
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, lw=1.2, label=f"fold {k}")
        ax.set(xlabel="epoch", title=title)
        if folds:
            ax.legend(fontsize=7)
    return to_base64(fig)


def png_file_base64(path) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")
