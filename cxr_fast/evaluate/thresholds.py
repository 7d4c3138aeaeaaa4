"""Operating thresholds per label from out-of-fold predictions: Youden's J and sensitivity >= 0.90.

A decision is `prob >= threshold`. `thresholds.json`: {"version": 1, "labels": [...], "operating_points":
{"youden": {LABEL: {"threshold", "sensitivity", "specificity"}}, "sens90": {...}}, "skipped": {LABEL: reason},
"chosen_on", "applied_to"}: the thresholds are chosen on single-fold OOF probabilities but applied to the
fold-ensemble mean, so the file says so and cxr-eval shows test-set figures beside the OOF ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from cxr_fast.atomic import write_json_atomic
from cxr_fast.errors import UserError

VERSION = 1
OPERATING_POINTS = ("youden", "sens90")
TARGET_SENSITIVITY = 0.90
CHOSEN_ON = ("out-of-fold predictions of the single fold models (each image scored by the one model that did not "
             "train on it)")
APPLIED_TO = ("the fold-ensemble mean probability on new images (cxr-train --out_csv, cxr-predict): another score "
              "distribution, so sensitivity/specificity may not transfer; check with cxr-eval --thresholds on "
              "labelled test images")


def sens_spec(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    """Sensitivity and specificity of the decision `p >= t` (y: 0/1, both classes present)."""
    pos, dec = y > 0.5, p >= t
    return float(dec[pos].mean()), float((~dec[~pos]).mean())


def label_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, dict]:
    """{"youden": {...}, "sens90": {...}} for one label's known rows. Youden: the threshold maximising
    sensitivity + specificity - 1 (the highest one among ties); sens90: the highest threshold whose sensitivity is
    >= 0.90. Candidate thresholds are the distinct scores (`roc_curve`, decision `p >= t`)."""
    fpr, tpr, thr = roc_curve(y > 0.5, p, drop_intermediate=False)
    finite = np.isfinite(thr)  # sklearn's first threshold is +inf (nothing predicted positive)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    cands = {"youden": int(np.argmax(tpr - fpr)), "sens90": int(np.flatnonzero(tpr >= TARGET_SENSITIVITY)[0])}
    out = {}
    for op, i in cands.items():
        t = float(thr[i])
        s, sp = sens_spec(y, p, t)
        out[op] = {"threshold": t, "sensitivity": s, "specificity": sp}
    return out


def compute_thresholds(labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """The thresholds.json dictionary. A label without both classes (or with non-finite probabilities) is left out
    and listed under "skipped" with the reason."""
    names = list(label_names)
    doc: dict = {"version": VERSION, "labels": names, "decision": "prob >= threshold", "chosen_on": CHOSEN_ON,
                 "applied_to": APPLIED_TO,
                 "operating_points": {op: {} for op in OPERATING_POINTS}, "skipped": {}}
    try:
        labels = np.asarray(labels, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        if labels.ndim != 2 or labels.shape != probs.shape or labels.shape[1] != len(names):
            raise ValueError(f"labels {labels.shape}, probs {probs.shape}, {len(names)} names do not match")
    except (TypeError, ValueError) as e:
        doc["skipped"] = {n: f"unusable predictions: {e}" for n in names}
        return doc
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probs[known, j]
        n_pos, n_neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
        if n_pos == 0 or n_neg == 0:
            doc["skipped"][name] = f"one class only in the out-of-fold data ({n_pos} positive, {n_neg} negative)"
            continue
        if not np.isfinite(p).all():
            doc["skipped"][name] = "non-finite out-of-fold probabilities"
            continue
        for op, v in label_thresholds(y, p).items():
            doc["operating_points"][op][name] = v
    return doc


def write_thresholds(path: str | Path, labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """Compute and atomically write thresholds.json; returns the dictionary. Odd data (one class, NaN, shapes)
    never raises: the labels concerned are listed under "skipped". Only a failing write (OSError) raises."""
    doc = compute_thresholds(labels, probs, label_names)
    write_json_atomic(path, doc)
    return doc


def load_thresholds(path: str | Path, label_names: Sequence[str]) -> dict:
    """Read and check thresholds.json against the model's labels (same names; UserError otherwise)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: thresholds file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable thresholds JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("operating_points"), dict):
        raise UserError(f"{path}: not a version-{VERSION} thresholds file (written by cxr-train)")
    missing = [n for n in label_names if n not in doc.get("labels", [])]
    if missing:
        raise UserError(f"{path}: no entry for label(s) {', '.join(missing[:5])}: the thresholds come from "
                        f"another run (its labels: {', '.join(map(str, doc.get('labels', [])))})")
    return doc


def threshold_vector(thresholds: dict, label_names: Sequence[str], operating_point: str = "youden",
                     fallback: float | None = None) -> np.ndarray:
    """(C,) thresholds in label order. A label the file skipped gets `fallback`, or a UserError when it is None."""
    if operating_point not in thresholds["operating_points"]:
        raise UserError(f"--operating_point {operating_point!r}: the thresholds file has "
                        f"{', '.join(thresholds['operating_points'])}")
    ops = thresholds["operating_points"][operating_point]
    out = []
    for name in label_names:
        if name in ops:
            out.append(float(ops[name]["threshold"]))
        elif fallback is not None:
            out.append(float(fallback))
        else:
            why = thresholds.get("skipped", {}).get(name, "not in the file")
            raise UserError(f"no {operating_point} threshold for label {name!r} ({why})")
    return np.asarray(out, dtype=np.float64)


def decisions(probs: np.ndarray, thresholds: dict, label_names: Sequence[str], operating_point: str = "youden",
              fallback: float | None = None) -> np.ndarray:
    """(N, C) uint8 decisions `probs >= threshold` per label (thresholds: the `load_thresholds` dictionary)."""
    t = threshold_vector(thresholds, label_names, operating_point, fallback)
    return (np.asarray(probs, dtype=np.float64) >= t[None, :]).astype(np.uint8)


def confusion_stats(y: np.ndarray, p: np.ndarray, t: float) -> dict:
    """Sensitivity, specificity, PPV and NPV of `p >= t` on known rows (None where undefined)."""
    pos, dec = y > 0.5, p >= t
    tp, fn = int((dec & pos).sum()), int((~dec & pos).sum())
    fp, tn = int((dec & ~pos).sum()), int((~dec & ~pos).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    return {"threshold": float(t), "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp),
            "ppv": ratio(tp, fp), "npv": ratio(tn, fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def oof_figures(thresholds: dict, name: str, operating_point: str) -> dict | None:
    """The out-of-fold sensitivity/specificity recorded with a label's threshold (None when the file has none)."""
    v = thresholds.get("operating_points", {}).get(operating_point, {}).get(name)
    if not isinstance(v, dict):
        return None
    return {"sensitivity": v.get("sensitivity"), "specificity": v.get("specificity")}
