"""`cxr-report`: rebuild a run's report.html, optionally adding a test-set evaluation (--pred with --truth) and a
refiner/ablation verdict (--compare, a cxr-compare output)."""

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
    p.add_argument("--bootstrap", type=nonneg_int, default=1000,
                   help="bootstrap resamples for the 95%% CIs (default 1000, as the report cxr-train writes)")
    p.add_argument("--seed", type=int, default=None,
                   help="bootstrap seed (default: the run's own --seed from config.json, as cxr-train's report uses, "
                        "so a rebuild shows the same out-of-fold intervals)")
    p.add_argument("--compare", default=None,
                   help="a cxr-compare --out JSON (e.g. this run against a --no-refiner run): adds its verdict")
    return p


def run_seed(run: Path) -> int:
    """The run's --seed from config.json (0 when not recorded)."""
    import json

    from cxr_fast.run_folder import RunPaths

    try:
        seed = json.loads(RunPaths(run).config.read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError, AttributeError):
        return 0
    return seed if isinstance(seed, int) else 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.evaluate.run_report import write_report

    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found")
    if (args.pred is None) != (args.truth is None):
        raise UserError("--pred and --truth go together")
    seed = run_seed(run) if args.seed is None else args.seed
    compare = None
    if args.compare:
        from cxr_fast.evaluate.compare_section import load_compare

        compare = load_compare(args.compare)
    test_eval = data = None
    if args.pred:
        from cxr_fast.evaluate.inputs import read_eval_inputs
        from cxr_fast.evaluate.metrics import evaluate

        data = read_eval_inputs(args.pred, args.truth, image_col=args.image_col, labels=args.labels,
                                group_col=args.group_col, uncertain=args.uncertain, missing=args.missing)
        test_eval = evaluate(data.labels, data.probs, data.label_names, groups=data.groups, n_boot=args.bootstrap,
                             seed=seed)
        m = test_eval["macro_auc"]
        ci = m["ci95"]
        print(f"test macro-AUC {m['value']:.4f}" + (f", 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
              if m["value"] is not None else "test macro-AUC: no label has both classes")
    out = write_report(run, test_eval, test_data=data, n_boot=args.bootstrap, seed=seed, compare=compare)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
