"""`cxr-compare`: paired comparison of runs trained on the same folds (e.g. --refiner vs --no-refiner, r seeds per
arm): the mean within-fold macro-AUC delta (A - B) with a paired bootstrap CI (evaluation noise) and a corrected
resampled t-interval (training noise), per-fold and per-label deltas, the pooled OOF delta, and a verdict that
calls a run better only when both intervals exclude 0. See docs/evidence.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.cli.common import nonneg_int
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-compare", description=__doc__)
    p.add_argument("run_a", nargs="?", help="run folder A (its --out_dir: oof.csv, oof_labels.csv, folds.csv)")
    p.add_argument("run_b", nargs="?", help="run folder B, trained on the same folds")
    p.add_argument("--a", nargs="+", default=None, metavar="RUN", help="arm A: one or more run folders (e.g. seeds)")
    p.add_argument("--b", nargs="+", default=None, metavar="RUN",
                   help="arm B: as many run folders as --a, paired by position (same folds)")
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="paired bootstrap resamples (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (numpy default_rng)")
    p.add_argument("--group_col", default=None, help="resample whole groups (e.g. Patient ID) within each fold instead of images")
    p.add_argument("--out", default=None, help="write the comparison as JSON (compare.json)")
    return p


def _f(v) -> str:
    return "-" if v is None else f"{v:+.4f}"


def _arms(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.a is None and args.b is None:
        if args.run_a is None or args.run_b is None:
            raise UserError("give two run folders (cxr-compare RUN_A RUN_B) or --a RUN [RUN...] --b RUN [RUN...]")
        return [args.run_a], [args.run_b]
    if args.run_a is not None or args.a is None or args.b is None:
        raise UserError("give either two run folders or --a RUN [RUN...] --b RUN [RUN...], not a mix")
    return args.a, args.b


def _leakage_note(run: str, labels: list[str], image_col: str | None) -> None:
    """Once: a patient column in the run's oof_labels.csv or training CSV and no --group_col."""
    from cxr_fast.data.leakage import warn_leakage
    from cxr_fast.evaluate.runs import run_csvs

    for path in run_csvs(Path(run)):
        if warn_leakage(path, image_col=image_col, label_names=labels, group_col=None, what="scores"):
            return


def print_result(r: dict) -> None:
    """The per-fold deltas, per-label deltas, both intervals, the pooled line and the verdict."""
    n_a = len(r["runs_a"])
    for arm in ("a", "b"):
        v = r[f"{arm}_value"]
        print(f"{arm.upper()} {', '.join(r['runs_' + arm])}: mean per-fold macro-AUC {'-' if v is None else f'{v:.4f}'}")
    print(f"{r['n']} out-of-fold images, {n_a} run(s) per arm")
    print("per fold (A - B): " + ", ".join((f"run {f['pair']} " if n_a > 1 else "") + f"fold {f['fold']} "
                                          f"{_f(f['delta'])}" for f in r["per_fold"]))
    w = max([5] + [len(n) for n in r["labels"]])
    print("per label (mean within-fold delta, bootstrap 95% CI):")
    for name in r["labels"]:
        d = r["per_label"][name]["delta"]
        ci = d["ci95"]
        print(f"  {name:<{w}}  {_f(d['value'])}  " + (f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))
    t = r["t_test"]
    print(f"bootstrap 95% CI {_ci(r['ci95'])} ({r['bootstrap']} resamples of {r['resampling']} within each fold: "
          f"evaluation noise)")
    print(f"corrected t 95% CI {_ci(r['t_ci95'])} " + (f"({t['n_deltas']} per-fold deltas, {t['dof']} dof, "
          f"n_val/n_train {t['n_val_over_n_train']:.3f}: training noise)" if t["why"] is None else f"({t['why']})"))
    p = r["pooled"]
    print(f"pooled OOF delta {_f(p['value'])} {_ci(p['ci95'])} (secondary: {p['note']})")
    print(r["verdict"])


def _ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.atomic import write_json_atomic
    from cxr_fast.evaluate.compare import compare_runs

    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise UserError(f"--out {args.out}: give a .json file name")
    runs_a, runs_b = _arms(args)
    r = compare_runs(runs_a, runs_b, n_boot=args.bootstrap, seed=args.seed, group_col=args.group_col)
    if args.group_col is None:
        _leakage_note(runs_a[0], r["labels"], r.get("image_col"))
    print_result(r)
    if args.out:
        write_json_atomic(args.out, r)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
