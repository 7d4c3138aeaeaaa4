"""What a cluster job meets (issue 24): two jobs in one --out_dir, a full disk during a checkpoint write, damaged
checkpoints. Each is one line on stderr, exit code 2, nothing half-written. (Preemption: test_preempt.py.)"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import train as train_cli
from cxr_fast.train import checkpoint
from tests.helpers import FAST, assert_user_error


def _argv(data, out, *extra):
    return ["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--pipeline", "pil",
            "--folds", "2", "--folds_to_run", "1", "--epochs", "2", "--patience", "0", "--out_dir", str(out),
            "--out_csv", str(out / "submission.csv"), *FAST, *extra]


def test_second_run_into_a_running_runs_folder_is_refused_and_a_killed_holder_blocks_nothing(
        long_epoch_data, tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "cxr_fast.train", *_argv(long_epoch_data, tmp_path,
                                                                              "--epochs", "3")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while f"pid={first.pid}" not in ((tmp_path / ".lock").read_text() if (tmp_path / ".lock").exists() else ""):
            assert first.poll() is None, first.stderr.read()
            assert time.time() - t0 < 120
            time.sleep(0.05)
        line = assert_user_error(lambda: train_cli.main(_argv(long_epoch_data, tmp_path)),
                                 "is in use by another cxr-train run")
        assert f"pid {first.pid}" in line and "started " in line
        assert first.poll() is None, "the first run must keep going"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # the killed holder's lock file is still there; the kernel released its lock: the next run starts at once
    assert (tmp_path / ".lock").exists()
    assert_user_error(lambda: train_cli.main(_argv(long_epoch_data, tmp_path, "--folds_to_run", "7")),
                      "folds are numbered 1..2")  # stops after taking the lock


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_writing_last_pth_is_one_line_then_resume_completes(synth_data, tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if ".last.pth." in str(f):  # the temporary file of last.pth: a real partial write, then the failure
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4246")
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", save)
        assert_user_error(lambda: train_cli.main(_argv(synth_data, tmp_path)), "no space left on the device",
                          str(tmp_path / "last.pth"), "fold 1's resumable state", "--resume")
    assert not (tmp_path / "last.pth").exists() and not list(tmp_path.glob(".*.tmp"))
    assert train_cli.main(_argv(synth_data, tmp_path, "--resume")) == 0  # room again
    assert (tmp_path / "cv_summary.json").exists()


def test_enospc_on_the_fold_checkpoint_names_it(synth_data, tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "_fold1.pth" in str(f):
            _enospc()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert_user_error(lambda: train_cli.main(_argv(synth_data, tmp_path, "--epochs", "1")),
                      str(tmp_path / "test_resnet_fold1.pth"), "fold 1's best checkpoint")
    assert not list(tmp_path.glob("*_fold*.pth")) and not list(tmp_path.glob(".*.tmp"))


def test_real_full_tmpfs_during_training(synth_data, tmp_path):
    """A real ENOSPC: a 3 MB tmpfs that holds the run's first files but not its checkpoints (skips, saying why,
    where this process may not mount)."""
    from ..shards.tmpfs import resize_tmpfs, small_tmpfs

    with small_tmpfs(tmp_path / "small", size="300k") as out:
        assert_user_error(lambda: train_cli.main(_argv(synth_data, out, "--epochs", "1")), "no space left on the device")
        assert not list(out.glob(".*.tmp")) and not list(out.glob("*.pth"))
        resize_tmpfs(out, "64m")
        assert train_cli.main(_argv(synth_data, out, "--epochs", "1", "--resume")) == 0


def _truncate(src, dst, keep: float = 0.5) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def test_truncated_last_pth_on_resume_is_one_line(pil_run, tmp_path):
    data, run = pil_run
    out = tmp_path / "run"
    out.mkdir()
    _truncate(run / "test_resnet_fold1.pth", out / "last.pth")
    argv = ["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--test_dir",
            str(data / "test"), "--pipeline", "pil", "--folds", "2", "--out_dir", str(out), "--out_csv",
            str(out / "submission.csv"), *FAST, "--epochs", "2", "--lr", "1e-3", "--ema_decay", "0.9", "--resume"]
    assert_user_error(lambda: train_cli.main(argv), str(out / "last.pth"), "damaged", "delete it to restart this fold")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.97])
def test_truncated_fold_checkpoint_given_to_predict_is_one_line(pil_run, tmp_path, keep):
    data, run = pil_run
    bad = tmp_path / "test_resnet_fold2.pth"
    _truncate(run / "test_resnet_fold2.pth", bad, keep)
    argv = ["--checkpoints", str(run / "test_resnet_fold1.pth"), str(bad), "--test_dir", str(data / "test"),
            "--out_csv", str(tmp_path / "s.csv"), "--num_workers", "0", "--no-progress", "--device", "cpu"]
    assert_user_error(lambda: predict_cli.main(argv), f"{bad}: damaged or not a checkpoint", "retrain that fold")
    assert not (tmp_path / "s.csv").exists()
