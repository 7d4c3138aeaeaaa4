"""Training CSV -> image names + float32 label matrix (NaN = unknown), with the errors users see."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError

# The 14 CheXpert labels of the seed's Quick Start, in its order.
CHEXPERT_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
MISSING_POLICIES = ("zeros", "ignore")
_MAX_SHOWN = 5


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


def _rows(lines) -> str:
    """'line(s) ...' for the first offending rows, given their CSV line numbers."""
    lines = list(lines)
    shown = ", ".join(str(int(i)) for i in lines[:_MAX_SHOWN])
    more = f" (+{len(lines) - _MAX_SHOWN} more)" if len(lines) > _MAX_SHOWN else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _line_numbers(csv_path: Path, n_rows: int) -> np.ndarray:
    """CSV line (header = line 1) on which each data row starts.

    Not simply row + 2: pandas skips blank and whitespace-only lines, and a quoted field may span lines.
    Only computed when an error needs it.
    """
    starts, prev = [], 0
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for rec in reader:
            if len(rec) > 1 or (rec and rec[0].strip()):
                starts.append(prev + 1)
            prev = reader.line_num
    starts = starts[1:]  # drop the header
    if len(starts) != n_rows:  # the csv module and pandas disagree on some odd file: keep the simple count
        return np.arange(n_rows) + 2
    return np.asarray(starts)


def _duplicate_columns(csv_path: Path) -> list[str]:
    """Header names that occur twice (pandas would silently rename the second 'A' to 'A.1')."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header = next((r for r in csv.reader(f) if len(r) > 1 or (r and r[0].strip())), [])
    header = [c.strip() for c in header]
    return sorted({c for c in header if header.count(c) > 1})


def parse_label_list(labels: str | list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",")]
    labels = [s for s in labels if s]
    return labels or None


def _is_label_column(col: pd.Series) -> bool:
    """Auto-detect rule: every non-missing value is numeric and lies in {0, 1, -1}; at least one value present."""
    vals = pd.to_numeric(col, errors="coerce")
    present = col.notna() & (col.astype(str).str.strip() != "")
    if not present.any() or vals[present].isna().any():
        return False
    return bool(vals[present].isin([0.0, 1.0, -1.0]).all())


def read_csv_text(path: str | Path, what: str = "CSV") -> pd.DataFrame:
    """Read a CSV with every cell as text (blank = ''): we decide what is numeric, and image names keep their exact
    spelling. A UTF-8 byte-order mark is accepted. UserError if the file is missing, empty or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the CSV is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable UTF-8 CSV ({str(e).splitlines()[0]})") from None


def read_table(
    csv_path: str | Path,
    image_col: str = "Image_name",
    labels: str | list[str] | None = None,
    uncertain: str = "zeros",
    missing: str = "zeros",
    group_col: str | None = None,
) -> LabelTable:
    """Read and validate a training CSV. Raises UserError with a one-line message naming the column and rows."""
    csv_path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"--uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if missing not in MISSING_POLICIES:
        raise UserError(f"--missing must be one of {MISSING_POLICIES}, got {missing!r}")
    df = read_csv_text(csv_path)
    dup_cols = _duplicate_columns(csv_path)
    if dup_cols:
        raise UserError(f"{csv_path}: the header names column(s) {', '.join(map(repr, dup_cols))} more than once")
    df.columns = [str(c).strip() for c in df.columns]
    if image_col not in df.columns:
        raise UserError(f"{csv_path}: no image column {image_col!r} (columns: {', '.join(df.columns)}); "
                        f"use --image_col to name it")
    if len(df) == 0:
        raise UserError(f"{csv_path}: the CSV has a header but no rows")

    def at(mask) -> str:
        return _rows(_line_numbers(csv_path, len(df))[np.flatnonzero(mask)])

    names = df[image_col].astype(str)
    blank = names.str.strip() == ""
    if blank.any():
        raise UserError(f"{csv_path}: column {image_col!r} is empty at {at(blank)}")
    dup = names.duplicated(keep=False)
    if dup.any():
        first = names[dup].iloc[0]
        raise UserError(f"{csv_path}: column {image_col!r} has duplicate image names, e.g. {first!r} at "
                        f"{at(names == first)} ({int(names.duplicated().sum())} duplicates)")

    groups = None
    if group_col is not None:
        if group_col not in df.columns:
            raise UserError(f"{csv_path}: no group column {group_col!r} (columns: {', '.join(df.columns)})")
        g = df[group_col].astype(str).str.strip()
        if (g == "").any():
            raise UserError(f"{csv_path}: column {group_col!r} is empty at {at(g == '')}")
        groups = g.to_numpy()

    wanted = parse_label_list(labels)
    if wanted is not None:
        absent = [c for c in wanted if c not in df.columns]
        if absent:
            raise UserError(f"{csv_path}: label column(s) {', '.join(map(repr, absent))} named in --labels "
                            f"are not in the CSV")
        if len(set(wanted)) != len(wanted):
            raise UserError("--labels names a column twice")
        if image_col in wanted or (group_col and group_col in wanted):
            raise UserError("--labels must not include the image or group column")
        label_names = wanted
    else:
        skip = {image_col, group_col}
        label_names = [c for c in df.columns if c not in skip and _is_label_column(df[c])]
        if not label_names:
            raise UserError(f"{csv_path}: no label columns found (a label column holds only 0, 1, -1 or blanks); "
                            f"name them with --labels")

    raw = df[label_names].apply(lambda s: s.str.strip())
    out = np.empty(raw.shape, dtype=np.float32)
    for j, c in enumerate(label_names):
        col = raw[c]
        is_blank = col == ""
        vals = pd.to_numeric(col.where(~is_blank), errors="coerce")
        bad = (~is_blank) & vals.isna()
        if bad.any():
            first = col[bad].iloc[0]
            raise UserError(f"{csv_path}: column {c!r} has non-numeric values (e.g. {first!r}) at {at(bad)}")
        outside = (~is_blank) & ~vals.isin([0.0, 1.0, -1.0])
        if outside.any():
            raise UserError(f"{csv_path}: column {c!r} has values outside {{0, 1, -1}} "
                            f"(e.g. {col[outside].iloc[0]!r}) at {at(outside)}")
        v = vals.to_numpy(dtype=np.float64, copy=True)  # pandas 3 (copy-on-write) may hand out a read-only view
        v[(v == -1.0)] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
        v[is_blank.to_numpy()] = {"zeros": 0.0, "ignore": np.nan}[missing]
        out[:, j] = v
    return LabelTable(
        path=csv_path, names=names.tolist(), labels=out, label_names=list(label_names), groups=groups,
        uncertain=uncertain, missing=missing, csv_sha256=file_sha256(csv_path),
    )


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
