"""Bad input across cxr-train / cxr-predict / cxr-couplings: one clear line, exit code 2, no traceback.
(CSV problems: test_table.py; image files: test_images.py; shard writing and verify: test_shards.py;
kill -9 and resume: test_resume.py.)"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest
import torch

from cxr_fast.cli import couplings as couplings_cli
from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import train as train_cli
from tests.helpers import FAST, assert_user_error, train_pil


def _predict(ckpts, test_dir, out):
    return ["--checkpoints", *map(str, ckpts), "--test_dir", str(test_dir), "--out_csv", str(out),
            "--num_workers", "0", "--no-progress", "--device", "cpu"]


def test_predict_refuses_mixed_label_sets(pil_run, tmp_path):
    data, out = pil_run
    ck = torch.load(out / "test_resnet_fold2.pth", weights_only=True)
    ck["labels"] = list(reversed(ck["labels"]))
    torch.save(ck, tmp_path / "other.pth")
    argv = _predict([out / "test_resnet_fold1.pth", tmp_path / "other.pth"], data / "test", tmp_path / "s.csv")
    assert_user_error(lambda: predict_cli.main(argv), "labels")
    assert not (tmp_path / "s.csv").exists()


def test_predict_refuses_checkpoint_of_another_model(pil_run, tmp_path):
    data, out = pil_run
    ck = torch.load(out / "test_resnet_fold1.pth", weights_only=True)
    ck["config"]["model"] = "test_efficientnet"
    torch.save(ck, tmp_path / "wrong_model.pth")
    argv = _predict([tmp_path / "wrong_model.pth"], data / "test", tmp_path / "s.csv")
    assert_user_error(lambda: predict_cli.main(argv), "do not fit")


def test_checkpoint_needing_pickle_is_refused(pil_run, tmp_path):
    data, _ = pil_run
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "evil.pth")
    argv = _predict([tmp_path / "evil.pth"], data / "test", tmp_path / "s.csv")
    assert_user_error(lambda: predict_cli.main(argv), "refused")
    assert_user_error(lambda: couplings_cli.main([str(tmp_path / "evil.pth")]), "refused")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"definitely not a checkpoint")
    assert_user_error(lambda: couplings_cli.main([str(tmp_path / "x.pth")]), "x.pth")


def test_predict_empty_test_dir(pil_run, tmp_path):
    _, out = pil_run
    (tmp_path / "empty").mkdir()
    argv = _predict([out / "test_resnet_fold1.pth"], tmp_path / "empty", tmp_path / "s.csv")
    assert_user_error(lambda: predict_cli.main(argv), "no png/jpg/jpeg images")


def test_predict_glob_matching_nothing(tmp_path):
    argv = _predict([tmp_path / "nothing_*.pth"], tmp_path, tmp_path / "s.csv")
    assert_user_error(lambda: predict_cli.main(argv), "not found")


def _train_shards(shards, out, *extra):
    return ["--shards", str(shards), "--pipeline", "pil", "--out_dir", str(out), "--epochs", "1", *FAST, *extra]


def test_train_shards_without_manifest(synth_shards, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(synth_shards, broken)
    (broken / "manifest.json").unlink()
    assert_user_error(lambda: train_cli.main(_train_shards(broken, tmp_path / "o")), "manifest.json")


def test_train_shards_other_version(synth_shards, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(synth_shards, broken)
    m = json.loads((broken / "manifest.json").read_text())
    m["version"] = 99
    (broken / "manifest.json").write_text(json.dumps(m))
    assert_user_error(lambda: train_cli.main(_train_shards(broken, tmp_path / "o")), "version 99")


def test_train_shards_labels_differ(synth_shards, tmp_path):
    argv = _train_shards(synth_shards, tmp_path / "o", "--labels", "Edema,Cardiomegaly")
    assert_user_error(lambda: train_cli.main(argv), "--labels")


def test_truncated_shard_caught_by_reader(synth_shards, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(synth_shards, broken)
    tar = min(broken.glob("fold2-*.tar"))
    tar.write_bytes(tar.read_bytes()[:-2048])
    msg = assert_user_error(lambda: train_cli.main(_train_shards(broken, tmp_path / "o")), tar.name)
    assert "truncated or altered" in msg


def test_missing_image_found_before_training(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "train" / "00007.png").unlink()
    argv = ["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--pipeline", "pil",
            "--out_dir", str(tmp_path / "o"), "--folds", "2", "--epochs", "1", *FAST]
    assert_user_error(lambda: train_cli.main(argv), "00007.png")
    assert not (tmp_path / "o" / "last.pth").exists()


def test_corrupt_image_in_a_worker_is_one_line(synth_data, tmp_path):
    """An undecodable file met by a DataLoader worker process still ends as one line naming it, exit 2."""
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "train" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    cmd = [sys.executable, "-m", "cxr_fast.train", "--train_csv", str(data / "train.csv"), "--train_dir",
           str(data / "train"), "--pipeline", "pil", "--out_dir", str(tmp_path / "o"), "--folds", "2",
           "--epochs", "1", "--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "8",
           "--num_workers", "2", "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert err[-1].startswith("error: ") and "00003.png" in err[-1] and "cannot decode" in err[-1]
    assert "Traceback" not in r.stderr


def test_shards_with_a_rejected_test_image_train_and_predict(synth_data, tmp_path):
    """--skip_bad leaves a hole in the test indices: the submission still names every written image correctly."""
    from cxr_fast.cli import shard as shard_cli

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    names = sorted(p.name for p in (data / "test").iterdir())
    (data / "test" / names[3]).write_bytes(b"not an image")
    shards = tmp_path / "shards"
    assert shard_cli.main(["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"),
                           "--test_dir", str(data / "test"), "--out", str(shards), "--folds", "2", "--skip_bad",
                           "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "o"
    assert train_cli.main(["--shards", str(shards), "--pipeline", "pil", "--out_dir", str(out), "--epochs", "1",
                           "--out_csv", str(out / "sub.csv"), *FAST]) == 0
    import pandas as pd

    sub = pd.read_csv(out / "sub.csv")
    assert sub["Image_name"].tolist() == names[:3] + names[4:]
    assert predict_cli.main(["--checkpoints", str(out / "test_resnet_fold*.pth"), "--shards", str(shards),
                             "--out_csv", str(tmp_path / "p.csv"), "--num_workers", "0", "--no-progress",
                             "--device", "cpu"]) == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    assert pred["Image_name"].tolist() == sub["Image_name"].tolist()
    assert abs(pred.iloc[:, 1:].to_numpy() - sub.iloc[:, 1:].to_numpy()).max() < 1e-5


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--ema_decay", "1"), ("--num_workers", "-1"),
                                         ("--patience", "-2")])
def test_bad_flag_values_exit_2(synth_data, tmp_path, flag, value):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train"),
                        "--out_dir", str(tmp_path), *FAST, flag, value])
    assert e.value.code == 2


def test_couplings_refuses_unknown_image_suffix(pil_run, tmp_path):
    _, out = pil_run
    argv = [str(out / "test_resnet_fold1.pth"), "--out", str(tmp_path / "a.txt")]
    assert_user_error(lambda: couplings_cli.main(argv), ".png")
    assert not (tmp_path / "a.txt").exists()


def test_bad_folds_to_run_stops_before_anything_is_removed(synth_data, tmp_path):
    (tmp_path / "test_resnet_fold1.pth").write_text("an earlier run's")
    (tmp_path / "oof.csv").write_text("an earlier run's")
    assert_user_error(lambda: train_pil(synth_data, tmp_path, "--folds_to_run", "7"),
                      "--folds_to_run '7': folds are numbered 1..2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof.csv", "test_resnet_fold1.pth"]
