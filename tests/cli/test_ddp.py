"""torchrun (DDP, gloo on CPU) with 2 processes: outputs written once, every validation/test sample exactly once,
AUCs from gathered predictions equal those recomputed from oof.csv, and a failing rank ends the job."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import DDP_ARGS, DDP_ENTRY, check_ddp_outputs, free_port, torchrun_train

# every test here launches torchrun: the slow tier (make test-slow, run by .ci/run)
pytestmark = pytest.mark.slow


def test_ddp_pil_two_processes(synth_data, tmp_path):
    # 48 samples, 2 folds of 24, 2 ranks, batch 5: validation shards of 12 per rank -> a partial last batch.
    r = torchrun_train(synth_data, tmp_path, "pil")
    assert r.returncode == 0, r.stderr[-3000:]
    check_ddp_outputs(synth_data, tmp_path, r.stdout)


def test_failing_rank_ends_the_job(synth_data, tmp_path):
    t0 = time.time()
    r = torchrun_train(synth_data, tmp_path, "pil", extra_env={"CXR_FAST_FAIL_RANK": "1"}, timeout=180,
                  entry=(DDP_ENTRY,))
    assert r.returncode != 0
    assert "injected failure on rank 1" in r.stderr
    assert time.time() - t0 < 120


def _lr_per_epoch(out):
    import json

    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["fold"], r["epoch"]): r["lr"] for r in recs}


def test_resume_on_another_number_of_processes_keeps_the_lr_per_epoch(synth_data, tmp_path):
    """A 1-process run interrupted after epoch 1 of 3, resumed on 2 processes: epochs 2-3 train with the lr of an
    uninterrupted 2-process run (the schedule is re-derived for the new epoch length), and the log says so. Carrying
    the 1-process step count over (twice the steps per epoch) would end epoch 2 at the schedule's end, lr 0."""
    import torch

    from cxr_fast.cli import train as train_cli

    one = tmp_path / "one"
    common = ["--epochs", "3", "--folds_to_run", "1", "--patience", "0", "--warmup_epochs", "0"]
    argv = ["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train"), "--pipeline",
            "pil", "--out_dir", str(one), *DDP_ARGS, *common]
    assert train_cli.main(argv) == 0
    last = torch.load(one / "last.pth", weights_only=True)
    s1 = last["step"] // 3  # steps per epoch on 1 process
    torch.save({**last, "epoch": 1, "step": s1}, one / "last.pth")  # as if killed after epoch 1
    (one / "state" / "fold1.json").unlink()
    src = ["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train")]
    two_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    tail = ["-m", "cxr_fast.train", *src, "--pipeline", "pil", *DDP_ARGS, *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*two_cmd, "--master_port", str(free_port()), *tail, "--out_dir", str(one), "--resume"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the interrupted run had 1 process(es), this one 2" in r.stdout
    ref = tmp_path / "two"
    r = subprocess.run([*two_cmd, "--master_port", str(free_port()), *tail, "--out_dir", str(ref)],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, uninterrupted = _lr_per_epoch(one), _lr_per_epoch(ref)
    per_rank = torch.load(one / "last.pth", weights_only=True)["rng_per_rank"]  # each rank's own streams
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    for epoch in (2, 3):
        assert resumed[(1, epoch)] == pytest.approx(uninterrupted[(1, epoch)], rel=1e-9, abs=1e-12)
    assert 0 < resumed[(1, 2)] < resumed[(1, 1)]  # the cosine moved on, and epoch 2 did not train at lr 0
    # TensorBoard continues the 1-process axis: epoch 1 at s1, then this run's steps after it; the old epochs 2-3
    # (steps 2 s1, 3 s1) are hidden
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator(
        str(one / "tb" / "fold1"))
    ea.Reload()
    s2 = torch.load(ref / "last.pth", weights_only=True)["step"] // 3  # steps per epoch on 2 processes
    assert [e.step for e in ea.Scalars("val/macro_auc")] == [s1, s1 + s2, s1 + 2 * s2]


def test_sigterm_on_one_rank_stops_both_at_one_step_and_resume_is_bit_identical(synth_data, tmp_path):
    """2 processes, 3 steps per epoch: rank 1 alone gets SIGTERM in its 5th step (epoch 2); both ranks stop after
    that step (one all-reduce per step), rank 0 writes last.pth, the workers exit 75; torchrun --resume ends with
    the weights of an uninterrupted 2-process run, bit for bit."""
    import torch

    extra = ("--folds_to_run", "1", "--epochs", "2", "--batch_size", "4", "--patience", "0")
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    r = torchrun_train(synth_data, ref, "pil", extra_args=extra)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun_train(synth_data, out, "pil", extra_env={"CXR_FAST_SIGNAL_AT": "1:5"}, entry=(DDP_ENTRY,),
                       extra_args=extra)
    assert r.returncode != 0 and "exitcode  : 75" in r.stderr, r.stderr[-3000:]
    assert "stopped on a signal on another rank: fold 1 saved after step 2 of 3 of epoch 2" in r.stderr
    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["mid_batches"], last["world"]) == (1, 2, 2)
    assert len(last["buffers_per_rank"]) == 2
    r = torchrun_train(synth_data, out, "pil", extra_args=(*extra, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fold 1: resuming after epoch 1, step 2 of epoch 2" in r.stdout
    a, b = (torch.load(d / "last.pth", weights_only=True) for d in (out, ref))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), part
