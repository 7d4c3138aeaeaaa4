"""`cxr-shard`: pack a training CSV + images (and a test folder) into WebDataset shards for DALI and PIL readers.

    cxr-shard --train_csv train.csv --train_dir images/ [--test_dir test/] --out shards/mydata
    cxr-shard verify shards/mydata

The format is docs/shard-format.md; the manifest.json is written last, so a folder without it is incomplete.
A killed or stopped run (bad images, a full disk) resumes when rerun with the same arguments: finished work is
checked and kept. One run per OUT at a time (OUT/.lock; a killed holder never blocks); a build that clearly will not
fit on the disk is refused before it starts, with the bytes needed and free.
"""

from __future__ import annotations

import argparse
import sys

from cxr_fast.cli.common import add_dataset_flags, positive_int
from cxr_fast.errors import cli_entry


def _window(s: str) -> tuple[float, float]:
    """'p1,p99' or '1,99' -> (1.0, 99.0): percentiles of each image's own values."""
    try:
        lo, hi = (float(v.strip().lstrip("pP")) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two percentiles like p1,p99, got {s!r}") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_csv", required=True, help="CSV with an image column + label columns")
    p.add_argument("--train_dir", required=True, help="folder the CSV's image names are relative to")
    p.add_argument("--test_dir", default=None, help="folder of test images (every .png/.jpg/.jpeg, sorted)")
    p.add_argument("--out", required=True, help="output folder, e.g. shards/mydata")
    p.add_argument("--folds", type=int, default=3, help="number of folds (default 3)")
    p.add_argument("--seed", type=int, default=42, help="seed of the folds and of the sample shuffle (default 42)")
    add_dataset_flags(p)
    p.add_argument("--resize", type=int, default=512,
                   help="longest side of stored images, never upscaled; 0 keeps the original size (default 512)")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg",
                   help="jpg = baseline 8-bit grayscale JPEG, decodable by the GPU's JPEG engine (default)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--samples_per_shard", type=positive_int, default=1000, help="samples per tar (default 1000)")
    p.add_argument("--workers", type=int, default=None,
                   help="encoding processes (default: every CPU this process may use: affinity, cgroup quota)")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave out unreadable images (listed in manifest.json) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with other arguments")
    p.add_argument("--window", type=_window, default=None,
                   help="window each image to 8 bits over these percentiles, e.g. p1,p99 (default: 16-bit images "
                        "over their own min..max, 8-bit ones as they are)")
    p.add_argument("--max_pixels", type=positive_int, default=None,
                   help="refuse images with more pixels than this (decompression-bomb guard; default 100M)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    return p


def build_verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-shard verify",
                                description="Re-read every shard: checksums, counts, labels vs samples.csv, indexes, "
                                            "image decodes. Exit 0 if all agree, 1 with a report otherwise.")
    p.add_argument("out", help="a cxr-shard output folder")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every usable CPU)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:
        return _verify(build_verify_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    from cxr_fast.images.window import DEFAULT_MAX_PIXELS
    from cxr_fast.shards.writer import write_shards

    write_shards(args.train_csv, args.train_dir, args.out, test_dir=args.test_dir, folds=args.folds,
                 seed=args.seed, labels=args.labels, image_col=args.image_col, group_col=args.group_col,
                 uncertain=args.uncertain, missing=args.missing, resize=args.resize, image_format=args.format,
                 quality=args.quality, samples_per_shard=args.samples_per_shard, workers=args.workers,
                 skip_bad=args.skip_bad, overwrite=args.overwrite, window=args.window,
                 max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=args.progress)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cxr_fast.shards.verify import verify_shards

    problems, summary = verify_shards(args.out, workers=args.workers, progress=args.progress)
    if problems:
        print(f"cxr-shard verify: {args.out}: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
