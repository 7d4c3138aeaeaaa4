"""Flags shared by several commands (dataset layer), so each keeps one name and one meaning."""

from __future__ import annotations

import argparse


def add_dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", type=str, default=None,
                   help="comma-separated label columns, in this order (default: auto-detect 0/1/-1 columns)")
    p.add_argument("--image_col", default="Image_name", help="CSV column with image names (CheXpert: Path)")
    p.add_argument("--group_col", default=None, help="column of group ids (e.g. Patient ID) kept in one fold")
    p.add_argument("--uncertain", choices=("zeros", "ones", "ignore"), default="zeros",
                   help="what -1 (uncertain) becomes; ignore = unknown, masked from loss and AUC")
    p.add_argument("--missing", choices=("zeros", "ignore"), default="zeros", help="what a blank label becomes")


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def decay(s: str) -> float:
    v = float(s)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {s}")
    return v
