"""Odd but valid inputs are accepted, subtly wrong ones refused, through the CLIs (cxr-shard, cxr-train with both
pipelines, cxr-predict): exit code 2, one line naming the file / line / column, and nothing left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import shard as shard_cli
from cxr_fast.cli import train as train_cli
from cxr_fast.images.read import read_gray8
from tests.helpers import assert_user_error

LABELS = ["A", "B"]
TINY = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "8", "--epochs", "1",
        "--folds", "2", "--no-progress", "--device", "cpu", "--num_workers", "0", "--no-tensorboard"]


def _gray(i: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (size, size), dtype=np.uint8)


def _odd_image(i: int, path: Path) -> Path:
    """Image i in one of the modes a user may hand over; the file name says which."""
    a = _gray(i)
    kind = ["rgba", "palette", "cmyk", "la", "i16", "const16", "bit1", "gray"][i % 8]
    if kind == "rgba":
        Image.fromarray(np.stack([a, a, a, 255 - a], -1), "RGBA").save(path := path.with_suffix(".png"))
    elif kind == "palette":
        Image.fromarray(a).convert("P").save(path := path.with_suffix(".png"), transparency=bytes(range(256)))
    elif kind == "cmyk":
        Image.fromarray(np.stack([a] * 3, -1), "RGB").convert("CMYK").save(path := path.with_suffix(".jpg"))
    elif kind == "la":
        Image.fromarray(a).convert("LA").save(path := path.with_suffix(".png"))
    elif kind == "i16":
        Image.fromarray(a.astype(np.uint16) * 257).save(path := path.with_suffix(".png"))
    elif kind == "const16":
        Image.fromarray(np.full((40, 40), 3000, np.uint16)).save(path := path.with_suffix(".png"))
    elif kind == "bit1":
        Image.fromarray(a).convert("1").save(path := path.with_suffix(".png"))
    else:
        Image.fromarray(a).save(path := path.with_suffix(".png"))
    return path


def odd_data(root: Path, n: int = 24) -> Path:
    """n training images in odd modes; the CSV has a byte-order mark, CRLF line ends and float labels."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    lines = ["Image_name,Patient,A,B"]
    for i in range(n):
        p = _odd_image(i, root / "train" / f"i{i:02d}")
        lines.append(f"{p.name},p{i // 2},{float(i % 2)},{[1.0, 0.0, -1.0][i % 3]}")
    (root / "train.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    for j in range(4):
        _odd_image(j, root / "test" / f"t{j}")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return odd_data(tmp_path_factory.mktemp("odd"))


def train_argv(data: Path, out: Path, pipeline: str, csv: Path | None = None, test_dir: Path | None = None) -> list:
    return ["--train_csv", str(csv or data / "train.csv"), "--train_dir", str(data / "train"), "--test_dir",
            str(test_dir or data / "test"), "--pipeline", pipeline, "--out_dir", str(out / "run"), "--out_csv",
            str(out / "run" / "submission.csv"), "--shards_root", str(out / "shards"), *TINY]


@pytest.fixture(scope="module")
def pil_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("odd_run")
    assert train_cli.main(train_argv(data, out, "pil")) == 0
    return out / "run"


# --- accepted ----------------------------------------------------------------------------------------------------

def test_odd_image_modes_read_as_gray(tmp_path):
    for i in range(8):
        arr, _ = read_gray8(_odd_image(i, tmp_path / f"x{i}"))
        assert arr.dtype == np.uint8 and arr.shape == (40, 40)
    np.testing.assert_array_equal(read_gray8(_odd_image(0, tmp_path / "rgba"))[0], _gray(0))  # alpha ignored
    np.testing.assert_array_equal(read_gray8(_odd_image(1, tmp_path / "pal"))[0], _gray(1))
    i16 = read_gray8(_odd_image(4, tmp_path / "i16"))[0].astype(int)  # windowed over its own min..max
    assert np.abs(i16 - _gray(4)).max() <= 1
    assert (read_gray8(_odd_image(5, tmp_path / "const"))[0] == 0).all()  # no range: all zeros, no division by 0
    assert set(np.unique(read_gray8(_odd_image(6, tmp_path / "bit"))[0])) <= {0, 255}


def test_odd_inputs_train_with_pil(data, pil_run):
    sub = pd.read_csv(pil_run / "submission.csv")
    assert list(sub.columns) == ["Image_name", *LABELS] and len(sub) == 4
    assert np.isfinite(sub[LABELS].to_numpy()).all()
    truth = pd.read_csv(pil_run / "oof_labels.csv").set_index("Image_name").sort_index()
    i = np.arange(24)
    np.testing.assert_array_equal(truth["A"], i % 2)  # '1.0' / '0.0' read as numbers
    np.testing.assert_array_equal(truth["B"], np.array([1, 0, 0])[i % 3])  # '-1.0' -> 0 (--uncertain zeros)


def test_odd_inputs_train_with_dali(data, tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    argv = train_argv(data, tmp_path, "dali")
    assert train_cli.main([*argv, "--num_workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("2 label column(s) (auto-detected") == 1 and "Patient (" in out
    assert len(pd.read_csv(tmp_path / "run" / "submission.csv")) == 4


def test_shard_announces_labels_once_and_drops_a_to_csv_index(data, tmp_path, capsys):
    df = pd.read_csv(data / "train.csv", encoding="utf-8-sig")
    csv = tmp_path / "indexed.csv"
    df.to_csv(csv)  # index=True: a leading unnamed 0..N-1 column
    out = tmp_path / "shards"
    assert shard_cli.main(["--train_csv", str(csv), "--train_dir", str(data / "train"), "--out", str(out),
                           "--folds", "2", "--workers", "1", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert said.count("label column(s) (auto-detected") == 1
    assert "A, B" in said and "Patient (" in said and "column 1 (no name)" in said and "dropped" in said
    samples = pd.read_csv(out / "samples.csv")
    tr = samples[samples["split"] != "test"].set_index("name").loc[df["Image_name"]]
    np.testing.assert_array_equal(tr["A"].to_numpy(), df["A"].to_numpy())


# --- refused: CSVs -------------------------------------------------------------------------------------------------

def _csv_case(data: Path, tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A broken copy of the training CSV, and what the one-line error must say."""
    text = (data / "train.csv").read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
    lines = text.splitlines()
    if case == "typo_in_label":  # 'yes' in B on line 5: B is 23/24 0/1/-1, so a label with a bad cell
        f = lines[4].split(",")
        lines[4] = ",".join([*f[:3], "yes"])
        need = ["'B'", "'yes'", "line 5", "--labels", '"A"']
    elif case == "empty_header_name":
        lines = [ln.replace(",Patient,", ",,", 1) if k == 0 else ln for k, ln in enumerate(lines)]
        need = ["column 2", "no name"]
    elif case == "extra_field":
        lines[6] += ",1"
        need = ["line 7", "5 fields", "header has 4"]
    elif case == "not_utf8":
        p = tmp_path / "bad.csv"
        p.write_bytes("\n".join(lines[:3] + ["r\xe9sum\xe9.png,p9,1,0"] + lines[3:]).encode("latin-1"))
        return p, ["UTF-8", "line 4", str(p)]
    elif case == "directory_image":
        (data / "train" / "adir.png").mkdir(exist_ok=True)
        lines.append("adir.png,p99,1,0")
        need = ["adir.png"]
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    return p, [str(p), *need] if case != "directory_image" else need


CSV_CASES = ["typo_in_label", "empty_header_name", "extra_field", "not_utf8", "directory_image"]


def _nothing_left(root: Path) -> None:
    """No manifest, checkpoint, CSV or shard. The shard writer's hidden resumable spool (`.NAME-HASH.cxr-shard-tmp`,
    named in its error message, reused by a rerun) is not an output."""
    left = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".pth", ".csv", ".tar", ".idx")
            and not any(part.endswith(".cxr-shard-tmp") for part in p.relative_to(root).parts)]
    assert not left, left


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_refused_by_cxr_shard(data, tmp_path, capsys, case):
    csv, need = _csv_case(data, tmp_path, case)
    out = tmp_path / "shards"
    msg = assert_user_error(lambda: shard_cli.main(
        ["--train_csv", str(csv), "--train_dir", str(data / "train"), "--out", str(out), "--folds", "2",
         "--workers", "1", "--no-progress"]))
    assert all(s in msg for s in need), msg
    assert not out.exists() or _nothing_left(out) is None


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_refused_by_cxr_train(data, tmp_path, capsys, case, pipeline):
    csv, need = _csv_case(data, tmp_path, case)
    out = tmp_path / "out"
    msg = assert_user_error(lambda: train_cli.main(train_argv(data, out, pipeline, csv=csv)))
    assert all(s in msg for s in need), msg
    if out.exists():
        _nothing_left(out)


def test_bad_label_cell_message_lists_lines_and_values(tmp_path):
    from cxr_fast.data.table import read_table
    from cxr_fast.errors import UserError

    rows = ["Image_name,Age,A,B"] + [f"i{i},{40 + i},{i % 2},{i % 2}" for i in range(20)]
    rows[3], rows[9] = "i2,42,l,0", "i8,48,7,0"  # 18/20 = 90% of A is 0/1: a label with two bad cells
    p = tmp_path / "t.csv"
    p.write_text("\r\n".join(rows) + "\r\n")
    with pytest.raises(UserError) as e:
        read_table(p, log=None)
    msg = str(e.value)
    assert "'A'" in msg and "'l' on line 4" in msg and "'7' on line 10" in msg and '--labels "B"' in msg
    rows[5] = "i4,44,x,0"
    p.write_text("\n".join(rows[:11]) + "\n")  # 7 of 10 cells of A are 0/1 (70%): not a label, left out, said so
    said = []
    t = read_table(p, log=said.append)
    assert t.label_names == ["B"] and "A (70% of its cells are 0/1/-1" in said[0] and "Age (" in said[0]


# --- refused: test images ------------------------------------------------------------------------------------------

@pytest.fixture()
def corrupt_test_dir(data, tmp_path) -> Path:
    d = tmp_path / "test"
    d.mkdir()
    for p in sorted((data / "test").iterdir()):
        (d / p.name).write_bytes(p.read_bytes())
    bad = sorted(d.iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    return d


def test_predict_refuses_a_corrupt_test_image_or_skips_it(pil_run, corrupt_test_dir, tmp_path, capsys, pipeline):
    bad = sorted(corrupt_test_dir.iterdir())[1].name
    out = tmp_path / "pred.csv"
    argv = ["--checkpoints", str(pil_run / "test_resnet_fold*.pth"), "--test_dir", str(corrupt_test_dir),
            "--out_csv", str(out), "--pipeline", pipeline, "--num_workers", "0" if pipeline == "pil" else "1",
            "--no-progress", "--device", "cpu"]
    spools = set(Path(tempfile.gettempdir()).glob(".cxr-predict-*"))
    msg = assert_user_error(lambda: predict_cli.main(argv))
    assert bad in msg and not out.exists()
    assert set(Path(tempfile.gettempdir()).glob(".cxr-predict-*")) == spools  # no work folder left in /tmp
    assert predict_cli.main([*argv, "--skip_bad"]) == 0
    said = capsys.readouterr().out
    assert f"left out 1 unreadable test image(s): {bad}" in said
    assert bad not in pd.read_csv(out)["Image_name"].tolist() and len(pd.read_csv(out)) == 3


def test_train_refuses_a_corrupt_test_image(data, corrupt_test_dir, tmp_path, capsys, pipeline):
    bad = sorted(corrupt_test_dir.iterdir())[1].name
    out = tmp_path / "out"
    argv = [*train_argv(data, out, pipeline, test_dir=corrupt_test_dir), "--folds_to_run", "1"]
    msg = assert_user_error(lambda: train_cli.main(argv))
    assert bad in msg
    assert not (out / "run" / "submission.csv").exists()
    assert not list((out / "shards").rglob("manifest.json")) if (out / "shards").exists() else True
    assert not list((out / "run").glob("*.pth"))  # refused before training, not after every fold
