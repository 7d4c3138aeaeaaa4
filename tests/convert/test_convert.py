"""Dataset converters: NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG -> our CSV, read back with `read_table`."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_fast.cli.convert import main
from cxr_fast.convert.chexpert import convert_chexpert, resolve_policies
from cxr_fast.convert.nih import NIH_LABELS, convert_nih
from cxr_fast.data.folds import make_folds
from cxr_fast.data.table import CHEXPERT_LABELS, read_table
from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8
from tests.convert.datasets import CHX_ROWS, NIH_ROWS, NIH_TEST_PATIENTS, tiny_image, write_chexpert, write_nih
from tests.helpers import assert_user_error

NIH_ALL = NIH_LABELS + ["No Finding"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- NIH ChestX-ray14

def test_nih_all_rows_roundtrip(tmp_path, capsys):
    root = write_nih(tmp_path / "nih")
    out = tmp_path / "nih.csv"
    rc, stdout, _ = run_cli(["nih", "--root", str(root), "--out", str(out)], capsys)
    assert rc == 0
    t = read_table(out, labels=NIH_ALL, group_col="Patient ID")
    assert len(t) == len(NIH_ROWS) and t.label_names == NIH_ALL
    by_name = {Path(n).name: i for i, n in enumerate(t.names)}
    for name, findings, pid in NIH_ROWS:
        row = t.labels[by_name[name]]
        on = {NIH_ALL[j] for j in np.flatnonzero(row == 1)}
        assert on == set(findings.split("|")), name
        assert not np.isnan(row).any()
        assert t.groups[by_name[name]] == str(pid)
    assert t.names[by_name["00000001_000.png"]] == "images_001/images/00000001_000.png"
    assert t.names[by_name["00000007_001.png"]] == "images_002/images/00000007_001.png"
    # The images are where Image_name says, relative to the root
    img, info = read_gray8(root / t.names[by_name["00000001_000.png"]])
    assert (info.width, info.height) == (512, 512) and img.std() > 20
    # Auto-detection finds exactly the 15 label columns (Follow-up # is not written; metadata is not 0/1)
    auto = read_table(out, group_col="Patient ID")
    assert auto.label_names == NIH_ALL
    assert "Follow-up #" not in pd.read_csv(out).columns
    # Summary
    assert "images: 14   patients: 10" in stdout
    assert "Cardiomegaly" in stdout and "No Finding" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_nih_patient_groups_stay_in_one_fold(tmp_path, capsys):
    root = write_nih(tmp_path / "nih")
    out = tmp_path / "nih.csv"
    assert run_cli(["nih", "--root", str(root), "--out", str(out)], capsys)[0] == 0
    t = read_table(out, labels=NIH_ALL, group_col="Patient ID")
    folds, _ = make_folds(t.labels, 3, 0, groups=t.groups)
    per_patient = pd.Series(folds).groupby(t.groups).nunique()
    assert (per_patient == 1).all()
    assert set(folds) == {1, 2, 3}


def test_nih_official_split(tmp_path, capsys):
    root = write_nih(tmp_path / "nih")
    out = tmp_path / "train.csv"
    rc, stdout, _ = run_cli(["nih", "--root", str(root), "--out", str(out), "--split", "official"], capsys)
    assert rc == 0
    tr = read_table(out, labels=NIH_ALL, group_col="Patient ID")
    te = read_table(tmp_path / "train_test.csv", labels=NIH_ALL, group_col="Patient ID")
    assert {int(g) for g in te.groups} == NIH_TEST_PATIENTS
    assert not set(tr.groups) & set(te.groups)
    assert len(tr) + len(te) == len(NIH_ROWS)
    assert "official test" in stdout and "official train_val" in stdout
    # explicit --test_out
    rc, _, _ = run_cli(["nih", "--root", str(root), "--out", str(out), "--split", "official",
                        "--test_out", str(tmp_path / "t.csv")], capsys)
    assert rc == 0 and (tmp_path / "t.csv").is_file()


def test_nih_split_list_missing(tmp_path):
    root = write_nih(tmp_path / "nih")
    (root / "test_list.txt").unlink()
    assert_user_error(lambda: main(["nih", "--root", str(root), "--out", str(tmp_path / "o.csv"), "--split",
                                    "official"]), "test_list.txt")


def test_nih_unknown_finding_names_row(tmp_path):
    rows = list(NIH_ROWS)
    rows[2] = ("00000001_002.png", "Cardiomegaly|Pneumonitis", 1)
    root = write_nih(tmp_path / "nih", rows)
    assert_user_error(lambda: main(["nih", "--root", str(root), "--out", str(tmp_path / "o.csv")]), "'Pneumonitis'",
                      "line 4 (00000001_002.png)")
    assert not (tmp_path / "o.csv").exists()


def test_nih_missing_images(tmp_path, capsys):
    root = write_nih(tmp_path / "nih")
    for name in ("00000004_000.png", "00000005_000.png"):
        next(root.rglob(name)).unlink()
    out = tmp_path / "o.csv"
    assert_user_error(lambda: main(["nih", "--root", str(root), "--out", str(out)]), "2 of 14", "00000004_000.png",
                      "--skip_missing")
    rc, stdout, _ = run_cli(["nih", "--root", str(root), "--out", str(out), "--skip_missing"], capsys)
    assert rc == 0 and "dropped 2 rows" in stdout
    assert len(read_table(out, labels=NIH_ALL)) == 12


def test_tools_script_runs(tmp_path):
    root = write_nih(tmp_path / "nih", NIH_ROWS[:3])
    script = Path(__file__).parents[2] / "tools" / "convert_nih.py"
    r = subprocess.run([sys.executable, str(script), "--root", str(root), "--out", str(tmp_path / "o.csv")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "images: 3   patients: 1" in r.stdout
    assert len(read_table(tmp_path / "o.csv", labels=NIH_ALL)) == 3


def test_nih_library_errors(tmp_path):
    with pytest.raises(UserError, match="root folder not found"):
        convert_nih(tmp_path / "nope")
    root = write_nih(tmp_path / "nih", NIH_ROWS[:2] + [("00000009_000.png", "No Finding|Mass", 9)])
    with pytest.raises(UserError, match="combines 'No Finding'"):
        convert_nih(root)
    (root / "Data_Entry_2017.csv").write_text("Image Index,Labels\nx.png,Mass\n")
    with pytest.raises(UserError, match="missing column.*'Finding Labels'"):
        convert_nih(root)


# ---------------------------------------------------------------- CheXpert

def chx_table(tmp_path, capsys, *flags, labels=CHEXPERT_LABELS, **read_kw):
    csv = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    if not csv.exists():
        write_chexpert(tmp_path)
    out = tmp_path / "out.csv"
    rc, stdout, err = run_cli(["chexpert", "--csv", str(csv), "--out", str(out), *flags], capsys)
    assert rc == 0, err
    t = read_table(out, labels=labels, group_col="Patient ID", **read_kw)
    cell = {(Path(n).parts[1], Path(n).name, c): t.labels[i, j]
            for i, n in enumerate(t.names) for j, c in enumerate(t.label_names)}
    return t, cell, stdout


def v(cell, patient, label, view="view1_frontal.jpg"):
    return cell[(patient, view, label)]


def test_chexpert_paths_patients_and_keep_default(tmp_path, capsys):
    t, cell, stdout = chx_table(tmp_path, capsys, uncertain="ignore", missing="ignore")
    assert t.names[0] == "train/patient00001/study1/view1_frontal.jpg"  # prefix stripped: root = dataset folder
    assert list(t.groups) == ["patient00001", "patient00002", "patient00002", "patient00003", "patient00004"]
    # keep: -1 stays -1 in the file (read_table's --uncertain decides; here 'ignore' -> NaN), blank stays blank
    raw = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert raw.loc[1, "Atelectasis"] == "-1" and raw.loc[0, "Atelectasis"] == "" and raw.loc[0, "No Finding"] == "1"
    assert np.isnan(v(cell, "patient00002", "Atelectasis")) and v(cell, "patient00002", "Lung Opacity") == 1
    assert v(cell, "patient00002", "Pneumonia") == 0 and np.isnan(v(cell, "patient00001", "Edema"))
    assert list(raw.columns[:1]) == ["Image_name"] and {"Patient ID", "Sex", "Age", "AP/PA"} <= set(raw.columns)
    assert "images: 5   patients: 4" in stdout and "stripped the CheXpert-v1.0-small/ prefix" in stdout
    assert "cxr-train --uncertain" in stdout
    # -1 counts in the summary (Atelectasis: 2 uncertain in, 2 kept)
    atel = next(line for line in stdout.splitlines() if line.startswith("Atelectasis"))
    assert atel.split()[1:] == ["1", "20.00", "0", "2", "2", "2", "keep"]
    # Patient grouping works with make_folds on the converted table
    folds, _ = make_folds(t.labels, 2, 0, groups=t.groups)
    assert folds[1] == folds[2]


def test_chexpert_root_holding_the_folder_keeps_prefix(tmp_path, capsys):
    csv = write_chexpert(tmp_path)
    out = tmp_path / "o.csv"
    assert run_cli(["chexpert", "--csv", str(csv), "--root", str(tmp_path), "--out", str(out)], capsys)[0] == 0
    names = read_table(out, labels=CHEXPERT_LABELS).names
    assert names[0] == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert all((tmp_path / n).is_file() for n in names)


def test_chexpert_frontal_only(tmp_path, capsys):
    t, _, stdout = chx_table(tmp_path, capsys, "--frontal_only")
    assert len(t) == 4 and not any("lateral" in n for n in t.names)
    assert "dropped 1 lateral rows" in stdout


@pytest.mark.parametrize("policy, atel, edema, cardio", [
    ("zeros", 0, 0, 0), ("ones", 1, 1, 1), ("u-ones-competition", 1, 1, 0),
])
def test_chexpert_uncertainty_policies(tmp_path, capsys, policy, atel, edema, cardio):
    _, cell, stdout = chx_table(tmp_path, capsys, "--uncertain", policy, missing="ignore")
    assert v(cell, "patient00002", "Atelectasis") == atel
    assert v(cell, "patient00002", "Edema") == edema
    assert v(cell, "patient00002", "Cardiomegaly") == cardio
    assert v(cell, "patient00003", "Consolidation") == (0 if policy != "ones" else 1)
    assert np.isnan(v(cell, "patient00001", "Edema"))  # blank stays blank
    raw = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert not (raw[CHEXPERT_LABELS] == "-1").any().any()
    assert "cxr-train --uncertain" not in stdout


def test_chexpert_ignore_policy_and_missing_zeros(tmp_path, capsys):
    _, cell, stdout = chx_table(tmp_path, capsys, "--uncertain", "ignore", "--missing", "zeros", missing="ignore")
    assert np.isnan(v(cell, "patient00002", "Atelectasis"))  # uncertain -> blank -> masked
    assert v(cell, "patient00001", "Edema") == 0             # not mentioned -> 0
    assert v(cell, "patient00002", "Lung Opacity") == 1
    assert "--missing ignore" in stdout


def test_chexpert_per_label_mix(tmp_path, capsys):
    _, cell, _ = chx_table(tmp_path, capsys, "--uncertain", "zeros",
                                "--uncertain_map", "Atelectasis=ones, Edema=ignore,Cardiomegaly=keep",
                                missing="ignore", uncertain="ones")
    assert v(cell, "patient00002", "Atelectasis") == 1
    assert np.isnan(v(cell, "patient00002", "Edema"))
    assert v(cell, "patient00002", "Cardiomegaly") == 1      # kept as -1; read_table(uncertain='ones') -> 1
    assert v(cell, "patient00003", "Consolidation") == 0     # global zeros
    raw = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert set(raw["Cardiomegaly"]) == {"-1", ""}
    assert resolve_policies("u-ones-competition", None)["Pleural Effusion"] == "zeros"


@pytest.mark.parametrize("flags, message", [
    (["--uncertain_map", "Atelectasis=ones,Pneumonitis=zeros"], "unknown label 'Pneumonitis'"),
    (["--uncertain_map", "Atelectasis=maybe"], "policy for 'Atelectasis'"),
    (["--uncertain_map", "Atelectasis"], "not Label=policy"),
])
def test_chexpert_bad_flags(tmp_path, flags, message):
    csv = write_chexpert(tmp_path)
    assert_user_error(lambda: main(["chexpert", "--csv", str(csv), "--out", str(tmp_path / "o.csv"), *flags]),
                      message)


def test_chexpert_bad_inputs(tmp_path, capsys):
    rows = list(CHX_ROWS)
    rows[3] = (rows[3][0], True, {"Edema": "2.0"})
    csv = write_chexpert(tmp_path, rows)
    argv = ["chexpert", "--csv", str(csv), "--out", str(tmp_path / "o.csv")]
    assert_user_error(lambda: main(argv), "'Edema'", "'2.0'", "line 5")
    # missing image, then --skip_missing
    write_chexpert(tmp_path)
    (csv.parent / CHX_ROWS[0][0]).unlink()
    assert_user_error(lambda: main(argv), "patient00001", "not found")
    rc, stdout, _ = run_cli(["chexpert", "--csv", str(csv), "--out", str(tmp_path / "o.csv"), "--skip_missing"],
                            capsys)
    assert rc == 0 and "dropped 1 rows" in stdout
    # a CSV of another layout
    other = tmp_path / "other.csv"
    other.write_text("Image,Edema\na.png,1\n")
    assert_user_error(lambda: main(["chexpert", "--csv", str(other), "--out", str(tmp_path / "o.csv")]),
                      "missing column", "'Path'")


def test_chexpert_path_without_patient(tmp_path):
    csv = write_chexpert(tmp_path, [("train/someone/study1/view1_frontal.jpg", True, {"Edema": "1.0"})])
    with pytest.raises(UserError, match="no patient folder.*line 2"):
        convert_chexpert(csv)


# ---------------------------------------------------------------- MIMIC-CXR-JPG

def test_mimic_official_files(tmp_path, capsys):
    root = tmp_path / "mimic"
    root.mkdir()
    labels = pd.DataFrame({"subject_id": ["10000032", "10000032", "10000764"], "study_id": ["50414267", "53189527",
                           "57375967"]})
    for c in CHEXPERT_LABELS:
        labels[c] = ""
    labels.loc[0, "Edema"], labels.loc[1, "Atelectasis"], labels.loc[2, "No Finding"] = "1.0", "-1.0", "1.0"
    meta = pd.DataFrame({
        "dicom_id": ["d1", "d2", "d3", "d4", "d5"],
        "subject_id": ["10000032", "10000032", "10000032", "10000764", "10000999"],
        "study_id": ["50414267", "50414267", "53189527", "57375967", "59999999"],
        "ViewPosition": ["PA", "LATERAL", "AP", "PA", "PA"],
    })
    split = pd.DataFrame({"dicom_id": ["d1", "d2", "d3", "d4", "d5"],
                          "split": ["train", "train", "train", "test", "train"]})
    for name, df in (("chexpert", labels), ("metadata", meta), ("split", split)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt") as f:
            df.to_csv(f, index=False)
    for _, r in meta.iterrows():
        tiny_image(root / f"files/p{r.subject_id[:2]}/p{r.subject_id}/s{r.study_id}/{r.dicom_id}.jpg", 0)
    out = tmp_path / "m.csv"
    rc, stdout, err = run_cli(["mimic", "--root", str(root), "--out", str(out), "--mimic_split", "train",
                               "--frontal_only", "--uncertain", "ones"], capsys)
    assert rc == 0, err
    t = read_table(out, labels=CHEXPERT_LABELS, group_col="Patient ID", missing="ignore")
    assert t.names == ["files/p10/p10000032/s50414267/d1.jpg", "files/p10/p10000032/s53189527/d3.jpg"]
    assert list(t.groups) == ["p10000032", "p10000032"]
    assert t.labels[0, CHEXPERT_LABELS.index("Edema")] == 1 and t.labels[1, CHEXPERT_LABELS.index("Atelectasis")] == 1
    assert "dropped 1 images whose study has no CheXpert labels" in stdout and "lateral" in stdout
