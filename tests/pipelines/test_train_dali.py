"""cxr-train / cxr-predict with --pipeline dali (DALI in CPU mode here), DDP with DALI, and kill -9 + resume."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import train as train_cli
from cxr_fast.data.table import CHEXPERT_LABELS
from tests.helpers import (
    DDP_ENTRY,
    FAST,
    assert_same_run,
    assert_user_error,
    check_ddp_outputs,
    kill_when,
    resume_cmd,
    run_outputs,
    torchrun_train,
)

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def dali_run(synth_data, tmp_path_factory):
    """Without --shards, cxr-train builds shards under --shards_root and trains on them with DALI."""
    out = tmp_path_factory.mktemp("dali_run")
    argv = ["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train"),
            "--test_dir", str(synth_data / "test"), "--pipeline", "dali", "--shards_root", str(out / "shards"),
            "--folds", "2", "--epochs", "1", "--out_dir", str(out), "--out_csv", str(out / "submission.csv"),
            *FAST, "--num_workers", "2"]  # later flags win
    assert train_cli.main(argv) == 0
    return synth_data, out, argv


def test_dali_training_outputs(dali_run):
    data, out, _ = dali_run
    for k in (1, 2):
        ck = torch.load(out / f"test_resnet_fold{k}.pth", weights_only=True)
        assert ck["config"]["pipeline"] == "dali" and ck["labels"] == CHEXPERT_LABELS
    train = pd.read_csv(data / "train.csv")
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["Image_name"]) == sorted(train["Image_name"])
    # folds come from the shards' manifest: oof folds = the shards' samples.csv folds
    samples = pd.read_csv(next((out / "shards").iterdir()) / "samples.csv")
    tr = samples[samples["split"] != "test"]
    assert dict(zip(tr["name"], tr["fold"])) == dict(zip(oof["Image_name"], oof["fold"]))
    sub = pd.read_csv(out / "submission.csv")
    assert sub["Image_name"].tolist() == sorted(p.name for p in (data / "test").iterdir())
    assert np.isfinite(sub[CHEXPERT_LABELS].to_numpy()).all()
    # the shards built for the CSV are not pinned in config.json: as a --config it builds/reuses them for its CSV
    assert json.loads((out / "config.json").read_text())["shards"] is None


def test_dali_shards_are_reused(dali_run, capsys):
    _, out, argv = dali_run
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.tar")}
    assert train_cli.main(argv + ["--folds_to_run", "1"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.tar")} == before


def test_predict_with_dali_matches_pil(dali_run, tmp_path):
    """cxr-predict --pipeline dali (test-only shards built in a temp folder) agrees with the PIL path."""
    data, out, _ = dali_run
    common = ["--checkpoints", str(out / "test_resnet_fold*.pth"), "--test_dir", str(data / "test"),
              "--num_workers", "0", "--no-progress", "--device", "cpu"]
    assert predict_cli.main([*common, "--pipeline", "pil", "--out_csv", str(tmp_path / "pil.csv")]) == 0
    assert predict_cli.main([*common, "--num_workers", "1", "--pipeline", "dali",
                             "--out_csv", str(tmp_path / "dali.csv")]) == 0
    a, b = pd.read_csv(tmp_path / "pil.csv"), pd.read_csv(tmp_path / "dali.csv")
    assert a["Image_name"].tolist() == b["Image_name"].tolist()
    # The shards hold JPEG (q95) re-encodes and the resize kernels differ: close, not equal.
    assert np.abs(a[CHEXPERT_LABELS].to_numpy() - b[CHEXPERT_LABELS].to_numpy()).max() < 0.02


def test_real_radiographs_through_shards_dali_and_engine(tmp_path):
    """The two real NIH images (as 12 training rows) -> cxr-shard -> DALI -> engine, one epoch."""
    src = pytest.importorskip("pathlib").Path(__file__).parent.parent / "assets"
    real = sorted(src.glob("0000*.png")) + sorted(src.glob("0002*.png"))
    assert len(real) == 2
    (tmp_path / "img" / "sub dir").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(12):
        name = f"sub dir/nih.{i}.png"
        shutil.copy(real[i % 2], tmp_path / "img" / name)
        rows.append({"Image_name": name, "Cardiomegaly": int(i % 2 == 0), "Effusion": int(rng.random() < 0.5)})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    argv = ["--train_csv", str(tmp_path / "train.csv"), "--train_dir", str(tmp_path / "img"), "--pipeline", "dali",
            "--shards_root", str(tmp_path / "shards"), "--folds", "2", "--epochs", "1", "--out_dir",
            str(tmp_path / "o"), "--model", "test_resnet", "--no-pretrained", "--img_size", "64", "--batch_size", "4",
            "--num_workers", "1", "--no-progress", "--device", "cpu"]
    assert train_cli.main(argv) == 0
    oof = pd.read_csv(tmp_path / "o" / "oof.csv")
    assert sorted(oof["Image_name"]) == sorted(r["Image_name"] for r in rows)
    assert list(oof.columns) == ["Image_name", "fold", "Cardiomegaly", "Effusion"]


@pytest.mark.slow
def test_ddp_dali_two_processes(synth_data, synth_shards, tmp_path):
    r = torchrun_train(synth_data, tmp_path, "dali", shards=synth_shards)
    assert r.returncode == 0, r.stderr[-3000:]
    check_ddp_outputs(synth_data, tmp_path, r.stdout)


@pytest.mark.slow
def test_ddp_waits_for_a_shard_build_longer_than_the_group_timeout(synth_data, tmp_path):
    """Rank 0 builds the shards (made 8 s slower) while rank 1 waits; the process group's timeout is 3 s. The wait is
    on a long-timeout gloo group, so the job trains instead of dying in the first collective."""
    out = tmp_path / "out"
    r = torchrun_train(synth_data, out, "dali", entry=(DDP_ENTRY,),
                       extra_args=["--shards_root", str(tmp_path / "shards")],
                       extra_env={"CXR_FAST_SLOW_SHARDS_S": "8", "CXR_FAST_DIST_TIMEOUT_S": "3"})
    assert r.returncode == 0, r.stderr[-3000:]
    check_ddp_outputs(synth_data, out, r.stdout)
    assert len(list((tmp_path / "shards").glob("*/manifest.json"))) == 1  # built once, by rank 0


@pytest.mark.slow
def test_dali_kill9_mid_epoch_then_resume(long_epoch_data, long_epoch_shards, tmp_path, tmp_path_factory):
    """A real kill -9 of a DALI run (CPU operators), then --resume: last.pth carries DALI's own pipeline checkpoint
    (reader position and shuffle state), so the resumed run equals an uninterrupted one, weights included."""
    ref_dir = tmp_path_factory.mktemp("dali_ref")
    subprocess.run(resume_cmd(long_epoch_data, ref_dir, "dali", shards=long_epoch_shards), check=True,
                   capture_output=True, timeout=600)
    cmd = resume_cmd(long_epoch_data, tmp_path, "dali", shards=long_epoch_shards)
    kill_when(cmd, tmp_path, "last.pth", 0.1)
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fold 1: resuming after epoch" in r.stdout
    assert_same_run(run_outputs(tmp_path), run_outputs(ref_dir))


def test_corrupt_shard_member_is_one_line_for_dali(synth_shards, tmp_path):
    """An image member overwritten in place (same size, so the cheap size check passes): DALI's error becomes one
    line pointing at cxr-shard verify, exit 2."""
    from cxr_fast.shards.format import read_index
    from cxr_fast.shards.read import load_manifest

    broken = tmp_path / "shards"
    shutil.copytree(synth_shards, broken)
    tar = min(broken.glob("fold1-*.tar"))
    off, size = read_index(tar.with_suffix(".idx"))[0]["jpg"]
    data = bytearray(tar.read_bytes())
    data[off:off + size] = b"\0" * size  # no JPEG left
    tar.write_bytes(bytes(data))
    assert load_manifest(broken)
    assert_user_error(lambda: train_cli.main(["--shards", str(broken), "--pipeline", "dali", "--out_dir",
                                              str(tmp_path / "o"), "--epochs", "1", *FAST, "--num_workers", "1"]),
                      "cxr-shard verify")
