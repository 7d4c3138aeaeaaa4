"""`cxr-eval`: per-label AUC, average precision and prevalence with bootstrap 95% CIs, macro-AUC with its CI, and
optionally sensitivity/specificity/PPV/NPV at operating thresholds; JSON and an HTML page with ROC, PR and
calibration plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.cli.common import add_dataset_flags, nonneg_int
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-eval", description=__doc__)
    p.add_argument("--pred", required=True, help="predictions CSV: image column + one probability column per label")
    p.add_argument("--truth", required=True, help="truth CSV: image column + 0/1 per label (-1/blank: see below)")
    add_dataset_flags(p)
    p.set_defaults(uncertain="ignore", missing="ignore")  # evaluation: unknown = left out for that label
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (numpy default_rng)")
    p.add_argument("--out", default=None, help="write the results as JSON (eval.json)")
    p.add_argument("--report", default=None, help="write an HTML page with ROC, PR and calibration plots")
    p.add_argument("--thresholds", default=None, help="thresholds.json of a cxr-train run: sens/spec/PPV/NPV")
    p.add_argument("--operating_point", choices=("youden", "sens90"), default="youden")
    p.add_argument("--study_col", default=None,
                   help="score per study (CheXpert/MIMIC-CXR style): column of study ids, read from --pred, else "
                        "--truth; a study's truth is positive if any of its images is")
    p.add_argument("--study_agg", choices=("max", "mean"), default="max",
                   help="with --study_col: a study's probability is the max (default) or mean over its images")
    return p


def _threshold_lines(result: dict, data, thresholds: dict, operating_point: str) -> list[str]:
    """Per label: test-set sens/spec/PPV/NPV at the threshold, with the OOF figures it was chosen with beside
    them (also put into eval.json: at_threshold.oof_sensitivity / oof_specificity)."""
    from cxr_fast.evaluate.thresholds import APPLIED_TO, CHOSEN_ON, oof_figures

    result["thresholds_chosen_on"] = thresholds.get("chosen_on", CHOSEN_ON)
    result["thresholds_applied_to"] = thresholds.get("applied_to", APPLIED_TO)
    lines = [f"\nat the {operating_point} thresholds (prob >= threshold; chosen on {result['thresholds_chosen_on']}):"]
    for name in data.label_names:
        s = result["per_label"][name]["at_threshold"]
        if s is None:
            lines.append(f"  {name}: no threshold")
            continue
        oof = oof_figures(thresholds, name, operating_point) or {}
        s.update(oof_sensitivity=oof.get("sensitivity"), oof_specificity=oof.get("specificity"))
        shown = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in s.items()
                          if k in ("threshold", "sensitivity", "specificity", "ppv", "npv"))
        lines.append(f"  {name}: {shown} (OOF sensitivity {_f3(s['oof_sensitivity'])}, specificity "
                     f"{_f3(s['oof_specificity'])})")
    return lines


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.atomic import write_json_atomic
    from cxr_fast.data.leakage import warn_leakage
    from cxr_fast.evaluate.eval_page import add_threshold_stats, text_table, write_eval_report
    from cxr_fast.evaluate.inputs import read_eval_inputs
    from cxr_fast.evaluate.metrics import evaluate
    from cxr_fast.evaluate.study import study_level
    from cxr_fast.evaluate.thresholds import load_thresholds

    for flag, path, ext in (("--out", args.out, ".json"), ("--report", args.report, ".html")):
        if path is not None and Path(path).suffix.lower() not in (ext, ".htm" if ext == ".html" else ext):
            raise UserError(f"{flag} {path}: give a {ext} file name")
    data = read_eval_inputs(args.pred, args.truth, image_col=args.image_col, labels=args.labels,
                            group_col=args.group_col, uncertain=args.uncertain, missing=args.missing,
                            study_col=args.study_col)
    for path, cols in (data.not_evaluated or {}).items():
        print(f"note: {path}: column(s) {', '.join(cols)} not in both files: not evaluated", file=sys.stderr)
    warn_leakage(args.truth, image_col=args.image_col, label_names=[*data.label_names, args.study_col],
                 group_col=args.group_col, what="scores")
    level = {"level": "image"}
    if args.study_col:
        data, level = study_level(data, Path(args.pred), Path(args.truth), args.image_col, args.study_col,
                                  args.study_agg)
        print(f"study level: {level['n_studies']} studies from {level['n_images']} images ({args.study_agg} of "
              f"each study's probabilities; study ids from {level['study_col_from']})")
    thresholds = load_thresholds(args.thresholds, data.label_names) if args.thresholds else None
    result = evaluate(data.labels, data.probs, data.label_names, groups=data.groups, n_boot=args.bootstrap,
                      seed=args.seed)
    result.update(pred=str(args.pred), truth=str(args.truth), **level)
    if thresholds is not None:
        add_threshold_stats(result, data, thresholds, args.operating_point)
        result["thresholds_file"] = str(args.thresholds)
    print(text_table(result))
    if thresholds is not None:
        print("\n".join(_threshold_lines(result, data, thresholds, args.operating_point)))
    if args.report:
        write_eval_report(args.report, data, result,
                          title=f"Evaluation of {Path(args.pred).name} against {Path(args.truth).name}")
        print(f"wrote {args.report}")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
