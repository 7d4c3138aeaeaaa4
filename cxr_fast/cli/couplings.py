"""`cxr-couplings`: heatmap of the learned coupling matrix A (averaged over folds) and its strongest entries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.atomic import write_json_atomic
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-couplings", description=__doc__)
    p.add_argument("checkpoints", nargs="+", help="fold checkpoints ({model}_fold{K}.pth)")
    p.add_argument("--out", default="couplings.png", help="heatmap PNG; the strongest couplings go to <out>.json")
    p.add_argument("--top", type=int, default=5, help="couplings listed per label")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np

    from cxr_fast.evaluate.couplings import mean_coupling, plot_heatmap, top_couplings
    from cxr_fast.train.checkpoint import load_fold_checkpoints

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise UserError(f"--out {out}: give a .png, .pdf, .svg or .jpg file name")
    a, labels = mean_coupling(load_fold_checkpoints(args.checkpoints))
    if len(labels) < 2:  # A is 1x1: its only entry is the diagonal, which is not a coupling
        print(f"cxr-couplings: the checkpoints have one label ({labels[0]}): there is nothing to couple "
              f"(A is 1x1); nothing written")
        return 0
    top = top_couplings(a, labels, args.top)
    plot_heatmap(a, labels, out, title=f"Learned label couplings (A), mean of {len(args.checkpoints)} fold(s)")
    off = a[~np.eye(len(a), dtype=bool)]
    summary = {"labels": labels, "A": a.tolist(), "top": top, "nonzero_fraction": float((off != 0).mean()),
               "checkpoints": [str(c) for c in args.checkpoints]}
    json_path = out.with_suffix(".json")
    write_json_atomic(json_path, summary)
    for name, lst in top.items():
        print(f"{name} → " + (", ".join(f"{d['label']} ({d['A']:+.3g})" for d in lst) if lst else "(none)"))
    print(f"A: {(off != 0).mean():.0%} of off-diagonal entries non-zero")
    print(f"wrote {out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
