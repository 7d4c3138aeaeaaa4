"""Training CSV -> image names + float32 label matrix (NaN = unknown), with the errors users see."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.data.csv_read import check_header, line_numbers, read_csv_text, rows_text
from cxr_fast.data.label_columns import LABEL_VALUES, auto_detect, named
from cxr_fast.errors import UserError

# The 14 CheXpert labels of the seed's Quick Start, in its order.
CHEXPERT_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
MISSING_POLICIES = ("zeros", "ignore")


@dataclass
class LabelTable:
    """What the rest of the package needs from a training CSV."""

    path: Path
    names: list[str]           # image names as written in the CSV (relative to the image folder)
    labels: np.ndarray         # (N, C) float32; NaN = unknown (masked out of loss and AUC)
    label_names: list[str]
    groups: np.ndarray | None  # (N,) group ids (e.g. patient) or None
    uncertain: str
    missing: str
    csv_sha256: str

    def __len__(self) -> int:
        return len(self.names)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_label_list(labels: str | list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",")]
    labels = [s for s in labels if s]
    return labels or None


def _is_main() -> bool:
    """Rank 0, or not distributed. Reading a CSV does not import torch for this: without it loaded, torchrun's RANK."""
    if "torch" in sys.modules:
        from cxr_fast.dist import is_main

        return is_main()
    return os.environ.get("RANK", "0") == "0"


def read_table(
    csv_path: str | Path,
    image_col: str = "Image_name",
    labels: str | list[str] | None = None,
    uncertain: str = "zeros",
    missing: str = "zeros",
    group_col: str | None = None,
    log: Callable[[str], None] | None = print,
) -> LabelTable:
    """Read and validate a training CSV. Raises UserError with a one-line message naming the column and rows.

    `log` (rank 0 only) gets the label columns chosen and the columns left out, with the reason; None = quiet.
    """
    csv_path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"--uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if missing not in MISSING_POLICIES:
        raise UserError(f"--missing must be one of {MISSING_POLICIES}, got {missing!r}")
    df, dropped = check_header(csv_path, read_csv_text(csv_path))
    if image_col not in df.columns:
        raise UserError(f"{csv_path}: no image column {image_col!r} (columns: {', '.join(df.columns)}); "
                        f"use --image_col to name it")
    if len(df) == 0:
        raise UserError(f"{csv_path}: the CSV has a header but no rows")

    def lines_of(mask) -> np.ndarray:
        return line_numbers(csv_path, len(df))[np.flatnonzero(mask)]

    names = _image_names(df[image_col].astype(str), csv_path, image_col, lines_of)
    groups = _groups(df, csv_path, group_col, lines_of)
    skip = {image_col: "image column", **({group_col: "group column"} if group_col else {})}
    wanted = parse_label_list(labels)
    choice = (named(df, csv_path, wanted, skip) if wanted is not None
              else auto_detect(df, csv_path, skip, lines_of))
    choice.left_out[:0] = dropped
    out = np.empty((len(df), len(choice.labels)), dtype=np.float32)
    for j, c in enumerate(choice.labels):
        out[:, j] = _label_values(df[c].str.strip(), csv_path, c, uncertain, missing, lines_of)
    if log is not None and _is_main():
        log(choice.note(csv_path))
    return LabelTable(
        path=csv_path, names=names, labels=out, label_names=list(choice.labels), groups=groups,
        uncertain=uncertain, missing=missing, csv_sha256=file_sha256(csv_path),
    )


def _image_names(names: pd.Series, csv_path: Path, image_col: str, lines_of) -> list[str]:
    blank = names.str.strip() == ""
    if blank.any():
        raise UserError(f"{csv_path}: column {image_col!r} is empty at {rows_text(lines_of(blank))}")
    dup = names.duplicated(keep=False)
    if dup.any():
        first = names[dup].iloc[0]
        raise UserError(f"{csv_path}: column {image_col!r} has duplicate image names, e.g. {first!r} at "
                        f"{rows_text(lines_of(names == first))} ({int(names.duplicated().sum())} duplicates)")
    return names.tolist()


def _groups(df: pd.DataFrame, csv_path: Path, group_col: str | None, lines_of) -> np.ndarray | None:
    if group_col is None:
        return None
    if group_col not in df.columns:
        raise UserError(f"{csv_path}: no group column {group_col!r} (columns: {', '.join(df.columns)})")
    g = df[group_col].astype(str).str.strip()
    if (g == "").any():
        raise UserError(f"{csv_path}: column {group_col!r} is empty at {rows_text(lines_of(g == ''))}")
    return g.to_numpy()


def _label_values(col: pd.Series, csv_path: Path, c: str, uncertain: str, missing: str, lines_of) -> np.ndarray:
    """One label column's text -> float64 values under the -1 and blank policies (NaN = unknown)."""
    is_blank = col == ""
    vals = pd.to_numeric(col.where(~is_blank), errors="coerce")
    bad = (~is_blank) & vals.isna()
    if bad.any():
        raise UserError(f"{csv_path}: column {c!r} has non-numeric values (e.g. {col[bad].iloc[0]!r}) at "
                        f"{rows_text(lines_of(bad))}")
    outside = (~is_blank) & ~vals.isin(LABEL_VALUES)
    if outside.any():
        raise UserError(f"{csv_path}: column {c!r} has values outside {{0, 1, -1}} "
                        f"(e.g. {col[outside].iloc[0]!r}) at {rows_text(lines_of(outside))}")
    v = vals.to_numpy(dtype=np.float64, copy=True)  # pandas 3 (copy-on-write) may hand out a read-only view
    v[(v == -1.0)] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    v[is_blank.to_numpy()] = {"zeros": 0.0, "ignore": np.nan}[missing]
    return v


IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def list_test_images(test_dir: str | Path, exts: tuple[str, ...] = IMAGE_EXTS) -> list[str]:
    """Every image in `test_dir` (non-recursive), sorted by name, as in the original project."""
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise UserError(f"{test_dir}: test directory not found")
    names = sorted(p.name for p in test_dir.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not names:
        raise UserError(f"{test_dir}: no {'/'.join(e.lstrip('.') for e in exts)} images in the test directory")
    return names
