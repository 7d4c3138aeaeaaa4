"""`cxr-report`: rebuild a run's report.html, optionally adding a test-set evaluation (--pred with --truth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.cli.common import add_dataset_flags, nonneg_int
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-report", description=__doc__)
    p.add_argument("run_dir", help="a cxr-train --out_dir")
    p.add_argument("--pred", default=None, help="test-set predictions (the submission CSV)")
    p.add_argument("--truth", default=None, help="test-set truth CSV")
    add_dataset_flags(p)
    p.set_defaults(uncertain="ignore", missing="ignore")
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.evaluate.run_report import write_report

    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found")
    if (args.pred is None) != (args.truth is None):
        raise UserError("--pred and --truth go together")
    test_eval = data = None
    if args.pred:
        from cxr_fast.evaluate.inputs import read_eval_inputs
        from cxr_fast.evaluate.metrics import evaluate

        data = read_eval_inputs(args.pred, args.truth, image_col=args.image_col, labels=args.labels,
                                group_col=args.group_col, uncertain=args.uncertain, missing=args.missing)
        test_eval = evaluate(data.labels, data.probs, data.label_names, groups=data.groups, n_boot=args.bootstrap,
                             seed=args.seed)
        m = test_eval["macro_auc"]
        ci = m["ci95"]
        print(f"test macro-AUC {m['value']:.4f}" + (f", 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
              if m["value"] is not None else "test macro-AUC: no label has both classes")
    out = write_report(run, test_eval, test_data=data, n_boot=args.bootstrap, seed=args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
