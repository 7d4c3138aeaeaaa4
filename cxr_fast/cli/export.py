"""`cxr-export`: the fold ensemble as one ONNX or TorchScript file - uint8 images (B, 1, S, S) in, per-label
probabilities out, normalisation, refiner, fold mean and optional flip TTA inside - checked against PyTorch."""

from __future__ import annotations

import argparse
import glob
import sys

from cxr_fast.cli.common import positive_int
from cxr_fast.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-export", description=__doc__)
    p.add_argument("--checkpoints", required=True, nargs="+",
                   help='fold checkpoints or a glob, e.g. "outputs/*_fold*.pth"')
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", default=None, help="output file (default: model.onnx / model.pt)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="flip TTA inside the graph (as cxr-predict --tta)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check_batch", type=positive_int, default=3,
                   help="images in the batch the written file is checked on against PyTorch")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.deploy.export import export, labels_of

    paths = sorted({p for pat in args.checkpoints for p in (glob.glob(pat) or [pat])})
    out = args.out or ("model.onnx" if args.format == "onnx" else "model.pt")
    res = export(paths, args.format, out, tta=args.tta, opset=args.opset, check_batch=args.check_batch)
    meta = res["metadata"]
    opset = f", opset {res['opset']}" if res["opset"] else ""
    print(f"wrote {res['path']} ({args.format}{opset}): {meta['folds']} fold(s) of {meta['model']}, "
          f"{len(labels_of(meta))} labels, input uint8 (B, 1, {meta['img_size']}, {meta['img_size']})"
          f"{', flip TTA' if args.tta else ''}{', thresholds' if 'thresholds' in meta else ''}; "
          f"matches PyTorch within {res['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
