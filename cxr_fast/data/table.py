"""Training CSV -> image names + float32 label matrix (NaN = unknown), with the errors users see."""

from __future__ import annotations

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


def _rows(idx) -> str:
    """CSV line numbers (header = line 1) of the first offending rows."""
    idx = list(idx)
    shown = ", ".join(str(int(i) + 2) for i in idx[:_MAX_SHOWN])
    more = f" (+{len(idx) - _MAX_SHOWN} more)" if len(idx) > _MAX_SHOWN else ""
    return f"line{'s' if len(idx) > 1 else ''} {shown}{more}"


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
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: CSV file not found")
    try:
        # Everything as text first: we decide what is numeric, and image names keep their exact spelling.
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{csv_path}: the CSV is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{csv_path}: not a readable UTF-8 CSV ({str(e).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if image_col not in df.columns:
        raise UserError(f"{csv_path}: no image column {image_col!r} (columns: {', '.join(df.columns)}); "
                        f"use --image_col to name it")
    if len(df) == 0:
        raise UserError(f"{csv_path}: the CSV has a header but no rows")

    names = df[image_col].astype(str)
    blank = names.str.strip() == ""
    if blank.any():
        raise UserError(f"{csv_path}: column {image_col!r} is empty at {_rows(np.flatnonzero(blank))}")
    dup = names.duplicated(keep=False)
    if dup.any():
        first = names[dup].iloc[0]
        raise UserError(f"{csv_path}: column {image_col!r} has duplicate image names, e.g. {first!r} at "
                        f"{_rows(np.flatnonzero(names == first))} ({int(names.duplicated().sum())} duplicates)")

    groups = None
    if group_col is not None:
        if group_col not in df.columns:
            raise UserError(f"{csv_path}: no group column {group_col!r} (columns: {', '.join(df.columns)})")
        g = df[group_col].astype(str).str.strip()
        if (g == "").any():
            raise UserError(f"{csv_path}: column {group_col!r} is empty at {_rows(np.flatnonzero(g == ''))}")
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
            i = np.flatnonzero(bad)
            raise UserError(f"{csv_path}: column {c!r} has non-numeric values (e.g. {col.iloc[i[0]]!r}) at {_rows(i)}")
        outside = (~is_blank) & ~vals.isin([0.0, 1.0, -1.0])
        if outside.any():
            i = np.flatnonzero(outside)
            raise UserError(f"{csv_path}: column {c!r} has values outside {{0, 1, -1}} "
                            f"(e.g. {col.iloc[i[0]]!r}) at {_rows(i)}")
        v = vals.to_numpy(dtype=np.float64)
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
