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
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.atomic import write_json_atomic
    from cxr_fast.evaluate.eval_page import add_threshold_stats, text_table, write_eval_report
    from cxr_fast.evaluate.inputs import read_eval_inputs
    from cxr_fast.evaluate.metrics import evaluate
    from cxr_fast.evaluate.thresholds import load_thresholds

    for flag, path, ext in (("--out", args.out, ".json"), ("--report", args.report, ".html")):
        if path is not None and Path(path).suffix.lower() not in (ext, ".htm" if ext == ".html" else ext):
            raise UserError(f"{flag} {path}: give a {ext} file name")
    data = read_eval_inputs(args.pred, args.truth, image_col=args.image_col, labels=args.labels,
                            group_col=args.group_col, uncertain=args.uncertain, missing=args.missing)
    for path, cols in (data.not_evaluated or {}).items():
        print(f"note: {path}: column(s) {', '.join(cols)} not in both files: not evaluated", file=sys.stderr)
    thresholds = load_thresholds(args.thresholds, data.label_names) if args.thresholds else None
    result = evaluate(data.labels, data.probs, data.label_names, groups=data.groups, n_boot=args.bootstrap,
                      seed=args.seed)
    result.update(pred=str(args.pred), truth=str(args.truth))
    if thresholds is not None:
        add_threshold_stats(result, data, thresholds, args.operating_point)
    print(text_table(result))
    if thresholds is not None:
        print(f"\nat the {args.operating_point} thresholds (prob >= threshold):")
        for name in data.label_names:
            s = result["per_label"][name]["at_threshold"]
            print(f"  {name}: " + ("no threshold" if s is None else ", ".join(
                f"{k} {v:.3f}" if v is not None else f"{k} -"
                for k, v in s.items() if k in ("threshold", "sensitivity", "specificity", "ppv", "npv"))))
    if args.report:
        write_eval_report(args.report, data, result, title=f"Evaluation of {Path(args.pred).name}")
        print(f"wrote {args.report}")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
