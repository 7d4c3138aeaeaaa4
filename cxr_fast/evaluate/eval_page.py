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


OPERATING_POINT_NAMES = {"youden": "Youden (maximum sensitivity + specificity - 1)",
                         "sens90": "sensitivity >= 0.90 (the highest such threshold)"}


def threshold_table_rows(result: dict) -> list[list]:
    """Per label with a threshold: threshold, test sens/spec/PPV/NPV, then the OOF sens/spec it was chosen with
    (when cxr-eval put them there)."""
    rows = []
    for name in result["labels"]:
        s = result["per_label"][name].get("at_threshold")
        if s is not None:
            rows.append([name, s["threshold"], s["sensitivity"], s["specificity"], s["ppv"], s["npv"],
                         s.get("oof_sensitivity"), s.get("oof_specificity")])
    return rows


def write_eval_report(path: str | Path, data: EvalData, result: dict, title: str = "Evaluation") -> None:
    """Self-contained HTML: metrics table, ROC and precision-recall curves, reliability plot with ECE (one panel
    per label)."""
    from cxr_fast.evaluate.plots import calibration_figure, pr_figure, roc_figure

    parts = [eval_summary_html(result)]
    y, p, names = data.labels, data.probs, data.label_names
    parts.append(H.section("ROC curves", H.image(roc_figure(y, p, names), "ROC curves, one panel per label")))
    parts.append(H.section("Precision-recall curves", H.image(pr_figure(y, p, names),
                                                              "precision-recall curves, one panel per label")))
    cal, eces = calibration_figure(y, p, names)
    result["ece"] = eces
    parts.append(H.section("Calibration", H.image(cal, "reliability diagrams, one panel per label")
                           + H.table(["label", "ECE (expected calibration error, 10 bins)"], eces.items())))
    write_text_atomic(path, H.page(title, parts))


def skipped_notes(skipped: dict[str, str], tail: str = "left out of the macro-AUC") -> str:
    """One note per distinct reason, naming every label it applies to (not one line per label)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in skipped.items():
        by_reason.setdefault(why, []).append(name)
    return "".join(H.note(f"{', '.join(names)}: {why}; {tail}.") for why, names in by_reason.items())


def auc_table(result: dict) -> str:
    """Per-label AUC/AP with CIs, prevalence and counts; labels with few positives say their AUC is unstable."""
    from cxr_fast.evaluate.plots import FEW_POSITIVES

    rows, few = [], []
    for n in result["labels"]:
        d = result["per_label"][n]
        flag = ""
        if d["auc"]["value"] is not None and min(d["n_pos"], d["n_neg"]) < FEW_POSITIVES:
            flag = f"too few {'positives' if d['n_pos'] <= d['n_neg'] else 'negatives'} for a stable AUC"
            few.append(n)
        rows.append([n, d["auc"]["value"], _ci(d["auc"]), d["ap"]["value"], _ci(d["ap"]), d["prevalence"]["value"],
                     d["n_pos"], d["n_neg"], flag])
    body = H.table(["label", "AUC", "95% CI", "AP", "95% CI", "prevalence", "n_pos", "n_neg", "note"], rows)
    if few:
        body += H.note(f"{len(few)} label(s) have fewer than {FEW_POSITIVES} positive (or negative) images: their AUC "
                       f"and its interval rest on a handful of images and can swing widely with a few more; read "
                       f"them as unknown, not as poor or good.")
    return body


def eval_summary_html(result: dict, title: str = "Metrics with 95% bootstrap CIs", level: int = 2) -> str:
    """The metrics table (and thresholds table when present) as an HTML section."""
    m = result["macro_auc"]
    body = H.para(f"macro-AUC {H.fmt(m['value'])}, 95% CI {H.fmt_ci(m['ci95'])}; {result['n']} images, "
                  f"{result['bootstrap']} bootstrap resamples of {result['resampling']} (seed {result['seed']}).")
    body += auc_table(result) + skipped_notes(result.get("skipped", {}))
    trows = threshold_table_rows(result)
    if trows:
        op = result.get("operating_point", "")
        src = result.get("thresholds_file")
        body += H.para(f"At the {OPERATING_POINT_NAMES.get(op, op)} thresholds"
                       + (f" of {src}" if src else "") + " (decision: prob >= threshold). "
                       + (f"Chosen on {result['thresholds_chosen_on']}; " if result.get("thresholds_chosen_on")
                          else "") + "measured here on these images:")
        body += H.table(["label", "threshold", "sensitivity", "specificity", "PPV", "NPV", "sensitivity",
                         "specificity"], trows,
                        groups=[("", 2), ("on these images", 4), ("out-of-fold (where chosen)", 2)])
    return H.section(title, body, level)
