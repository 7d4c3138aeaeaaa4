"""Preemption (`cxr_fast.train.preempt`): a stop signal inside an epoch ends cxr-train with exit code 75 after the
current step, with a resumable last.pth; `--resume` continues from that step, and with the PIL pipeline the result
is bit for bit that of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cxr_fast.train import preempt
from cxr_fast.train.step import TrainStep
from tests.helpers import FAST, assert_user_error


def _argv(data, out, *extra):
    return ["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"), "--pipeline", "pil",
            "--folds", "2", "--folds_to_run", "1", "--epochs", "2", "--patience", "0", "--lr", "1e-3",
            "--ema_decay", "0.9", "--out_dir", str(out), "--out_csv", str(out / "submission.csv"), *FAST, *extra]


def signal_at_step(monkeypatch, n: int, sig=signal.SIGTERM) -> None:
    """This process sends itself `sig` during its n-th training step (1-based), as a scheduler would."""
    calls = [0]
    original = TrainStep.__call__

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), sig)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", step)


def _weights(out) -> dict:
    """The last epoch's weights (model, EMA, optimiser moments) and the best checkpoint's validation predictions."""
    last = torch.load(out / "last.pth", weights_only=True)
    best = torch.load(out / "test_resnet_fold1.pth", weights_only=True)
    moments = {f"opt.{i}.{k}": v for i, s in last["optimizer"]["state"].items() for k, v in s.items()}
    return {**{f"model.{k}": v for k, v in last["model"].items()}, **{f"ema.{k}": v for k, v in last["ema"].items()},
            **moments, "oof": best["oof_probs"]}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-identical: {different[:5]}"


@pytest.fixture(scope="module")
def reference(synth_data, tmp_path_factory):
    """An uninterrupted run: fold 1, 2 epochs of 3 steps (24 training samples, batch 8)."""
    from cxr_fast.cli import train as train_cli

    ref = tmp_path_factory.mktemp("uninterrupted")
    assert train_cli.main(_argv(synth_data, ref)) == 0
    return ref


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["TERM", "USR1", "INT"])
def test_signal_mid_epoch_then_resume_is_bit_identical(synth_data, tmp_path, monkeypatch, capsys, sig, reference):
    from cxr_fast.cli import train as train_cli

    ref = reference
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        signal_at_step(m, 5, sig)  # epoch 2, step 2 of 3
        assert train_cli.main(_argv(synth_data, out)) == preempt.EXIT_RESUMABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"stopped on {signal.Signals(sig).name}: fold 1 saved after step 2 of 3 of epoch 2")
    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["mid_batches"], last["step"]) == (1, 2, 5)
    assert not (out / "cv_summary.json").exists() and not list(out.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert train_cli.main(_argv(synth_data, out, "--resume")) == 0
    assert "fold 1: resuming after epoch 1, step 2 of epoch 2" in capsys.readouterr().out
    _assert_identical(_weights(out), _weights(ref))
    recs, ref_recs = ((out / "metrics.jsonl").read_text(), (ref / "metrics.jsonl").read_text())
    for a, b in zip(map(json.loads, recs.splitlines()), map(json.loads, ref_recs.splitlines()), strict=True):
        assert (a["epoch"], a["loss"], a["val_auc"], a["lr"]) == (b["epoch"], b["loss"], b["val_auc"], b["lr"])


def test_signal_during_validation_stops_at_the_epoch_boundary(synth_data, tmp_path, monkeypatch, capsys):
    from cxr_fast.cli import train as train_cli
    from cxr_fast.train import fold

    validate = fold.validate

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return validate(*args, **kwargs)

    monkeypatch.setattr(fold, "validate", signalled)
    assert train_cli.main(_argv(synth_data, tmp_path)) == preempt.EXIT_RESUMABLE
    assert "saved after epoch 1 in" in capsys.readouterr().err
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (last["epoch"], last["mid_batches"]) == (1, 0)


def test_signal_during_the_last_validation_is_not_ignored(synth_data, tmp_path, monkeypatch, capsys):
    """A stop during the final epoch's validation still stops (exit 75, last.pth complete), and --resume finishes
    the fold from there without training again."""
    from cxr_fast.cli import train as train_cli
    from cxr_fast.train import fold

    validate, calls = fold.validate, [0]

    def signalled(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # epoch 2 of 2
            os.kill(os.getpid(), signal.SIGTERM)
        return validate(*args, **kwargs)

    monkeypatch.setattr(fold, "validate", signalled)
    assert train_cli.main(_argv(synth_data, tmp_path)) == preempt.EXIT_RESUMABLE
    assert "saved after epoch 2 in" in capsys.readouterr().err
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(fold, "validate", validate)
    assert train_cli.main(_argv(synth_data, tmp_path, "--resume")) == 0
    assert (tmp_path / "test_resnet_fold1.pth").is_file()


def test_a_signal_between_folds_stops_with_the_finished_folds_saved():
    preempt._state["signal"] = signal.SIGUSR1
    try:
        with pytest.raises(preempt.Preempted) as e:
            preempt.check_between("fold 2")
    finally:
        preempt._state["signal"] = None
    assert e.value.exit_code == preempt.EXIT_RESUMABLE
    assert str(e.value).startswith("stopped on SIGUSR1 before fold 2: the finished folds are saved")
    preempt.check_between("fold 2")  # no signal: nothing happens


@pytest.mark.slow
def test_sigterm_from_outside_exits_within_seconds_then_resume_finishes(long_epoch_data, tmp_path):
    """A real SIGTERM to a running cxr-train (240 images, 30 steps per epoch): exit code 75 within a few
    seconds, a mid-epoch last.pth, and --resume completes the run."""
    argv = [sys.executable, "-m", "cxr_fast.train", *_argv(long_epoch_data, tmp_path)]
    argv[argv.index("--batch_size") + 1] = "4"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the fold's first line comes just before its first step
            if "steps/epoch" in line:
                break
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    stopped = subprocess.CompletedProcess(argv, rc, "", proc.stderr.read())
    assert_user_error(stopped, code=preempt.EXIT_RESUMABLE, prefix="stopped on SIGTERM")
    assert took < 45, f"took {took:.1f} s to stop"  # one step + the save (seconds; more on a loaded 2-core box)
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["mid_batches"] > 0 or last["epoch"] >= 1
    r = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cv_summary.json").exists()


@pytest.mark.parametrize("where", ["mid_epoch", "between_epochs"])
def test_dali_resume_on_cpu_operators_is_bit_identical(synth_shards, tmp_path, monkeypatch, capsys, where):
    """DALI's own pipeline checkpoint (reader position, shuffle_after_epoch state, operator RNGs) in last.pth, inside
    an epoch and between epochs (DALI's next-epoch order is not a function of the epoch number): the resumed run sees
    the same samples with the same augmentation, so the weights match bit for bit on the CPU."""
    pytest.importorskip("nvidia.dali")
    from cxr_fast.cli import train as train_cli
    from cxr_fast.train import fold

    def argv(out, *extra):
        return ["--shards", str(synth_shards), "--pipeline", "dali", "--folds_to_run", "1", "--epochs", "2",
                "--patience", "0", "--lr", "1e-3", "--ema_decay", "0.9", "--out_dir", str(out), "--out_csv",
                str(out / "submission.csv"), *FAST, *extra]

    ref, out = tmp_path / "ref", tmp_path / "stopped"
    assert train_cli.main(argv(ref)) == 0
    with monkeypatch.context() as m:
        if where == "mid_epoch":
            signal_at_step(m, 5)
        else:  # during epoch 1's validation: last.pth at the epoch boundary
            validate, calls = fold.validate, [0]

            def signalled(*args, **kwargs):
                calls[0] += 1
                if calls[0] == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                return validate(*args, **kwargs)

            m.setattr(fold, "validate", signalled)
        assert train_cli.main(argv(out)) == preempt.EXIT_RESUMABLE
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["mid_batches"] == (2 if where == "mid_epoch" else 0) and last["epoch"] == 1
    assert isinstance(last["loader_per_rank"][0]["dali"], bytes)
    assert train_cli.main(argv(out, "--resume")) == 0
    assert ("step 2 of epoch 2" in capsys.readouterr().out) == (where == "mid_epoch")
    a, b = (torch.load(d / "last.pth", weights_only=True) for d in (out, ref))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), part
