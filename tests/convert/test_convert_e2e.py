"""Real-format fixtures end to end: converter -> cxr-shard -> cxr-train (one epoch, tiny model), patients kept whole."""

from __future__ import annotations

import pandas as pd

from cxr_fast.cli import convert as convert_cli
from cxr_fast.cli import shard as shard_cli
from cxr_fast.cli import train as train_cli
from tests.convert.datasets import write_chexpert, write_nih

TINY = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "4", "--epochs", "1",
        "--num_workers", "0", "--no-progress", "--device", "cpu", "--folds", "2", "--no-tensorboard"]


def _patients_whole(folds_csv, table_csv, image_col="Image_name"):
    f = pd.read_csv(folds_csv).merge(pd.read_csv(table_csv)[[image_col, "Patient ID"]], on=image_col)
    assert (f.groupby("Patient ID")["fold"].nunique() == 1).all()
    return f


def test_nih_convert_shard_train_dali(tmp_path):
    root = write_nih(tmp_path / "nih")
    csv = tmp_path / "nih.csv"
    assert convert_cli.main(["nih", "--root", str(root), "--out", str(csv)]) == 0
    shards = tmp_path / "shards"
    assert shard_cli.main(["--train_csv", str(csv), "--train_dir", str(root), "--out", str(shards), "--folds", "2",
                           "--group_col", "Patient ID", "--resize", "64", "--workers", "1", "--no-progress"]) == 0
    _patients_whole(shards / "folds.csv", csv)
    out = tmp_path / "out"
    assert train_cli.main(["--shards", str(shards), "--pipeline", "dali", "--out_dir", str(out), *TINY]) == 0
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == len(pd.read_csv(csv)) and "Hernia" in oof.columns and "No Finding" in oof.columns


def test_chexpert_convert_train_pil_with_unknown_labels(tmp_path):
    train_csv = write_chexpert(tmp_path)
    csv = tmp_path / "chx.csv"
    assert convert_cli.main(["chexpert", "--csv", str(train_csv), "--out", str(csv), "--frontal_only",
                             "--uncertain", "u-ones-competition"]) == 0
    out = tmp_path / "out"
    assert train_cli.main(["--train_csv", str(csv), "--train_dir", str(train_csv.parent), "--pipeline", "pil",
                           "--group_col", "Patient ID", "--missing", "ignore", "--out_dir", str(out), *TINY,
                           "--batch_size", "2"]) == 0  # later flags win
    _patients_whole(out / "folds.csv", csv)
    assert len(pd.read_csv(out / "oof.csv")) == len(pd.read_csv(csv))
