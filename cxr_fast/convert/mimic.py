"""MIMIC-CXR-JPG's CheXpert-label files -> our training CSV, through CheXpert's converter (same label columns,
uncertainty policies and `Patient ID`, here the subject folder `p10000032`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.convert.chexpert import convert_frame
from cxr_fast.convert.common import Converted, lines, read_source_csv
from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.errors import UserError

MIMIC_SPLITS = ("all", "train", "validate", "test")


def _mimic_file(root: Path, name: str) -> Path:
    for p in (root / name, root / f"{name}.gz"):
        if p.is_file():
            return p
    raise UserError(f"{root}: neither {name} nor {name}.gz found (is --root the MIMIC-CXR-JPG folder?)")


def mimic_frame(root: str | Path, split: str = "all") -> tuple[pd.DataFrame, Path, list[str]]:
    """MIMIC-CXR-JPG's own files (`mimic-cxr-2.0.0-{chexpert,metadata,split}.csv[.gz]`) -> a CheXpert-layout
    table: one row per image with its study's labels, `Path` = files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg,
    `Frontal/Lateral` from ViewPosition (PA/AP are frontal), `AP/PA` = ViewPosition.
    """
    root = Path(root)
    if split not in MIMIC_SPLITS:
        raise UserError(f"--mimic_split must be one of {', '.join(MIMIC_SPLITS)}, got {split!r}")
    ids = ["subject_id", "study_id"]
    lab_csv = _mimic_file(root, "mimic-cxr-2.0.0-chexpert.csv")
    labels = read_source_csv(lab_csv, ids + CHEXPERT_LABELS, "MIMIC-CXR-JPG CheXpert-label")
    dup = labels.duplicated(ids, keep=False).to_numpy()
    if dup.any():
        raise UserError(f"{lab_csv}: study listed more than once at {lines(np.flatnonzero(dup))}")
    meta_csv = _mimic_file(root, "mimic-cxr-2.0.0-metadata.csv")
    meta = read_source_csv(meta_csv, ["dicom_id"] + ids + ["ViewPosition"], "MIMIC-CXR-JPG metadata")
    notes = []
    if split != "all":
        split_csv = _mimic_file(root, "mimic-cxr-2.0.0-split.csv")
        sp = read_source_csv(split_csv, ["dicom_id", "split"], "MIMIC-CXR-JPG split")
        meta = meta[meta["dicom_id"].isin(set(sp.loc[sp["split"].str.strip() == split, "dicom_id"]))]
        notes.append(f"split: official {split}")
    merged = meta.merge(labels.drop(columns=[c for c in labels.columns if c not in ids + CHEXPERT_LABELS]),
                        on=ids, how="left", indicator=True)
    unlabelled = int((merged["_merge"] == "left_only").sum())
    merged = merged[merged["_merge"] == "both"].reset_index(drop=True)
    if unlabelled:
        notes.append(f"dropped {unlabelled} images whose study has no CheXpert labels")
    if len(merged) == 0:
        raise UserError(f"{meta_csv}: no image has labels in {lab_csv.name}")
    sid, study, view = merged["subject_id"].str.strip(), merged["study_id"].str.strip(), merged["ViewPosition"]
    merged["Path"] = "files/p" + sid.str[:2] + "/p" + sid + "/s" + study + "/" + merged["dicom_id"].str.strip() + ".jpg"
    merged["Frontal/Lateral"] = np.where(view.str.strip().isin(["PA", "AP"]), "Frontal", "Lateral")
    merged["AP/PA"] = view.str.strip()
    return merged, meta_csv, notes


def convert_mimic(root: str | Path, split: str = "all", **options) -> Converted:
    """MIMIC-CXR-JPG folder -> our table; options as for `convert_frame`."""
    df, source, notes = mimic_frame(root, split)
    conv = convert_frame(df, source, Path(root), **options)
    conv.notes[:0] = notes
    return conv
