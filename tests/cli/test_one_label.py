"""A dataset with a single label column, end to end: folds, shards, training (PIL and DALI), AUC, submission,
cxr-predict and cxr-couplings (a 1x1 A has nothing to couple)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.cli import couplings as couplings_cli
from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import shard as shard_cli
from cxr_fast.cli import train as train_cli
from cxr_fast.data.folds import FALLBACK, SINGLE, make_folds

TINY = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "8", "--epochs", "1",
        "--folds", "2", "--no-progress", "--device", "cpu", "--no-tensorboard"]


def one_label_data(root: Path, n: int = 24, n_test: int = 4) -> Path:
    """n training images, 2 per patient, one label (Pneumothorax, every third patient positive) + a test folder."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "train" / f"i{i:02d}.png")
        rows.append([f"i{i:02d}.png", f"p{i // 2}", int((i // 2) % 3 == 0)])
    pd.DataFrame(rows, columns=["Image_name", "Patient", "Pneumothorax"]).to_csv(root / "train.csv", index=False)
    for j in range(n_test):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "test" / f"t{j}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return one_label_data(tmp_path_factory.mktemp("one_label"))


def test_single_label_folds_are_stratified_with_groups_whole():
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 1)) < 0.3).astype(np.float32)
    groups = np.repeat(np.arange(30), 2)
    labels = labels[::2].repeat(2, axis=0)  # one label per group
    fold, method = make_folds(labels, 3, 42, groups)
    assert method == SINGLE and set(fold) == {1, 2, 3}
    assert all(len(set(fold[groups == g])) == 1 for g in range(30))
    pos = [int(labels[fold == k, 0].sum()) for k in (1, 2, 3)]
    assert max(pos) - min(pos) <= 2
    again, _ = make_folds(labels, 3, 42, groups)
    np.testing.assert_array_equal(fold, again)
    assert make_folds(np.zeros((10, 1), np.float32), 2, 0)[1] == SINGLE  # no positive at all: still a split
    one = np.zeros((10, 1), np.float32)
    one[0] = 1
    assert make_folds(one, 2, 0)[1] == FALLBACK  # fewer positives than folds: the pattern fallback, as for many


def test_train_predict_couplings(data, tmp_path, capsys, pipeline):
    out = tmp_path / "run"
    argv = ["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--test_dir",
            str(data / "test"), "--group_col", "Patient", "--pipeline", pipeline, "--out_dir", str(out),
            "--out_csv", str(out / "submission.csv"), "--shards_root", str(tmp_path / "shards"), *TINY,
            "--num_workers", "1" if pipeline == "dali" else "0"]
    assert train_cli.main(argv) == 0
    said = capsys.readouterr().out
    assert said.count("1 label column(s) (auto-detected") == 1 and "Patient (group column)" in said
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["labels"] == ["Pneumothorax"] and np.isfinite(summary["oof_macro_auc"])
    assert all(np.isfinite(f["val_auc"]) for f in summary["folds"])
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["Image_name", "Pneumothorax"] and len(sub) == 4
    folds = pd.read_csv(out / "folds.csv").merge(pd.read_csv(data / "train.csv"), on="Image_name")
    assert folds.groupby("Patient")["fold"].nunique().max() == 1

    pred = tmp_path / "pred.csv"
    assert predict_cli.main(["--checkpoints", str(out / "test_resnet_fold*.pth"), "--test_dir", str(data / "test"),
                             "--out_csv", str(pred), "--num_workers", "0", "--no-progress", "--device", "cpu"]) == 0
    np.testing.assert_allclose(pd.read_csv(pred)["Pneumothorax"], sub["Pneumothorax"], atol=0.02)

    capsys.readouterr()
    png = tmp_path / "A.png"
    assert couplings_cli.main([str(out / "test_resnet_fold1.pth"), "--out", str(png)]) == 0
    assert "nothing to couple" in capsys.readouterr().out
    assert not png.exists() and not png.with_suffix(".json").exists()


def test_shard_cli(data, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard_cli.main(["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--out",
                           str(out), "--folds", "2", "--group_col", "Patient", "--workers", "1",
                           "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["Pneumothorax"] and manifest["split_method"] == SINGLE
    assert capsys.readouterr().out.count("label column(s)") == 1
