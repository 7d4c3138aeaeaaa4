"""Reading a predictions CSV and a truth CSV for evaluation, with one-line errors for every mismatch.

TRUTH goes through the training reader (`cxr_fast.data.table.read_table`), so -1 and blanks follow the same
--uncertain / --missing policies; PRED is an image column plus one probability column per label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.data.csv_read import line_numbers, read_csv_text, rows_text
from cxr_fast.data.table import parse_label_list, read_table
from cxr_fast.errors import UserError

NOT_LABELS = ("fold",)  # oof.csv's fold column is not a label
_SHOWN = 3


@dataclass
class EvalData:
    names: list[str]
    labels: np.ndarray            # (N, C) float; NaN = unknown
    probs: np.ndarray             # (N, C) float64 in [0, 1]
    label_names: list[str]
    groups: np.ndarray | None
    not_evaluated: dict[str, list[str]] | None = None  # per file, its other columns (neither image, group nor label)


def _first(items: list[str]) -> str:
    shown = ", ".join(repr(s) for s in items[:_SHOWN])
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def read_probabilities(path: str | Path, image_col: str, label_names: list[str]) -> pd.DataFrame:
    """PRED as a frame indexed by image name with float64 label columns in [0, 1]. UserError naming the column and
    CSV line for a missing column, a duplicate name, a non-numeric or blank value or one outside [0, 1]."""
    path = Path(path)
    df = read_csv_text(path, "predictions")
    df.columns = [str(c).strip() for c in df.columns]
    if image_col not in df.columns:
        raise UserError(f"{path}: no image column {image_col!r} (columns: {', '.join(df.columns)}); use --image_col")
    absent = [c for c in label_names if c not in df.columns]
    if absent:
        raise UserError(f"{path}: label column(s) {_first(absent)} missing from the predictions")
    names = df[image_col].astype(str)
    dup = names.duplicated(keep=False).to_numpy()
    if dup.any():
        raise UserError(f"{path}: duplicate image name {names[dup].iloc[0]!r} at "
                        f"{rows_text(line_numbers(path, len(df))[np.flatnonzero(dup)])}")
    out = pd.DataFrame(index=pd.Index(names, name=image_col))
    for c in label_names:
        raw = df[c].str.strip()
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(vals)
        what = "blank or non-numeric values"
        if not bad.any():
            bad = (vals < 0.0) | (vals > 1.0)
            what = "probabilities outside [0, 1]"
        if bad.any():
            raise UserError(f"{path}: column {c!r} has {what} (e.g. {raw[bad].iloc[0]!r}) at "
                            f"{rows_text(line_numbers(path, len(df))[np.flatnonzero(bad)])}")
        out[c] = vals
    return out


def shared_labels(pred_path: Path, truth_path: Path, image_col: str, group_col: str | None,
                  labels: str | list[str] | None, study_col: str | None = None) -> list[str]:
    """--labels (each must be in both files), else the non-image columns both headers share."""
    pred_cols = [str(c).strip() for c in read_csv_text(pred_path, "predictions").columns]
    truth_cols = [str(c).strip() for c in read_csv_text(truth_path, "truth").columns]
    wanted = parse_label_list(labels)
    if wanted is not None:
        for cols, path in ((pred_cols, pred_path), (truth_cols, truth_path)):
            absent = [c for c in wanted if c not in cols]
            if absent:
                raise UserError(f"{path}: label column(s) {_first(absent)} named in --labels are not in the file")
        return wanted
    skip = {image_col, group_col, study_col, *NOT_LABELS}
    shared = [c for c in pred_cols if c in truth_cols and c not in skip]
    if not shared:
        raise UserError(f"{pred_path} and {truth_path} share no label column (predictions: "
                        f"{', '.join(c for c in pred_cols if c not in skip) or 'none'})")
    return shared


def read_eval_inputs(pred: str | Path, truth: str | Path, *, image_col: str = "Image_name",
                     labels: str | list[str] | None = None, group_col: str | None = None,
                     uncertain: str = "ignore", missing: str = "ignore", study_col: str | None = None) -> EvalData:
    """PRED and TRUTH aligned row by row (in TRUTH's order). Every PRED name must be in TRUTH and the reverse.
    `study_col` is neither a label nor reported as not evaluated (see `evaluate.study`)."""
    pred, truth = Path(pred), Path(truth)
    names = shared_labels(pred, truth, image_col, group_col, labels, study_col)
    t = read_table(truth, image_col=image_col, labels=names, uncertain=uncertain, missing=missing,
                   group_col=group_col, log=None)
    p = read_probabilities(pred, image_col, names)
    in_truth = set(t.names)
    extra = [n for n in p.index if n not in in_truth]
    if extra:
        raise UserError(f"{pred}: {len(extra)} image name(s) not in {truth}, e.g. {_first(extra)}")
    missing_names = [n for n in t.names if n not in p.index]
    if missing_names:
        raise UserError(f"{truth}: {len(missing_names)} image name(s) have no prediction in {pred}, "
                        f"e.g. {_first(missing_names)}")
    probs = p.loc[t.names, names].to_numpy(dtype=np.float64)
    skip = {image_col, group_col, study_col, *NOT_LABELS, *names}
    other = {str(path): [c for c in read_csv_text(path).columns if str(c).strip() not in skip] for path in (pred, truth)}
    return EvalData(names=list(t.names), labels=t.labels.astype(np.float64), probs=probs, label_names=names,
                    groups=t.groups, not_evaluated={k: v for k, v in other.items() if v})
