"""cxr-synth: write a synthetic chest X-ray dataset (train.csv, train/, test/, test_labels.csv, couplings.json)."""

from __future__ import annotations

import argparse
import sys
import time

from cxr_fast.errors import cli_entry
from cxr_fast.synth.write import BIT_DEPTHS, FORMATS, generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-synth", description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n_train", type=int, default=600)
    p.add_argument("--n_test", type=int, default=100)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="png")
    p.add_argument("--bit_depth", type=int, choices=BIT_DEPTHS, default=8, help="16 = 16-bit PNG (png only)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    paths = generate(a.out, n_train=a.n_train, n_test=a.n_test, size=a.size, seed=a.seed, fmt=a.fmt,
                     bit_depth=a.bit_depth, workers=a.workers, progress=not a.no_progress, overwrite=a.overwrite)
    print(f"wrote {a.n_train + a.n_test} images in {time.perf_counter() - t0:.1f}s")
    for key, path in paths.items():
        print(f"  {key:16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
