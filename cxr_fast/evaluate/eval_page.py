"""cxr-eval's outputs: the per-label text table, threshold statistics, and the HTML page (ROC, PR, calibration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cxr_fast.evaluate.html as H
from cxr_fast.atomic import write_text_atomic
from cxr_fast.evaluate.inputs import EvalData
from cxr_fast.evaluate.thresholds import confusion_stats, threshold_vector


def _ci(d: dict) -> str:
    return H.fmt_ci(d.get("ci95"))


def text_table(result: dict) -> str:
    """Per-label AUC and AP with 95% CIs, prevalence and counts, then the macro-AUC line."""
    w = max([5] + [len(n) for n in result["labels"]])
    head = f"{'label':<{w}}  {'AUC':>6} {'95% CI':>16}  {'AP':>6} {'95% CI':>16}  {'prev':>6}  {'n_pos':>6} "
    lines = [head + f"{'n_neg':>6}"]
    for name in result["labels"]:
        d = result["per_label"][name]
        lines.append(f"{name:<{w}}  {H.fmt(d['auc']['value']):>6} {_ci(d['auc']):>16}  {H.fmt(d['ap']['value']):>6} "
                     f"{_ci(d['ap']):>16}  {H.fmt(d['prevalence']['value']):>6}  {d['n_pos']:>6} {d['n_neg']:>6}")
    m = result["macro_auc"]
    n_used = len(result["labels"]) - len(result["skipped"])
    lines.append(f"macro-AUC {H.fmt(m['value'])} 95% CI {H.fmt_ci(m['ci95'])} over {n_used} "
                 f"label(s), {result['n']} images, {result['bootstrap']} bootstrap resamples of {result['resampling']}")
    for name, why in result["skipped"].items():
        lines.append(f"  {name}: {why}")
    return "\n".join(lines)


def add_threshold_stats(result: dict, data: EvalData, thresholds: dict, operating_point: str) -> None:
    """Sensitivity, specificity, PPV and NPV at each label's threshold, into result["per_label"][L]["at_threshold"]."""
    t = threshold_vector(thresholds, data.label_names, operating_point, fallback=np.nan)
    result["operating_point"] = operating_point
    for j, name in enumerate(data.label_names):
        known = ~np.isnan(data.labels[:, j])
        if np.isnan(t[j]):
            result["per_label"][name]["at_threshold"] = None
            continue
        result["per_label"][name]["at_threshold"] = confusion_stats(data.labels[known, j], data.probs[known, j], t[j])


def threshold_table_rows(result: dict) -> list[list]:
    rows = []
    for name in result["labels"]:
        s = result["per_label"][name].get("at_threshold")
        if s is not None:
            rows.append([name, s["threshold"], s["sensitivity"], s["specificity"], s["ppv"], s["npv"]])
    return rows


def write_eval_report(path: str | Path, data: EvalData, result: dict, title: str = "Evaluation") -> None:
    """Self-contained HTML: metrics table, ROC and precision-recall curves, reliability plot with ECE."""
    from cxr_fast.evaluate.plots import calibration_figure, pr_figure, roc_figure

    parts = [eval_summary_html(result)]
    y, p, names = data.labels, data.probs, data.label_names
    parts.append(H.section("ROC curves", H.image(roc_figure(y, p, names), "ROC curves")))
    parts.append(H.section("Precision-recall curves", H.image(pr_figure(y, p, names), "precision-recall curves")))
    cal, eces = calibration_figure(y, p, names)
    result["ece"] = eces
    parts.append(H.section("Calibration", H.image(cal, "reliability diagram")
                           + H.table(["label", "expected calibration error (10 bins)"], eces.items())))
    write_text_atomic(path, H.page(title, parts))


def eval_summary_html(result: dict, title: str = "Metrics with 95% bootstrap CIs") -> str:
    """The metrics table (and thresholds table when present) as an HTML section."""
    m = result["macro_auc"]
    body = H.para(f"macro-AUC {H.fmt(m['value'])}, 95% CI {H.fmt_ci(m['ci95'])}; {result['n']} images, "
                  f"{result['bootstrap']} bootstrap resamples of {result['resampling']} (seed {result['seed']}).")
    rows = [[n, d["auc"]["value"], _ci(d["auc"]), d["ap"]["value"], _ci(d["ap"]), d["prevalence"]["value"],
             d["n_pos"], d["n_neg"]] for n, d in ((n, result["per_label"][n]) for n in result["labels"])]
    body += H.table(["label", "AUC", "95% CI", "AP", "95% CI", "prevalence", "n_pos", "n_neg"], rows)
    for name, why in result.get("skipped", {}).items():
        body += H.note(f"{name}: {why}; left out of the macro-AUC.")
    trows = threshold_table_rows(result)
    if trows:
        body += H.para(f"At the {result.get('operating_point', '')} thresholds (decision: prob >= threshold):")
        body += H.table(["label", "threshold", "sensitivity", "specificity", "PPV", "NPV"], trows)
    return H.section(title, body)
