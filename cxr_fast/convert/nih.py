"""NIH ChestX-ray14 (`Data_Entry_2017.csv` + `images_*/images/*.png`) -> our training CSV.

Output columns: `Image_name` (path relative to the root, wherever the image lies under it), the 14 NIH labels and
`No Finding` (0/1), `Patient ID` (for `--group_col "Patient ID"`), `Patient Age`, `Patient Gender`,
`View Position` when the source has them. `Follow-up #` is left out on purpose: a subset whose follow-ups are all
0/1 would look like a label column to `read_table`'s auto-detection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast.convert.common import (
    GROUP_COL,
    IMAGE_COL,
    Converted,
    check_duplicates,
    drop_missing,
    lines,
    read_source_csv,
    to_label_dtype,
)
from cxr_fast.errors import UserError

NIH_LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm")
_META = ("Patient Age", "Patient Gender", "View Position")


@dataclass
class NihResult:
    train: Converted
    test: Converted | None  # only with split="official"


def parse_findings(findings: pd.Series, source: Path, names: pd.Series | None = None) -> np.ndarray:
    """`A|B` / `No Finding` -> (N, 15) float: the 14 labels then No Finding. Unknown names are errors."""
    out = np.zeros((len(findings), len(NIH_LABELS) + 1), dtype=np.float64)
    col = {name: j for j, name in enumerate(NIH_LABELS + [NO_FINDING])}
    for i, text in enumerate(findings.astype(str)):
        parts = [p.strip() for p in text.split("|")]
        where = f"{lines([i])}" + (f" ({names.iloc[i]})" if names is not None else "")
        if not text.strip() or "" in parts:
            raise UserError(f"{source}: column 'Finding Labels' is empty or has an empty finding at {where}")
        unknown = [p for p in parts if p not in col]
        if unknown:
            raise UserError(f"{source}: unknown finding {unknown[0]!r} in 'Finding Labels' at {where} "
                            f"(known: {', '.join(NIH_LABELS)}, {NO_FINDING})")
        if NO_FINDING in parts and len(parts) > 1:
            raise UserError(f"{source}: 'Finding Labels' combines {NO_FINDING!r} with findings at {where}")
        out[i, [col[p] for p in parts]] = 1.0
    return out


def index_images(root: Path) -> dict[str, str | None]:
    """File name -> path relative to root for every image under root (None when the name occurs twice).

    Follows symlinked folders (downloads are often linked in) but visits each real folder once.
    """
    found: dict[str, str | None] = {}
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.is_dir():
                stack.append(Path(e.path))
            elif e.name.lower().endswith(IMAGE_EXTS):
                rel = Path(e.path).relative_to(root).as_posix()
                found[e.name] = None if e.name in found and found[e.name] != rel else rel
    return found


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: split list not found (needed by --split official)")
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _converted(df: pd.DataFrame, labels: np.ndarray, rel: list[str], source: Path, notes: list[str]) -> Converted:
    table = pd.DataFrame({IMAGE_COL: rel})
    for j, name in enumerate(NIH_LABELS + [NO_FINDING]):
        table[name] = to_label_dtype(labels[:, j])
    table[GROUP_COL] = df[GROUP_COL].str.strip().to_numpy()
    for c in _META:
        if c in df.columns:
            table[c] = df[c].str.strip().to_numpy()
    return Converted(table=table, label_names=NIH_LABELS + [NO_FINDING], source=source, notes=notes)


def convert_nih(
    root: str | Path,
    csv: str | Path | None = None,
    split: str = "all",
    train_list: str | Path | None = None,
    test_list: str | Path | None = None,
    skip_missing: bool = False,
) -> NihResult:
    """Build our table(s) from an NIH ChestX-ray14 download. split='official' also returns the test rows."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: NIH root folder not found")
    if split not in ("all", "official"):
        raise UserError(f"--split must be 'all' or 'official', got {split!r}")
    if csv is None:
        csv = next((root / n for n in CSV_NAMES if (root / n).is_file()), root / CSV_NAMES[0])
    csv = Path(csv)
    df = read_source_csv(csv, ["Image Index", "Finding Labels", GROUP_COL], "NIH Data_Entry_2017")
    names = df["Image Index"].str.strip()
    if (names == "").any():
        raise UserError(f"{csv}: column 'Image Index' is empty at {lines(np.flatnonzero((names == '').to_numpy()))}")
    check_duplicates(names, csv, "Image Index")
    pid_blank = (df[GROUP_COL].str.strip() == "").to_numpy()
    if pid_blank.any():
        raise UserError(f"{csv}: column {GROUP_COL!r} is empty at {lines(np.flatnonzero(pid_blank))}")
    labels = parse_findings(df["Finding Labels"], csv, names)

    index = index_images(root)
    ambiguous = [n for n in names if n in index and index[n] is None]
    if ambiguous:
        raise UserError(f"{root}: image {ambiguous[0]!r} is found in more than one folder under the root "
                        f"({len(ambiguous)} such names); keep one copy")
    found = np.array([n in index for n in names])
    keep, note = drop_missing(found, names, root, skip_missing)
    if not keep.any():
        raise UserError(f"{root}: none of the {len(names)} images listed in {csv.name} is under the root")
    notes = [note] if note else []
    rel = np.array([index.get(n) or "" for n in names], dtype=object)

    if split == "all":
        return NihResult(train=_converted(df[keep], labels[keep], list(rel[keep]), csv, notes), test=None)

    train_names = set(_read_list(Path(train_list) if train_list else root / "train_val_list.txt"))
    test_names = set(_read_list(Path(test_list) if test_list else root / "test_list.txt"))
    both = train_names & test_names
    if both:
        raise UserError(f"the train_val and test lists both name {min(both)!r} ({len(both)} such names)")
    in_train = names.isin(train_names).to_numpy()
    in_test = names.isin(test_names).to_numpy()
    neither = int((keep & ~in_train & ~in_test).sum())
    if neither:
        notes.append(f"dropped {neither} rows named in neither split list")
    pid = df[GROUP_COL].str.strip()
    shared = set(pid[keep & in_train]) & set(pid[keep & in_test])
    if shared:
        notes.append(f"warning: {len(shared)} patients have images in both train_val and test")
    tr, te = keep & in_train, keep & in_test
    if not tr.any():
        raise UserError(f"no row of {csv} is in the train_val list")
    return NihResult(
        train=_converted(df[tr], labels[tr], list(rel[tr]), csv, notes + ["split: official train_val"]),
        test=_converted(df[te], labels[te], list(rel[te]), csv, ["split: official test"]),
    )
