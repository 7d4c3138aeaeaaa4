"""Interruption and resume: a real `kill -9` of a running cxr-train, then `--resume`, reaches the same outputs as an
uninterrupted run (same files, same weights: augmentation and shuffles are seeded per epoch, RNG states restored)."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch

from tests.helpers import assert_same_run, assert_user_error, kill_when, made_once, resume_cmd, run_outputs, train_pil


@pytest.fixture(scope="module")
def reference(long_epoch_data, tmp_path_factory):
    def make(out):
        subprocess.run(resume_cmd(long_epoch_data, out, "pil"), check=True, capture_output=True, timeout=600)

    return run_outputs(made_once(tmp_path_factory, "uninterrupted_pil", make))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["between_epochs", "mid_epoch", "second_fold"])
def test_kill9_then_resume_matches_uninterrupted(long_epoch_data, tmp_path, reference, where):
    cmd = resume_cmd(long_epoch_data, tmp_path, "pil")
    # "between_epochs": right after epoch 1's last.pth lands; the others well inside an epoch (~1 s each here)
    marker, delay = {"between_epochs": ("last.pth", 0.0), "mid_epoch": ("last.pth", 0.25),
                     "second_fold": ("state/fold1.json", 0.25)}[where]
    kill_when(cmd, tmp_path, marker, delay)
    assert not (tmp_path / "cv_summary.json").exists() and not (tmp_path / "submission.csv").exists()
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    if where == "second_fold":  # fold 1 finished before the kill; fold 2 had not completed an epoch
        assert "fold 1: already complete" in r.stdout
    else:
        assert "fold 1: resuming after epoch 1" in r.stdout
    got = run_outputs(tmp_path)
    assert_same_run(got, reference)


def test_resume_refuses_changed_settings(synth_data, tmp_path):
    out = tmp_path
    (out / "config.json").write_text(json.dumps({"model": "resnet50"}))
    r = subprocess.run(resume_cmd(synth_data, out, "pil") + ["--resume"], capture_output=True, text=True, timeout=300,
                       check=False)
    assert_user_error(r, "--resume with different settings")


def _metrics(out):
    return [(r["fold"], r["epoch"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_resume_keeps_other_folds_metrics_and_an_early_stop(synth_data, tmp_path):
    assert train_pil(synth_data, tmp_path, "--epochs", "2", "--folds_to_run", "2") == 0
    assert train_pil(synth_data, tmp_path, "--epochs", "2", "--folds_to_run", "1", "--resume") == 0
    assert sorted(_metrics(tmp_path)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # Fold 1 had early-stopped (as last.pth records) but was killed before its fold summary was written:
    # resuming finishes the fold without training further epochs.
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["fold"] == 1 and last["epoch"] == 2
    trunc = {**last, "epoch": 1, "bad_epochs": 3}
    torch.save(trunc, tmp_path / "last.pth")
    (tmp_path / "state" / "fold1.json").unlink()
    before = (tmp_path / "test_resnet_fold1.pth").read_bytes()
    assert train_pil(synth_data, tmp_path, "--epochs", "2", "--folds_to_run", "1", "--resume") == 0
    assert sorted(_metrics(tmp_path)) == [(1, 1), (2, 1), (2, 2)]  # epoch 2 of fold 1 was not run again
    assert (tmp_path / "test_resnet_fold1.pth").read_bytes() == before


def test_resume_refuses_other_folds(synth_data, tmp_path):
    """Same flags, but the CSV was edited in place (rows reordered): resuming would mix two fold assignments."""
    from cxr_fast.cli import train as train_cli

    csv = tmp_path / "train.csv"
    df = pd.read_csv(synth_data / "train.csv")
    df.to_csv(csv, index=False)
    argv = ["--train_csv", str(csv), "--train_dir", str(synth_data / "train"), "--pipeline", "pil", "--folds", "2",
            "--out_dir", str(tmp_path / "o"), "--epochs", "1", "--folds_to_run", "1", "--model", "test_resnet",
            "--no-pretrained", "--img_size", "48", "--batch_size", "8", "--num_workers", "0", "--no-progress",
            "--device", "cpu", "--no-tensorboard"]
    assert train_cli.main(argv) == 0
    df.sample(frac=1.0, random_state=0).to_csv(csv, index=False)
    assert_user_error(lambda: train_cli.main([*argv, "--resume"]), "would assign other folds")


def test_trim_metrics_drops_rerun_epochs_and_a_cut_last_line(tmp_path):
    from cxr_fast.errors import UserError
    from cxr_fast.train.resume import trim_metrics

    path = tmp_path / "metrics.jsonl"
    recs = [{"fold": 1, "epoch": 1}, {"fold": 1, "epoch": 2}, {"fold": 2, "epoch": 1}, {"fold": 2, "epoch": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"fold": 2, "ep')  # killed mid-append
    trim_metrics(path, 2, 1)
    assert [json.loads(ln) for ln in path.read_text().splitlines()] == recs[:3]
    path.write_text('{"fold": 1\n' + json.dumps(recs[0]) + "\n")  # damage before the end is not ours to drop
    with pytest.raises(UserError, match="line 1 is not JSON"):
        trim_metrics(path, 1, 0)
