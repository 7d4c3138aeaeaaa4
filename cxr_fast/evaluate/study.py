"""Study-level scoring, as the CheXpert and MIMIC-CXR benchmarks score: one row per study (all views of one exam).

A study's probability is the max (or mean) of its images' probabilities; its truth is positive if any of its
images is, negative if all known images are negative, unknown only if every image is unknown. Every statistic is
then computed on the study table, so the bootstrap resamples studies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.data.csv_read import line_numbers, read_csv_text, rows_text
from cxr_fast.errors import UserError
from cxr_fast.evaluate.inputs import EvalData

AGGREGATES = ("max", "mean")


def study_column(paths: list[Path], image_col: str, study_col: str) -> tuple[Path, pd.Series]:
    """(the file read, image name -> study id) from the first of `paths` with `study_col`. UserError naming the
    files when none has it, or naming the line of a blank study id."""
    for path in paths:
        df = read_csv_text(path)
        df.columns = [str(c).strip() for c in df.columns]
        if study_col in df.columns and image_col in df.columns:
            ids = df[study_col].astype(str).str.strip()
            blank = np.flatnonzero((ids == "").to_numpy())
            if len(blank):
                raise UserError(f"{path}: column {study_col!r} is empty at {rows_text(line_numbers(path, len(df))[blank])}")
            names = df[image_col].astype(str)
            dup = np.flatnonzero(names.duplicated(keep=False).to_numpy())
            if len(dup):
                raise UserError(f"{path}: image {names.iloc[dup[0]]!r} is listed more than once (column {image_col!r}"
                                f" at {rows_text(line_numbers(path, len(df))[dup])}): one study per image")
            return path, pd.Series(ids.to_numpy(), index=names)
    raise UserError(f"--study_col {study_col!r}: no such column in {' or '.join(str(p) for p in paths)}")


def aggregate(names: list[str], labels: np.ndarray, probs: np.ndarray, studies: np.ndarray,
              agg: str = "max") -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(study ids in first-seen order, (S, C) truth, (S, C) probabilities, (S,) index of each study's first image).
    Truth: max over the known images (NaN when all unknown); probabilities: `agg` over all images."""
    if agg not in AGGREGATES:
        raise UserError(f"--study_agg must be one of {', '.join(AGGREGATES)}, got {agg!r}")
    codes, uniques = pd.factorize(pd.Series(np.asarray(studies, dtype=str)), sort=False)
    s, c = len(uniques), labels.shape[1]
    truth = np.full((s, c), np.nan)
    p = np.zeros((s, c)) if agg == "mean" else np.full((s, c), -np.inf)
    for j in range(c):
        known = ~np.isnan(labels[:, j])
        t = np.full(s, -np.inf)
        np.maximum.at(t, codes[known], labels[known, j])
        truth[:, j] = np.where(np.isfinite(t), t, np.nan)
        if agg == "max":
            np.maximum.at(p[:, j], codes, probs[:, j])
        else:
            p[:, j] = np.bincount(codes, weights=probs[:, j], minlength=s) / np.bincount(codes, minlength=s)
    first = np.full(s, len(names))
    np.minimum.at(first, codes, np.arange(len(names)))
    return [str(u) for u in uniques], truth, p, first


def study_level(data: EvalData, pred: Path, truth: Path, image_col: str, study_col: str,
                agg: str = "max") -> tuple[EvalData, dict]:
    """`data` aggregated per study (groups: the group of each study's first image), and the facts for eval.json:
    {"level": "study", "study_col", "study_agg", "study_col_from", "n_images", "n_studies"}."""
    source, ids = study_column([Path(pred), Path(truth)], image_col, study_col)
    missing = [n for n in data.names if n not in ids.index]
    if missing:
        raise UserError(f"{source}: no {study_col!r} for image {missing[0]!r} ({len(missing)} image(s))")
    studies = ids.loc[data.names].to_numpy()
    names, y, p, first = aggregate(data.names, data.labels, data.probs, studies, agg)
    groups = data.groups[first] if data.groups is not None else None
    out = EvalData(names=names, labels=y, probs=p, label_names=data.label_names, groups=groups,
                   not_evaluated=data.not_evaluated)
    return out, {"level": "study", "study_col": study_col, "study_agg": agg, "study_col_from": str(source),
                 "n_images": len(data.names), "n_studies": len(names)}


def study_map(study_csv: str | Path | None, study_col: str | None, image_col: str) -> pd.Series | None:
    """`cxr-predict --study_col COL --study_csv CSV`: image name -> study id (None without the flags); UserError
    when only one flag is given or the CSV lacks the columns. Read before inference, so a bad file costs no GPU."""
    if not study_col and not study_csv:
        return None
    if not study_col or not study_csv:
        raise UserError("--study_col and --study_csv go together: the CSV maps each image to its study")
    return study_column([Path(study_csv)], image_col, study_col)[1]


def check_study_names(ids: pd.Series, names: list[str], study_csv: str | Path) -> None:
    """UserError naming an image (of `names`; "" = a left-out image) that `study_csv` does not map to a study."""
    missing = [n for n in names if n and n not in ids.index]
    if missing:
        raise UserError(f"{study_csv}: no study for {len(missing)} predicted image(s), e.g. {missing[0]!r}")


def studies_path(out_csv: str | Path) -> Path:
    """`sub.csv` -> `sub_studies.csv`."""
    p = Path(out_csv)
    return p.with_name(f"{p.stem if p.suffix.lower() == '.csv' else p.name}_studies.csv")


def write_study_predictions(out_csv: str | Path, names: list[str], label_names: list[str], probs: np.ndarray,
                            ids: pd.Series, study_col: str, agg: str = "max") -> Path:
    """Write `<out_csv stem>_studies.csv` atomically: study id + one probability per label (`agg` over its
    images); returns its path."""
    from cxr_fast.atomic import atomic_path

    probs = np.asarray(probs, dtype=np.float64)
    studies, _, p, _ = aggregate(names, np.full(probs.shape, np.nan), probs, ids.loc[names].to_numpy(), agg)
    df = pd.DataFrame(p, columns=label_names)
    df.insert(0, study_col, studies)
    path = studies_path(out_csv)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")
    return path
