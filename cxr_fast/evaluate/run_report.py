"""`report.html` of a training run: one self-contained page built from whatever outputs the run folder holds.

Each section is built on its own; a missing or unreadable input leaves a sentence saying so in its place, and
`write_report` never raises on a run folder with partial outputs (only a failing write of the page itself does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
    """Every setting of config.json, folded (the results come first); a null data path of a run trained from
    shards names the shards and the CSV they were built from instead."""
    cfg = ctx.get("config")
    if cfg is None:
        path = run / rf.CONFIG
        if not path.is_file():
            return H.note("No config.json in the run folder: the configuration is not shown.")
        cfg = ctx["config"] = _json(path)
    src = (ctx.get("manifest") or {}).get("source") or {}
    rows = []
    for k, v in cfg.items():
        shown = v if isinstance(v, str) else json.dumps(v)
        if v is None and cfg.get("shards") and k in ("train_csv", "train_dir", "test_dir"):
            shown = f"null: trained from the shards {cfg['shards']}" + (f", built from {src[k]}" if src.get(k) else "")
        rows.append([k, shown])
    return H.details(f"All {len(rows)} settings (config.json: a valid cxr-train --config file)",
                     H.table(["setting", "value"], rows))


def folds_section(run: Path, ctx: dict) -> str:
    path = run / rf.CV_SUMMARY
    if not path.is_file():
        return H.note("No cv_summary.json: the run did not finish its cross-validation, so there is no per-fold "
                      "table.")
    s = _json(path)
    rows = [[f.get("fold"), f.get("best_epoch"), f.get("val_auc"), f.get("epochs_run"), f.get("refiner_sparsity")]
            for f in s.get("folds", [])]
    body = H.table(["fold", "best epoch", "val macro-AUC", "epochs run", "couplings at 0 (A sparsity)"], rows)
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


def _groups(run: Path, ctx: dict, oof) -> tuple:
    """Patient ids of the OOF rows when the run was grouped (so the CIs resample patients), else None; a note when
    they cannot be read."""
    from cxr_fast.evaluate.runs import read_groups

    group = ctx.get("config", {}).get("group_col") or (ctx.get("manifest") or {}).get("group_col")
    if not group:
        return None, ""
    try:
        return read_groups(run, group, oof.image_col, oof.names), ""
    except Exception as e:  # noqa: BLE001 - the CSV moved: images resampled instead, and said
        return None, H.note(f"Group column {group!r} not readable ({e}): the intervals resample images.")


def curves_html(y, p, names: list[str], what: str) -> str:
    """ROC curves and reliability diagrams (one panel per label) as two subsections."""
    from cxr_fast.evaluate.plots import calibration_figure, roc_figure

    cal, eces = calibration_figure(y, p, names)
    worst = max(eces.items(), key=lambda kv: kv[1], default=None)
    return (H.section(f"ROC curves ({what})", H.image(roc_figure(y, p, names, f"ROC curves ({what})"),
                                                      f"{what} ROC curves, one panel per label"), 3)
            + H.section(f"Calibration ({what})", H.image(cal, f"{what} reliability diagrams, one panel per label")
                        + H.para("Points on the dotted diagonal: a predicted probability of 0.3 comes true 30% of the "
                                 "time. ECE: mean |fraction positive - mean probability| over 10 bins"
                                 + (f"; largest: {worst[0]} {worst[1]:.3f}." if worst else ".")), 3))


def oof_section(run: Path, ctx: dict) -> str:
    from cxr_fast.evaluate.metrics import evaluate
    from cxr_fast.evaluate.runs import read_run

    for name in (rf.OOF, rf.OOF_LABELS):
        if not (run / name).is_file():
            return H.note(f"No {name} in the run folder: no out-of-fold AUCs with confidence intervals and no ROC "
                          f"curves.")
    oof = ctx["oof"] = read_run(run)
    groups, body = _groups(run, ctx, oof)
    res = ctx["oof_eval"] = evaluate(oof.labels, oof.probs, oof.label_names, groups=groups, n_boot=ctx["n_boot"],
                                     seed=ctx["seed"], progress=False)
    body += H.para("Each image scored by the fold model that did not train on it.")
    body += eval_summary_html(res, "Per-label out-of-fold AUC with 95% bootstrap CIs", 3)
    if res["skipped"] and len(res["skipped"]) == len(oof.label_names):
        return body + H.note("No label has both classes among the out-of-fold rows: no ROC curves.")
    return body + curves_html(oof.labels, oof.probs, oof.label_names, "out-of-fold")


def _test_stats(data: EvalData | None, ops: dict) -> dict:
    """{(op, label): confusion stats on the test set} at the run's thresholds."""
    from cxr_fast.evaluate.thresholds import confusion_stats

    out = {}
    if data is None:
        return out
    for op, per in ops.items():
        for j, name in enumerate(data.label_names):
            if isinstance(per.get(name), dict):
                known = ~np.isnan(data.labels[:, j])
                out[op, name] = confusion_stats(data.labels[known, j], data.probs[known, j], per[name]["threshold"])
    return out


def thresholds_section(run: Path, ctx: dict) -> str:
    from cxr_fast.evaluate.eval_page import OPERATING_POINT_NAMES, skipped_notes

    path = run / rf.THRESHOLDS
    if not path.is_file():
        return H.note("No thresholds.json: operating thresholds were not written for this run.")
    doc = _json(path)
    ops = {op: v for op, v in doc.get("operating_points", {}).items() if isinstance(v, dict)}
    test = _test_stats(ctx.get("test_data"), ops)
    body = H.para("A label is called positive when prob >= threshold. Thresholds chosen on "
                  f"{doc.get('chosen_on', 'the out-of-fold predictions')}; applied to "
                  f"{doc.get('applied_to', 'the fold-ensemble mean on new images')}.")
    body += H.note("The out-of-fold sensitivity and specificity are measured on the same predictions the thresholds "
                   "were chosen on, so they are optimistic" + ("; the test-set columns are not (-: the test set has "
                                                              "no positive, or no negative, image of that label)."
                                                              if test else
                                                              ": check them on labelled test images (cxr-report RUN "
                                                              "--pred SUB.csv --truth T.csv)."))
    cols = ["sensitivity", "specificity"]
    for op, per in ops.items():
        rows = []
        for name in doc.get("labels", []):
            v, t = per.get(name), test.get((op, name)) or {}
            if isinstance(v, dict):
                rows.append([name, v.get("threshold"), v.get("sensitivity"), v.get("specificity")]
                            + ([t.get("sensitivity"), t.get("specificity")] if test else []))
        groups = [("", 2), ("out-of-fold (optimistic)", 2)] + ([("test set", 2)] if test else [])
        body += H.section(f"At the {OPERATING_POINT_NAMES.get(op, op)} thresholds",
                          H.table(["label", "threshold"] + cols * (2 if test else 1), rows, groups=groups), 3)
    return body + skipped_notes(doc.get("skipped", {}), "no threshold")


def test_section(test_eval: dict | None, test_data: EvalData | None) -> str:
    if test_eval is None:
        return H.note("No test-set evaluation: rebuild with cxr-report RUN_DIR --pred SUB.csv --truth TRUTH.csv.")
    body = eval_summary_html(test_eval, "Test-set metrics", 3)
    if test_data is not None:
        body += curves_html(test_data.labels, test_data.probs, test_data.label_names, "test set")
    return body


def _safe(title: str, fn: Callable[[], str]) -> str:
    try:
        body = fn()
    except Exception as e:  # noqa: BLE001 - a report never fails a run: say what went wrong instead
        msg = re.sub(r"\s+", " ", f"{type(e).__name__}: {e}")[:500]
        body = H.para(f"This section could not be built: {msg}", "err")
    return H.section(title, body)


def summary_section(run: Path, ctx: dict, test_eval: dict | None, compare: dict | None) -> str:
    """The headline figures, first on the page: what was trained on what, and how well it did."""
    cfg, lines = ctx.get("config") or {}, []
    if cfg:
        lines.append(f"Model {cfg.get('model', '?')}, {len(cfg.get('labels') or [])} labels, {cfg.get('folds', '?')}-"
                     f"fold cross-validation{', label-coupling refiner' if cfg.get('refiner') else ', no refiner'}.")
    for what, res in (("Out-of-fold", ctx.get("oof_eval")), ("Test-set", test_eval)):
        if res is not None and res["macro_auc"]["value"] is not None:
            m = res["macro_auc"]
            lines.append(f"{what} macro-AUC {m['value']:.3f} (95% CI {H.fmt_ci(m['ci95'])}) over "
                         f"{len(res['labels']) - len(res['skipped'])} label(s) and {res['n']} images.")
    if compare is not None:
        lines.append(f"Comparison: {compare.get('verdict')}")
    lines.append(f"Run folder: {run.resolve()}")
    return "".join(H.para(x) for x in lines)


def write_report(run_dir: str | Path, test_eval: dict | None = None, *, test_data: EvalData | None = None,
                 n_boot: int = 1000, seed: int = 0, compare: dict | None = None) -> Path:
    """Write `run_dir/report.html` (atomically) and return its path. `test_eval`: a `cxr_fast.evaluate.metrics.
    evaluate` result for a test set (with `test_data`, its curves and the thresholds' test figures too);
    `compare`: a cxr-compare output (`compare_section.load_compare`). Results first, the configuration last."""
    from cxr_fast.evaluate.compare_section import compare_section
    from cxr_fast.evaluate.data_section import data_section

    run = Path(run_dir)
    ctx: dict = {"n_boot": n_boot, "seed": seed, "test_data": test_data}
    parts = []
    for title, fn in (("Data", data_section), ("Cross-validation folds", folds_section),
                      ("Training curves", curves_section), ("Throughput", throughput_section),
                      ("Out-of-fold evaluation", oof_section), ("Operating thresholds", thresholds_section),
                      ("Label couplings", couplings_section)):
        parts.append(_safe(title, lambda fn=fn: fn(run, ctx)))
    parts.append(_safe("Test-set evaluation", lambda: test_section(test_eval, test_data)))
    parts.append(_safe("Refiner / ablation comparison", lambda: compare_section(run, compare)))
    parts.append(_safe("Configuration", lambda: config_section(run, ctx)))
    parts.insert(0, _safe("Summary", lambda: summary_section(run, ctx, test_eval, compare)))
    out = run / REPORT_NAME
    write_text_atomic(out, H.page(f"cxr_fast run report: {run.resolve().name}", parts))
    return out
