"""Patient leakage: find a column that identifies patients in a training/truth CSV, so a command that builds folds
(or scores out-of-fold predictions) without `--group_col` says once that one patient's images can land in
different folds. It only warns: fold assignment never changes behind the user's back.

The rule (docs/evidence.md states it for users). A column other than the image, group and label columns is a
patient column when
  - its name, lower-cased with spaces, underscores and hyphens removed, is one of `PATIENT_NAMES` (the converters'
    `Patient ID`, `patient`, `subject_id`, `MRN`, ...), and its values repeat (some patient has two rows); or
  - its values are text (not all numbers, not all dates), at least `MIN_DISTINCT` distinct, repeating
    `MIN_ROWS_PER_VALUE` to `MAX_ROWS_PER_VALUE` times on average (a patient has a few images; Sex, View Position or
    a site have few distinct values and many rows each, image names never repeat).
Setting the environment variable `CXR_NO_LEAKAGE_NOTE=1` silences the note (for a column the rule flags wrongly).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from cxr_fast.data.csv_read import read_csv_text

PATIENT_NAMES = frozenset({"patient", "patientid", "patientnumber", "patientno", "patientidx", "subject",
                           "subjectid", "mrn", "medicalrecordnumber", "pid"})
MIN_DISTINCT = 10
MIN_ROWS_PER_VALUE = 2.0
MAX_ROWS_PER_VALUE = 50.0
SILENCE_ENV = "CXR_NO_LEAKAGE_NOTE"


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def _is_text(values: pd.Series) -> bool:
    """True unless every value is a number or every value is a date (those are ages, sizes, study dates)."""
    values = values.drop_duplicates()
    if pd.to_numeric(values, errors="coerce").notna().all():
        return False
    try:
        dates = pd.to_datetime(values, errors="coerce", format="mixed")
    except (TypeError, ValueError):
        return True
    return not dates.notna().all()


def patient_columns(df: pd.DataFrame, skip: Iterable[str]) -> list[str]:
    """The columns of `df` (all read as text) that identify patients by the module's rule; `skip`: the image,
    group and label columns."""
    skipped = {str(s).strip() for s in skip if s}
    found = []
    for col in df.columns:
        name = str(col).strip()
        if name in skipped:
            continue
        values = df[col].astype(str).str.strip()
        values = values[values != ""]
        n, distinct = len(values), values.nunique()
        if n == 0 or distinct == n:
            continue
        by_values = (distinct >= MIN_DISTINCT and MIN_ROWS_PER_VALUE <= n / distinct <= MAX_ROWS_PER_VALUE
                     and _is_text(values))
        if _norm(name) in PATIENT_NAMES or by_values:
            found.append(name)
    return found


def leakage_note(csv_path: str | Path, *, image_col: str | None, label_names: Iterable[str],
                 group_col: str | None, what: str = "folds") -> str | None:
    """One line naming the patient column and the flag, or None (a group column given, none found, silenced, or
    the file unreadable: the caller's own reader reports that). `what`: "folds" for the commands that build folds,
    "scores" for the ones that score out-of-fold predictions."""
    if group_col or os.environ.get(SILENCE_ENV, "").strip() not in ("", "0"):
        return None
    try:
        df = read_csv_text(Path(csv_path))
    except Exception:  # noqa: BLE001 - the note is advisory; the real reader reports a bad file
        return None
    cols = patient_columns(df, [image_col, *label_names, "fold"])
    if not cols:
        return None
    col = cols[0]
    if what == "folds":
        effect = "images of one patient will land in different folds (an optimistic cross-validation)"
    else:
        effect = ("the bootstrap treats one patient's images as independent (intervals too narrow), and out-of-fold "
                  "predictions may come from folds that split patients")
    return (f"WARNING {csv_path}: column {col!r} identifies patients and no --group_col was given: {effect}; "
            f"pass --group_col {_quoted(col)} (set {SILENCE_ENV}=1 if it is not a patient column)")


def _quoted(col: str) -> str:
    return f'"{col}"' if re.search(r"\s", col) else col


def warn_leakage(csv_path: str | Path, *, image_col: str | None, label_names: Iterable[str], group_col: str | None,
                 log: Callable[[str], None] | None = None, what: str = "folds") -> str | None:
    """`leakage_note` sent to `log` (stderr when None); returns the note."""
    note = leakage_note(csv_path, image_col=image_col, label_names=label_names, group_col=group_col, what=what)
    if note is not None:
        (log or (lambda s: print(s, file=sys.stderr)))(note)
    return note
