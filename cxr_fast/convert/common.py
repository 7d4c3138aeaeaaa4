"""What the dataset converters share: reading the source CSV, missing-image handling, summary, atomic write."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.atomic import atomic_path
from cxr_fast.data.csv_read import read_csv_text
from cxr_fast.errors import UserError

IMAGE_COL = "Image_name"
GROUP_COL = "Patient ID"
_MAX_SHOWN = 5


@dataclass
class Converted:
    """One output table of a converter plus what its summary reports."""

    table: pd.DataFrame                  # Image_name, label columns (nullable Int8: 1/0/-1/<NA>), Patient ID, metadata
    label_names: list[str]
    source: Path
    uncertain_in: dict[str, int] = field(default_factory=dict)  # -1 cells per label in the source (kept rows)
    policies: dict[str, str] = field(default_factory=dict)      # per-label uncertainty policy applied
    notes: list[str] = field(default_factory=list)              # dropped rows and other things the user should know


def read_source_csv(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a dataset's own CSV as text (blank = ''), checking the columns we need are there."""
    df = read_csv_text(path, what=f"{what} CSV")
    df.columns = [str(c).strip() for c in df.columns]
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise UserError(f"{path}: not a {what} CSV: missing column(s) {', '.join(map(repr, absent))}")
    if len(df) == 0:
        raise UserError(f"{path}: the CSV has a header but no rows")
    return df


def lines(idx) -> str:
    """CSV line numbers (header = line 1) of 0-based row positions."""
    idx = [int(i) for i in idx]
    shown = ", ".join(str(i + 2) for i in idx[:_MAX_SHOWN])
    more = f" (+{len(idx) - _MAX_SHOWN} more)" if len(idx) > _MAX_SHOWN else ""
    return f"line{'s' if len(idx) > 1 else ''} {shown}{more}"


def check_duplicates(names: pd.Series, source: Path, col: str) -> None:
    dup = names.duplicated(keep=False).to_numpy()
    if dup.any():
        first = names[dup].iloc[0]
        raise UserError(f"{source}: column {col!r} lists {first!r} more than once "
                        f"({lines(np.flatnonzero((names == first).to_numpy()))})")


def drop_missing(found: np.ndarray, names: pd.Series, root: Path, skip_missing: bool) -> tuple[np.ndarray, str | None]:
    """Keep-mask for rows whose image exists; without --skip_missing, any missing image is an error."""
    missing = np.flatnonzero(~found)
    if len(missing) == 0:
        return found, None
    shown = ", ".join(str(names.iloc[i]) for i in missing[:_MAX_SHOWN])
    more = f" (+{len(missing) - _MAX_SHOWN} more)" if len(missing) > _MAX_SHOWN else ""
    if not skip_missing:
        raise UserError(f"{root}: {len(missing)} of {len(names)} listed images not found under the root: "
                        f"{shown}{more}; check --root or pass --skip_missing to drop them")
    return found, f"dropped {len(missing)} rows whose image is missing (e.g. {shown}{more})"


def to_label_dtype(values: np.ndarray) -> pd.arrays.IntegerArray:
    """float (1/0/-1/NaN) -> nullable Int8, which writes as 1/0/-1/blank."""
    return pd.array(np.asarray(values, dtype=np.float64), dtype="Int8")


def summary(conv: Converted, out: Path | None = None) -> str:
    """Images, patients, per-label prevalence and the uncertain/blank counts, as a small text table."""
    t = conv.table
    n = len(t)
    head = f"{conv.source} -> {out}" if out is not None else str(conv.source)
    patients = t[GROUP_COL].nunique() if GROUP_COL in t.columns else 0
    rows = [head, f"images: {n}   patients: {patients}   labels: {len(conv.label_names)}"]
    rows += [f"note: {s}" for s in conv.notes]
    w = max(len(c) for c in conv.label_names + ["label"])
    rows.append(f"{'label':<{w}}  {'pos':>7} {'prev%':>6} {'neg':>7} {'-1':>7} {'blank':>7} {'uncert_in':>9}  policy")
    for c in conv.label_names:
        v = t[c]
        pos, neg, unc = int((v == 1).sum()), int((v == 0).sum()), int((v == -1).sum())
        blank = int(v.isna().sum())
        prev = 100.0 * pos / n if n else 0.0
        rows.append(f"{c:<{w}}  {pos:>7} {prev:>6.2f} {neg:>7} {unc:>7} {blank:>7} "
                    f"{conv.uncertain_in.get(c, 0):>9}  {conv.policies.get(c, '-')}")
    return "\n".join(rows)


def write_csv_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Write to a temp file in the same folder, then rename: a reader never sees half a CSV."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: output path is a directory; name a .csv file")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8")
    return path
