"""Training CSV -> LabelTable: exotic names, auto-detection, policies, and the one-line errors users see."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from cxr_fast.data.table import CHEXPERT_LABELS, file_sha256, list_test_images, parse_label_list, read_table
from cxr_fast.errors import UserError, cli_entry


def write_csv(tmp_path, text: str, name: str = "train.csv"):
    """Write raw CSV text byte for byte, so the test controls every line number."""
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def user_error(**kw) -> str:
    """Call read_table, expect a UserError, return its message (always a single line)."""
    with pytest.raises(UserError) as e:
        read_table(**kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- names and the happy path ------------------------------------------------------------------------------------

EXOTIC = [
    "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
    "a.b c/ü.png",
    "00000001_000.png",
    "dir with spaces/x.y.z.PNG",
    " leading and trailing space .png ",
    "comma, inside.png",
    "日本語/胸部.jpeg",
    "NA",  # pandas' default would turn this into a missing value
]


def test_exotic_image_names_kept_exactly(tmp_path):
    p = tmp_path / "train.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Image_name", "A", "B"])
        for i, name in enumerate(EXOTIC):
            w.writerow([name, i % 2, (i // 2) % 2])
    t = read_table(p)
    assert t.names == EXOTIC
    assert t.label_names == ["A", "B"]
    assert t.labels.dtype == np.float32
    np.testing.assert_array_equal(t.labels, [[i % 2, (i // 2) % 2] for i in range(len(EXOTIC))])
    assert len(t) == len(EXOTIC)
    assert t.csv_sha256 == hashlib.sha256(p.read_bytes()).hexdigest() == file_sha256(p)
    assert t.groups is None


def test_chexpert_layout_with_path_column(tmp_path):
    p = write_csv(tmp_path, (
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\n"
        "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,\n"
        "CheXpert-v1.0/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,-1.0,-1.0\n"
        "CheXpert-v1.0/train/patient00002/study1/view2_lateral.jpg,Male,83,Lateral,,0.0,1.0,0.0\n"
    ))
    t = read_table(p, image_col="Path", uncertain="ignore", missing="ignore")
    assert t.names[0] == "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"
    assert t.label_names == ["No Finding", "Cardiomegaly", "Edema"]  # CSV order; Sex/Age/views not taken
    np.testing.assert_array_equal(t.labels, np.array(
        [[1, np.nan, np.nan], [np.nan, np.nan, np.nan], [0, 1, 0]], dtype=np.float32))


def test_default_image_column_missing_names_it_and_the_flag(tmp_path):
    p = write_csv(tmp_path, "Path,A\nx.png,1\n")
    msg = user_error(csv_path=p)
    assert "'Image_name'" in msg and "Path" in msg and "--image_col" in msg


# --- label auto-detection ----------------------------------------------------------------------------------------

def test_autodetect_takes_only_label_columns(tmp_path):
    rows = ["Image_name,Age,Sex,Count,Float,Int,PatientFlag,Empty"]
    ages = [0, 45, 90, 1, 33, 67]
    for i, age in enumerate(ages):
        rows.append(f"img{i}.png,{age},{'MF'[i % 2]},{i % 6},{['1.0', '0.0', '-1.0'][i % 3]},{[1, 0, -1][i % 3]},"
                    f"{i % 2},")
    t = read_table(write_csv(tmp_path, "\n".join(rows) + "\n"))
    # Age (0..90), Sex (text), Count (0..5) and an all-blank column are not labels. A column of only 0/1 is one by
    # the rule (nothing in the values tells it from a label); name the labels explicitly to leave it out.
    assert t.label_names == ["Float", "Int", "PatientFlag"]
    np.testing.assert_array_equal(t.labels[:, 0], [1, 0, 0, 1, 0, 0])  # -1 -> 0 under the default 'zeros'


def test_autodetect_an_age_column_that_happens_to_start_with_0_and_1(tmp_path):
    p = write_csv(tmp_path, "Image_name,Age,A\na,0,1\nb,1,0\nc,1,1\nd,2,0\n")
    assert read_table(p).label_names == ["A"]


def test_autodetect_skips_the_group_column(tmp_path):
    p = write_csv(tmp_path, "Image_name,Patient,A\na,1,1\nb,0,0\nc,1,1\n")
    assert read_table(p).label_names == ["Patient", "A"]
    t = read_table(p, group_col="Patient")
    assert t.label_names == ["A"]
    assert t.groups.tolist() == ["1", "0", "1"]


def test_autodetect_finding_nothing_is_an_error(tmp_path):
    msg = user_error(csv_path=write_csv(tmp_path, "Image_name,Age\na,50\nb,60\n"))
    assert "no label columns" in msg and "--labels" in msg


# --- explicit labels -------------------------------------------------------------------------------------------

def test_explicit_labels_keep_their_order(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B,C,Age\nx,1,0,-1,40\ny,0,1,1,50\n")
    for labels in ("C, A", ["C", "A"]):
        t = read_table(p, labels=labels, uncertain="ones")
        assert t.label_names == ["C", "A"]
        np.testing.assert_array_equal(t.labels, [[1, 1], [1, 0]])


def test_explicit_label_missing_from_csv_is_an_error(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B\nx,1,0\n")
    msg = user_error(csv_path=p, labels="A,Pneumonia")
    assert "'Pneumonia'" in msg and "--labels" in msg


def test_explicit_labels_misuse(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B\nx,1,0\n")
    assert "twice" in user_error(csv_path=p, labels="A,A")
    assert "image or group" in user_error(csv_path=p, labels="A,Image_name")


def test_explicit_label_with_ages_is_rejected_not_taken(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,Age\nx,1,40\ny,0,0\n")
    msg = user_error(csv_path=p, labels="A,Age")
    assert "'Age'" in msg and "line 2" in msg and "'40'" in msg


def test_parse_label_list():
    assert parse_label_list(None) is None
    assert parse_label_list("") is None
    assert parse_label_list(" A, B ,,C ") == ["A", "B", "C"]
    assert parse_label_list(["A", "", "B"]) == ["A", "B"]
    assert len(CHEXPERT_LABELS) == 14 == len(set(CHEXPERT_LABELS))


# --- uncertain / missing policies ------------------------------------------------------------------------------

POLICY_CSV = "Image_name,A\npos,1\nneg,0\nunc,-1\nblank,\nfloat_unc,-1.0\n"


@pytest.mark.parametrize("uncertain,missing,expected", [
    ("zeros", "zeros", [1, 0, 0, 0, 0]),
    ("ones", "zeros", [1, 0, 1, 0, 1]),
    ("ignore", "zeros", [1, 0, np.nan, 0, np.nan]),
    ("zeros", "ignore", [1, 0, 0, np.nan, 0]),
    ("ones", "ignore", [1, 0, 1, np.nan, 1]),
    ("ignore", "ignore", [1, 0, np.nan, np.nan, np.nan]),
])
def test_policies(tmp_path, uncertain, missing, expected):
    t = read_table(write_csv(tmp_path, POLICY_CSV), uncertain=uncertain, missing=missing)
    assert t.labels.dtype == np.float32 and t.labels.shape == (5, 1)
    np.testing.assert_array_equal(t.labels[:, 0], np.array(expected, dtype=np.float32))  # NaN == NaN here
    assert (t.uncertain, t.missing) == (uncertain, missing)


def test_default_policies_are_zeros(tmp_path):
    t = read_table(write_csv(tmp_path, POLICY_CSV))
    assert (t.uncertain, t.missing) == ("zeros", "zeros")
    assert not np.isnan(t.labels).any()


def test_unknown_policy_names(tmp_path):
    p = write_csv(tmp_path, POLICY_CSV)
    assert "--uncertain" in user_error(csv_path=p, uncertain="ignored")
    assert "--missing" in user_error(csv_path=p, missing="ones")


# --- bad input: one line naming the column and the CSV line numbers --------------------------------------------

def test_missing_file(tmp_path):
    msg = user_error(csv_path=tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_empty_file_and_header_only(tmp_path):
    assert "empty" in user_error(csv_path=write_csv(tmp_path, "", "empty.csv"))
    assert "no rows" in user_error(csv_path=write_csv(tmp_path, "Image_name,A\n", "header.csv"))


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("Image_name,A\nr\xe9sum\xe9.png,1\n".encode("latin-1"))
    assert "UTF-8" in user_error(csv_path=p)


def test_non_numeric_label_value(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B\nx,1,0\ny,1,yes\nz,0,1\nw,0,pos\n")
    msg = user_error(csv_path=p, labels="A,B")  # (auto-detect would just leave B out)
    assert "'B'" in msg and "non-numeric" in msg and "lines 3, 5" in msg and "'yes'" in msg


def test_value_outside_label_set(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B\nx,1,0\ny,0,2\nz,1,0.5\n")
    msg = user_error(csv_path=p, labels=["A", "B"])
    assert "'B'" in msg and "outside" in msg and "lines 3, 4" in msg


def test_many_offending_rows_are_summarised(tmp_path):
    p = write_csv(tmp_path, "Image_name,A\n" + "".join(f"i{i},{i}\n" for i in range(2, 12)))
    msg = user_error(csv_path=p, labels="A")
    assert "lines 2, 3, 4, 5, 6 (+5 more)" in msg  # i0 -> value 2 at line 2


def test_duplicate_image_names(tmp_path):
    p = write_csv(tmp_path, "Image_name,A\na.png,1\nb.png,0\na.png,1\nc.png,0\n")
    msg = user_error(csv_path=p)
    assert "'Image_name'" in msg and "duplicate" in msg and "'a.png'" in msg and "lines 2, 4" in msg


def test_names_differing_only_in_case_or_space_are_not_duplicates(tmp_path):
    p = write_csv(tmp_path, "Image_name,A\na.png,1\nA.png,0\na.png ,1\n")
    assert read_table(p).names == ["a.png", "A.png", "a.png "]


def test_blank_image_name(tmp_path):
    msg = user_error(csv_path=write_csv(tmp_path, "Image_name,A\na.png,1\n  ,0\n"))
    assert "'Image_name'" in msg and "empty" in msg and "line 3" in msg


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    # pandas skips the blank line and reads the quoted two-line name as one row: row index + 2 would say line 4
    p = write_csv(tmp_path, 'Image_name,A\n\na.png,1\n"two\nlines.png",0\n\n   \nb.png,7\n')
    msg = user_error(csv_path=p, labels="A")
    assert "'A'" in msg and "line 8" in msg and "line 4" not in msg


def test_duplicate_header_is_an_error_not_a_rename(tmp_path):
    p = write_csv(tmp_path, "Image_name,A,B,A\nx,1,0,0\n")
    msg = user_error(csv_path=p)
    assert "'A'" in msg and "more than once" in msg


def test_group_column(tmp_path):
    p = write_csv(tmp_path, "Image_name,Patient,A\na,p1,1\nb, p1 ,0\nc,p2,1\n")
    t = read_table(p, group_col="Patient")
    assert t.groups.tolist() == ["p1", "p1", "p2"]
    assert "'Study'" in user_error(csv_path=p, group_col="Study")
    p2 = write_csv(tmp_path, "Image_name,Patient,A\na,p1,1\nb,,0\n", "blank_group.csv")
    msg = user_error(csv_path=p2, group_col="Patient")
    assert "'Patient'" in msg and "line 3" in msg


# --- test images -------------------------------------------------------------------------------------------------

def test_list_test_images_sorted_and_filtered(tmp_path):
    for name in ["b.png", "a.JPG", "c.jpeg", "A.png", "notes.txt", "scan.dcm", "d.PNG", "e.png.bak"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix is not an image
    assert list_test_images(tmp_path) == ["A.png", "a.JPG", "b.png", "c.jpeg", "d.PNG"]
    assert list_test_images(tmp_path, exts=(".jpg",)) == ["a.JPG"]


def test_list_test_images_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no png/jpg/jpeg images"):
        list_test_images(tmp_path)
    with pytest.raises(UserError, match="not found"):
        list_test_images(tmp_path / "missing")


# --- cli_entry ---------------------------------------------------------------------------------------------------

def test_cli_entry_turns_user_error_into_exit_2(capsys):
    @cli_entry
    def main(argv=None):
        raise UserError("train.csv: column 'A' has values outside {0, 1, -1} (e.g. '2') at line 3")

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train.csv: column 'A' has values outside {0, 1, -1} (e.g. '2') at line 3\n"
    assert main.__name__ == "main"


def test_cli_entry_passes_return_codes_and_real_bugs():
    assert cli_entry(lambda: None)() == 0
    assert cli_entry(lambda: 3)() == 3

    @cli_entry
    def buggy():
        raise KeyError("a bug, not a user mistake")

    with pytest.raises(KeyError):  # a traceback is right for our own bugs
        buggy()
