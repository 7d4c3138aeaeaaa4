"""Which CSV columns are labels: named with --labels, or auto-detected by the rule below, and a note saying which.

Auto-detection, over the columns other than the image and group columns, counting only non-blank cells (a cell
of spaces is blank) and reading numbers as numbers (`1.0`, ` 1` and `1` are the same):
- every cell is 0, 1 or -1                        -> a label column;
- at least LABEL_SHARE (80%) are, but not all     -> a label column with bad cells: UserError naming the column,
                                                     the lines and the values, and how to leave it out (--labels);
- fewer (an ID, age or index column), or no cells -> not a label; left out, and the note says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.errors import UserError

LABEL_VALUES = (0.0, 1.0, -1.0)
LABEL_SHARE = 0.8  # at least this share of 0/1/-1 cells makes a column a label (with bad cells if not all)
_SHOWN = 5


@dataclass
class ColumnChoice:
    labels: list[str]
    how: str                                                          # "auto-detected" or "named by --labels"
    left_out: list[tuple[str, str]] = field(default_factory=list)     # (column, why)

    def note(self, csv_path: Path) -> str:
        """Two lines: the label columns chosen, and the columns left out with the reason."""
        out = ", ".join(f"{c} ({why})" for c, why in self.left_out) or "none"
        return (f"{csv_path}: {len(self.labels)} label column(s) ({self.how}): {', '.join(self.labels)}\n"
                f"{csv_path}: left out: {out}")


def _in_label_set(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(non-blank, non-blank and numerically 0/1/-1) masks of a text column."""
    text = col.astype(str).str.strip()
    present = text != ""
    vals = pd.to_numeric(text.where(present), errors="coerce")
    return present, present & vals.isin(LABEL_VALUES)


def _example(col: pd.Series, mask: pd.Series) -> str:
    return repr(col[mask].iloc[0].strip()) if mask.any() else ""


def auto_detect(df: pd.DataFrame, csv_path: Path, skip: dict[str, str],
                lines_of: Callable[[np.ndarray], np.ndarray]) -> ColumnChoice:
    """Apply the module's rule to every column of `df` not in `skip` (column -> why it is not a label).

    `lines_of(mask)` gives the CSV file lines of the rows where `mask` holds (only called for an error)."""
    choice = ColumnChoice(labels=[], how="auto-detected: only 0, 1, -1 or blank",
                          left_out=[(c, why) for c, why in skip.items() if c in df.columns])
    suspect = []
    for c in df.columns:
        if c in skip:
            continue
        present, ok = _in_label_set(df[c])
        n, k = int(present.sum()), int(ok.sum())
        if n == 0:
            choice.left_out.append((c, "every cell blank"))
        elif k == n:
            choice.labels.append(c)
        elif k >= LABEL_SHARE * n:
            suspect.append((c, present & ~ok, k / n))
        else:
            choice.left_out.append((c, f"{k / n:.0%} of its cells are 0/1/-1, e.g. {_example(df[c], present & ~ok)}"))
    if suspect:
        _refuse_suspect(df, csv_path, suspect, choice.labels, lines_of)
    if not choice.labels:
        raise UserError(f"{csv_path}: no label columns found (a label column holds only 0, 1, -1 or blanks); "
                        f"name them with --labels")
    return choice


def _refuse_suspect(df: pd.DataFrame, csv_path: Path, suspect: list, good: list[str],
                    lines_of: Callable[[np.ndarray], np.ndarray]) -> None:
    c, bad, share = suspect[0]
    rows = np.flatnonzero(bad.to_numpy())
    lines = lines_of(bad.to_numpy())
    shown = ", ".join(f"{df[c].iloc[r].strip()!r} on line {int(ln)}" for r, ln in zip(rows[:_SHOWN], lines[:_SHOWN]))
    more = f" (+{len(rows) - _SHOWN} more)" if len(rows) > _SHOWN else ""
    also = f" (so do {', '.join(repr(s[0]) for s in suspect[1:])})" if len(suspect) > 1 else ""
    keep = ",".join(good)
    how = (f"or leave it out by naming the labels: --labels \"{keep}\"" if good
           else "or name the label columns with --labels")
    raise UserError(f"{csv_path}: column {c!r} looks like a label ({share:.0%} of its non-blank cells are 0, 1 or "
                    f"-1) but has other values: {shown}{more}{also}; fix them, {how}")


def named(df: pd.DataFrame, csv_path: Path, wanted: list[str], skip: dict[str, str]) -> ColumnChoice:
    """--labels: every name must be a column, once, and neither the image nor the group column."""
    absent = [c for c in wanted if c not in df.columns]
    if absent:
        raise UserError(f"{csv_path}: label column(s) {', '.join(map(repr, absent))} named in --labels "
                        f"are not in the CSV")
    if len(set(wanted)) != len(wanted):
        raise UserError("--labels names a column twice")
    if any(c in skip for c in wanted):
        raise UserError("--labels must not include the image or group column")
    left = [(c, skip.get(c, "not in --labels")) for c in df.columns if c not in wanted]
    return ColumnChoice(labels=list(wanted), how="named by --labels", left_out=left)
