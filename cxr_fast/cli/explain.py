"""`cxr-explain`: Grad-CAM heat maps of the refined logits (backbone + refiner) for chosen labels - a float32 map
at each image's original size (`<image>_<label>.npy`), an overlay PNG with the label's probability, and an
`index.html` contact sheet (images x labels)."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.cli.common import positive_int
from cxr_fast.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-explain", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="one fold checkpoint (e.g. outputs/resnet50_fold1.pth)")
    p.add_argument("--images", required=True, nargs="+",
                   help="image files and/or folders (.png/.jpg/.jpeg/.dcm/.tif; 16-bit and DICOM as in training)")
    p.add_argument("--labels", default="all", help='comma-separated label names, or "all" (default)')
    p.add_argument("--method", choices=("gradcam", "gradcam++", "eigencam"), default="gradcam")
    p.add_argument("--img_size", type=positive_int, default=None, help="network input size (default: checkpoint's)")
    p.add_argument("--out", default="explain", help="output folder (default: ./explain)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch_size", type=positive_int, default=8, help="labels per backward pass")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_fast.deploy.explain import run_explain
    from cxr_fast.train.run import resolve_device

    run_explain(args.checkpoint, args.images, args.out, labels=args.labels, method=args.method,
                img_size=args.img_size, device=resolve_device(args.device), batch=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
