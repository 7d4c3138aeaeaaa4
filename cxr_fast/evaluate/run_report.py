"""`report.html` of a training run: one self-contained page built from whatever outputs the run folder holds.

Each section is built on its own; a missing or unreadable input leaves a sentence saying so in its place, and
`write_report` never raises on a run folder with partial outputs (only a failing write of the page itself does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import cxr_fast.evaluate.html as H
import cxr_fast.run_folder as rf
from cxr_fast.atomic import write_text_atomic
from cxr_fast.evaluate.eval_page import eval_summary_html
from cxr_fast.evaluate.inputs import EvalData
from cxr_fast.evaluate.run_sections import couplings_section, curves_section, throughput_section

REPORT_NAME = rf.REPORT


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def config_section(run: Path, ctx: dict) -> str:
    path = run / rf.CONFIG
    if not path.is_file():
        return H.note("No config.json in the run folder: the configuration is not shown.")
    cfg = _json(path)
    ctx["config"] = cfg
    return H.table(["setting", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v]
                                          for k, v in cfg.items()])


def folds_section(run: Path, ctx: dict) -> str:
    path = run / rf.CV_SUMMARY
    if not path.is_file():
        return H.note("No cv_summary.json: the run did not finish its cross-validation, so there is no per-fold "
                      "table.")
    s = _json(path)
    rows = [[f.get("fold"), f.get("best_epoch"), f.get("val_auc"), f.get("epochs_run"), f.get("refiner_sparsity")]
            for f in s.get("folds", [])]
    body = H.table(["fold", "best epoch", "val macro-AUC", "epochs run", "A sparsity"], rows)
    body += H.para(f"Mean validation macro-AUC {H.fmt(s.get('mean_auc'))} ± {H.fmt(s.get('std_auc'))}; OOF macro-AUC "
                   f"{H.fmt(s.get('oof_macro_auc'))}; split: {s.get('split_method', '?')}.")
    n_folds = ctx.get("config", {}).get("folds")
    done = {f.get("fold") for f in s.get("folds", [])}
    if isinstance(n_folds, int):
        absent = [k for k in range(1, n_folds + 1) if k not in done]
        if absent:
            body += H.note(f"Fold(s) {', '.join(map(str, absent))} of {n_folds} were not run (--folds_to_run): "
                           f"the out-of-fold results below cover only the folds listed.")
    if all(f.get("refiner_sparsity") is None for f in s.get("folds", [])):
        body += H.note("No refiner sparsity: the run has no label-coupling refiner (--no-refiner).")
    return body


def oof_section(run: Path, ctx: dict) -> str:
    from cxr_fast.evaluate.metrics import evaluate
    from cxr_fast.evaluate.plots import roc_figure
    from cxr_fast.evaluate.runs import read_run

    for name in (rf.OOF, rf.OOF_LABELS):
        if not (run / name).is_file():
            return H.note(f"No {name} in the run folder: no out-of-fold AUCs with confidence intervals and no ROC "
                          f"curves.")
    oof = read_run(run)
    res = evaluate(oof.labels, oof.probs, oof.label_names, n_boot=ctx["n_boot"], seed=ctx["seed"], progress=False)
    body = eval_summary_html(res, "Per-label out-of-fold AUC with 95% bootstrap CIs")
    if res["skipped"] and len(res["skipped"]) == len(oof.label_names):
        return body + H.note("No label has both classes among the out-of-fold rows: no ROC curves.")
    body += H.section("ROC curves (out-of-fold)", H.image(roc_figure(oof.labels, oof.probs, oof.label_names),
                                                          "out-of-fold ROC curves"))
    return body


def thresholds_section(run: Path, ctx: dict) -> str:
    path = run / rf.THRESHOLDS
    if not path.is_file():
        return H.note("No thresholds.json: operating thresholds were not written for this run.")
    doc = _json(path)
    body = H.para("Decision: prob >= threshold; sensitivity and specificity measured on the out-of-fold predictions.")
    ops = doc.get("operating_points", {})
    rows = []
    for name in doc.get("labels", []):
        y, s = ops.get("youden", {}).get(name), ops.get("sens90", {}).get(name)
        if y or s:
            rows.append([name] + [v.get(k) if v else None for v in (y, s)
                                  for k in ("threshold", "sensitivity", "specificity")])
    body += H.table(["label", "Youden t", "sens", "spec", "sens>=0.90 t", "sens", "spec"], rows)
    for name, why in doc.get("skipped", {}).items():
        body += H.note(f"{name}: no threshold ({why}).")
    return body


def test_section(test_eval: dict | None, test_data: EvalData | None) -> str:
    from cxr_fast.evaluate.plots import roc_figure

    if test_eval is None:
        return H.note("No test-set evaluation: rebuild with cxr-report RUN_DIR --pred SUB.csv --truth TRUTH.csv.")
    body = eval_summary_html(test_eval, "Test-set metrics")
    if test_data is not None:
        body += H.image(roc_figure(test_data.labels, test_data.probs, test_data.label_names, "Test-set ROC"),
                        "test-set ROC curves")
    return body


def _safe(title: str, fn: Callable[[], str]) -> str:
    try:
        body = fn()
    except Exception as e:  # noqa: BLE001 - a report never fails a run: say what went wrong instead
        msg = re.sub(r"\s+", " ", f"{type(e).__name__}: {e}")[:500]
        body = H.para(f"This section could not be built: {msg}", "err")
    return H.section(title, body)


def write_report(run_dir: str | Path, test_eval: dict | None = None, *, test_data: EvalData | None = None,
                 n_boot: int = 1000, seed: int = 0) -> Path:
    """Write `run_dir/report.html` (atomically) and return its path. `test_eval`: a `cxr_fast.evaluate.metrics.
    evaluate` result for a test set (with `test_data`, its ROC curves are drawn too)."""
    run = Path(run_dir)
    ctx: dict = {"n_boot": n_boot, "seed": seed}
    parts = [H.para(f"Run folder: {run.resolve()}")]
    for title, fn in (("Configuration", config_section), ("Cross-validation folds", folds_section),
                      ("Training curves", curves_section), ("Out-of-fold evaluation", oof_section),
                      ("Label couplings", couplings_section), ("Operating thresholds", thresholds_section),
                      ("Throughput", throughput_section)):
        parts.append(_safe(title, lambda fn=fn: fn(run, ctx)))
    parts.append(_safe("Test-set evaluation", lambda: test_section(test_eval, test_data)))
    out = run / REPORT_NAME
    write_text_atomic(out, H.page(f"cxr_fast run report: {run.resolve().name}", parts))
    return out


