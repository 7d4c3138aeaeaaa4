"""CheXpert `train.csv`/`valid.csv` -> our training CSV (`convert_frame` also serves `convert/mimic.py`).

`Image_name` is the CSV's `Path` relative to `root`. CheXpert's paths start with `CheXpert-v1.0/` or
`CheXpert-v1.0-small/`: that prefix is kept when `root` holds that folder, and stripped otherwise (i.e. when
`root` is the dataset folder itself, the default: the CSV's own folder). `Patient ID` comes from the path
(`patient00001`; MIMIC: `p10000032`).

Label cells: 1 / 0 / -1 (uncertain) / blank (not mentioned). Uncertainty policy, per label:
`keep` (default: -1 stays, so `cxr-train --uncertain` decides), `zeros`, `ones`, or `ignore` (-> blank, masked
when training with `--missing ignore`); `u-ones-competition` = ones for Atelectasis and Edema, zeros for the rest
(the CheXpert competition baseline, Irvin et al. 2019). `missing='zeros'` writes blanks as 0 (CheXpert's usual
reading of "not mentioned"); the default keeps them blank for the table layer's `--missing`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

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
from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.errors import UserError

LABEL_POLICIES = ("keep", "zeros", "ones", "ignore")
UNCERTAIN_CHOICES = LABEL_POLICIES + ("u-ones-competition",)
COMPETITION_ONES = ("Atelectasis", "Edema")
MISSING_CHOICES = ("keep", "zeros")
_PREFIX = re.compile(r"^CheXpert-v1\.0[^/]*$")
_PATIENT = re.compile(r"^(patient\d+|p\d{8})$")  # CheXpert patient00001 / MIMIC subject folder p10000032
_META = ("Sex", "Age", "Frontal/Lateral", "AP/PA")
_UNCERTAIN_VALUE = {"keep": -1.0, "zeros": 0.0, "ones": 1.0, "ignore": np.nan}


def resolve_policies(uncertain: str, uncertain_map: str | dict[str, str] | None,
                     labels: list[str] = CHEXPERT_LABELS) -> dict[str, str]:
    """Per-label policy: the global one (or the competition mix), overridden by `Label=policy,...` entries."""
    if uncertain not in UNCERTAIN_CHOICES:
        raise UserError(f"--uncertain must be one of {', '.join(UNCERTAIN_CHOICES)}, got {uncertain!r}")
    if uncertain == "u-ones-competition":
        policies = {c: "ones" if c in COMPETITION_ONES else "zeros" for c in labels}
    else:
        policies = {c: uncertain for c in labels}
    if isinstance(uncertain_map, str):
        pairs = {}
        for item in filter(None, (s.strip() for s in uncertain_map.split(","))):
            name, sep, pol = (s.strip() for s in item.partition("="))
            if not sep or not name or not pol:
                raise UserError(f"--uncertain_map entry {item!r} is not Label=policy")
            if name in pairs:
                raise UserError(f"--uncertain_map names {name!r} twice")
            pairs[name] = pol
        uncertain_map = pairs
    for name, pol in (uncertain_map or {}).items():
        if name not in policies:
            raise UserError(f"--uncertain_map: unknown label {name!r} (labels: {', '.join(labels)})")
        if pol not in LABEL_POLICIES:
            raise UserError(f"--uncertain_map: policy for {name!r} must be one of {', '.join(LABEL_POLICIES)}, "
                            f"got {pol!r}")
        policies[name] = pol
    return policies


def patient_ids(paths: pd.Series, source: Path) -> np.ndarray:
    """The `patient00001` / `p10000032` folder of each path; a path without one is an error."""
    out = []
    for i, p in enumerate(paths):
        pid = next((part for part in PurePosixPath(p).parts if _PATIENT.match(part)), None)
        if pid is None:
            raise UserError(f"{source}: no patient folder (patient00001 / p10000032) in Path {p!r} at {lines([i])}")
        out.append(pid)
    return np.array(out, dtype=object)


def image_names(paths: pd.Series, root: Path, source: Path) -> tuple[pd.Series, str | None]:
    """Paths relative to `root`; strips a leading CheXpert-v1.0*/ unless `root` contains that folder."""
    p = paths.str.strip().str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)
    bad = p.eq("") | p.str.startswith("/") | p.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    if bad.any():
        i = np.flatnonzero(bad.to_numpy())
        raise UserError(f"{source}: column 'Path' must hold relative paths without '..' "
                        f"(e.g. {paths.iloc[i[0]]!r}) at {lines(i)}")
    first = p.str.split("/", n=1).str[0]
    prefixed = first.str.match(_PREFIX.pattern)
    prefixes = set(first[prefixed])
    if not prefixes:
        return p, None
    if len(prefixes) > 1 or not prefixed.all():
        raise UserError(f"{source}: column 'Path' mixes prefixes ({', '.join(sorted(prefixes))} and others)")
    prefix = prefixes.pop()
    if (root / prefix).is_dir():
        return p, None
    return p.str.slice(len(prefix) + 1), prefix


def parse_labels(df: pd.DataFrame, labels: list[str], source: Path) -> np.ndarray:
    """(N, C) float: 1 / 0 / -1, NaN for blank. Anything else is an error naming the column and lines."""
    out = np.empty((len(df), len(labels)), dtype=np.float64)
    for j, c in enumerate(labels):
        col = df[c].str.strip()
        blank = col.eq("")
        vals = pd.to_numeric(col.where(~blank), errors="coerce")
        bad = (~blank & ~vals.isin([1.0, 0.0, -1.0])).to_numpy()
        if bad.any():
            i = np.flatnonzero(bad)
            raise UserError(f"{source}: column {c!r} must hold 1.0, 0.0, -1.0 or blank, got {col.iloc[i[0]]!r} "
                            f"at {lines(i)}")
        out[:, j] = vals.to_numpy(dtype=np.float64)
    return out


def convert_frame(
    df: pd.DataFrame,
    source: Path,
    root: Path,
    frontal_only: bool = False,
    uncertain: str = "keep",
    uncertain_map: str | dict[str, str] | None = None,
    missing: str = "keep",
    check_images: bool = True,
    skip_missing: bool = False,
    labels: list[str] = CHEXPERT_LABELS,
) -> Converted:
    """The CheXpert-layout table (`Path`, metadata, label columns as text) -> our table, with policies applied."""
    policies = resolve_policies(uncertain, uncertain_map, labels)
    if missing not in MISSING_CHOICES:
        raise UserError(f"--missing must be one of {', '.join(MISSING_CHOICES)}, got {missing!r}")
    names, stripped = image_names(df["Path"], root, source)
    check_duplicates(names, source, "Path")
    pids = patient_ids(names, source)
    values = parse_labels(df, labels, source)
    notes = [f"stripped the {stripped}/ prefix from Path (root is the dataset folder)"] if stripped else []

    keep = np.ones(len(df), dtype=bool)
    if frontal_only:
        if "Frontal/Lateral" not in df.columns:
            raise UserError(f"{source}: --frontal_only needs a 'Frontal/Lateral' column")
        keep = np.array(df["Frontal/Lateral"].str.strip().str.lower().eq("frontal"), dtype=bool)
        notes.append(f"--frontal_only dropped {int((~keep).sum())} lateral rows")
        if not keep.any():
            raise UserError(f"{source}: no frontal images (column 'Frontal/Lateral')")
    if check_images:
        if not root.is_dir():
            raise UserError(f"{root}: image root folder not found")
        found = np.array([k and (root / n).is_file() for k, n in zip(keep, names, strict=True)])
        found, note = drop_missing(found | ~keep, names, root, skip_missing)
        keep = keep & found
        notes += [note] if note else []
        if not keep.any():
            raise UserError(f"{root}: none of the images of {source.name} is under the root")

    values = values[keep]
    uncertain_in = {c: int((values[:, j] == -1).sum()) for j, c in enumerate(labels)}
    if missing == "zeros":
        values = np.nan_to_num(values, nan=0.0)
    for j, c in enumerate(labels):
        values[values[:, j] == -1, j] = _UNCERTAIN_VALUE[policies[c]]

    table = pd.DataFrame({IMAGE_COL: names[keep].to_numpy()})
    for j, c in enumerate(labels):
        table[c] = to_label_dtype(values[:, j])
    table[GROUP_COL] = pids[keep]
    for c in _META:
        if c in df.columns:
            table[c] = df[c].str.strip().to_numpy()[keep]
    if (values == -1).any():
        notes.append("-1 (uncertain) kept: cxr-train --uncertain zeros|ones|ignore decides")
    if "ignore" in policies.values() and any(uncertain_in[c] for c, p in policies.items() if p == "ignore"):
        notes.append("ignored uncertain cells are blank: train with --missing ignore to mask them")
    return Converted(table=table, label_names=list(labels), source=source, uncertain_in=uncertain_in,
                     policies=policies, notes=notes)


def convert_chexpert(csv: str | Path, root: str | Path | None = None, **options) -> Converted:
    """Read a CheXpert-layout CSV (`Path` + the 14 labels) and convert it; `root` defaults to the CSV's folder.

    Options are those of `convert_frame`.
    """
    csv = Path(csv)
    df = read_source_csv(csv, ["Path"] + list(options.get("labels", CHEXPERT_LABELS)), "CheXpert-layout")
    return convert_frame(df, csv, Path(root) if root is not None else csv.parent, **options)
