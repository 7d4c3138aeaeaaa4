"""Generated data with a known AUC, and fake run folders (tiny CSVs, JSONs and checkpoints) for the evidence tools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

LABELS = ["Atelectasis", "Cardiomegaly", "Edema"]


def binormal(n: int, d: float, prevalence: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(prevalence); score ~ N(d * y, 1) squashed into (0, 1) by a logistic (monotone, so the AUC is
    unchanged): the population AUC is Phi(d / sqrt(2))."""
    y = (rng.random(n) < prevalence).astype(np.float64)
    s = rng.normal(d * y, 1.0)
    return y, 1.0 / (1.0 + np.exp(-s))


def true_auc(d: float) -> float:
    return float(norm.cdf(d / np.sqrt(2.0)))


def make_data(n: int = 600, seed: int = 0, labels=LABELS, ds=(1.0, 1.5, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ys, ps = zip(*(binormal(n, d, 0.3, rng) for d, _ in zip(ds, labels)))
    return np.stack(ys, 1), np.stack(ps, 1)


def write_pred_truth(tmp: Path, y: np.ndarray, p: np.ndarray, labels=LABELS, groups=None) -> tuple[Path, Path]:
    names = [f"img_{i:05d}.png" for i in range(len(y))]
    pred = pd.DataFrame(p, columns=labels)
    pred.insert(0, "Image_name", names)
    truth = pd.DataFrame(np.where(np.isnan(y), "", np.nan_to_num(y).astype(int).astype(str)), columns=labels)
    truth.insert(0, "Image_name", names)
    if groups is not None:
        truth["Patient ID"] = groups
    pred.to_csv(tmp / "pred.csv", index=False, float_format="%.6f")
    truth.to_csv(tmp / "truth.csv", index=False)
    return tmp / "pred.csv", tmp / "truth.csv"


def make_run(run: Path, *, seed: int = 0, n: int = 300, n_folds: int = 3, folds_run=(1, 2, 3), refiner: bool = True,
             noise: float = 0.0, fold_seed: int = 0, labels=LABELS, checkpoints: bool = True) -> Path:
    """A fake cxr-train output folder: config.json, folds.csv, oof.csv, oof_labels.csv, cv_summary.json,
    metrics.jsonl and (tiny) fold checkpoints with or without a refiner A."""
    import torch

    run.mkdir(parents=True, exist_ok=True)
    y, p = make_data(n, seed=seed, labels=labels, ds=(1.0, 1.5, 0.5)[:len(labels)])
    if noise:
        p = np.clip(p + np.random.default_rng(seed + 99).normal(0, noise, p.shape), 0, 1)
    names = [f"img_{i:05d}.png" for i in range(n)]
    folds = np.random.default_rng(fold_seed).integers(1, n_folds + 1, n)
    cfg = {"model": "tiny", "folds": n_folds, "seed": seed, "refiner": refiner, "image_col": "Image_name"}
    (run / "config.json").write_text(json.dumps(cfg))
    pd.DataFrame({"Image_name": names, "fold": folds}).to_csv(run / "folds.csv", index=False)
    keep = np.isin(folds, folds_run)
    oof = pd.DataFrame(p[keep], columns=labels)
    oof.insert(0, "fold", folds[keep])
    oof.insert(0, "Image_name", np.array(names)[keep])
    oof.to_csv(run / "oof.csv", index=False, float_format="%.6f")
    truth = pd.DataFrame(y[keep].astype(int), columns=labels)
    truth.insert(0, "Image_name", np.array(names)[keep])
    truth.to_csv(run / "oof_labels.csv", index=False)
    fold_res = [{"fold": k, "best_epoch": 2, "val_auc": 0.7 + 0.01 * k, "epochs_run": 2,
                 "val_auc_per_label": {lb: 0.7 for lb in labels}, "refiner_sparsity": 0.5 if refiner else None}
                for k in folds_run]
    (run / "cv_summary.json").write_text(json.dumps({
        "folds": fold_res, "mean_auc": 0.72, "std_auc": 0.01, "oof_macro_auc": 0.71,
        "oof_auc_per_label": {lb: 0.7 for lb in labels}, "labels": labels, "split_method": "multilabel"}))
    recs = [{"fold": k, "epoch": e, "loss": 1.0 / e, "lr": 1e-3 / e, "val_auc": 0.6 + 0.05 * e, "img_per_s": 100.0 + k,
             "data_wait_s": 0.5} for k in folds_run for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if checkpoints:
        for k in folds_run:
            a = torch.zeros(len(labels), len(labels))
            if len(labels) > 1:
                a[0, 1], a[1, 0] = 0.3, -0.2
            ck = {"model": {"w": torch.zeros(2)}, "refiner": {"A": a} if refiner else None, "labels": labels,
                  "config": cfg, "fold": k, "epoch": 2, "val_auc": 0.7}
            torch.save(ck, run / f"tiny_fold{k}.pth")
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")
