"""`cxr-compare`: paired comparison of two runs trained on the same folds (e.g. --refiner vs --no-refiner): the
OOF macro-AUC delta (A - B) with a paired bootstrap 95% CI, per-fold and per-label deltas, and a verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.cli.common import nonneg_int
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-compare", description=__doc__)
    p.add_argument("run_a", help="run folder A (its --out_dir: oof.csv, oof_labels.csv, folds.csv)")
    p.add_argument("run_b", help="run folder B, trained on the same folds")
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="paired bootstrap resamples (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (numpy default_rng)")
    p.add_argument("--group_col", default=None, help="resample whole groups (e.g. Patient ID) instead of images")
    p.add_argument("--out", default=None, help="write the comparison as JSON (compare.json)")
    return p


def _f(v) -> str:
    return "-" if v is None else f"{v:+.4f}"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.atomic import write_json_atomic
    from cxr_fast.evaluate.compare import compare_runs

    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise UserError(f"--out {args.out}: give a .json file name")
    r = compare_runs(args.run_a, args.run_b, n_boot=args.bootstrap, seed=args.seed, group_col=args.group_col)
    a_v, b_v = r["a_value"], r["b_value"]
    print(f"A {r['a']}: OOF macro-AUC {'-' if a_v is None else f'{a_v:.4f}'}")
    print(f"B {r['b']}: OOF macro-AUC {'-' if b_v is None else f'{b_v:.4f}'}  ({r['n']} out-of-fold images)")
    print("per fold (A - B): " + ", ".join(f"fold {f['fold']} {_f(f['delta'])}" for f in r["per_fold"]))
    w = max([5] + [len(n) for n in r["labels"]])
    for name in r["labels"]:
        d = r["per_label"][name]["delta"]
        ci = d["ci95"]
        print(f"  {name:<{w}}  {_f(d['value'])}  " + (f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))
    print(r["verdict"])
    if args.out:
        write_json_atomic(args.out, r)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
