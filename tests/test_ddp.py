"""torchrun (DDP, gloo on CPU) with 2 processes: outputs written once, every validation/test sample exactly once,
AUCs from gathered predictions equal those recomputed from oof.csv, and a failing rank ends the job."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.evaluate.metrics import macro_auc

ARGS = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "5", "--num_workers", "0",
        "--no-progress", "--device", "cpu", "--folds", "2", "--epochs", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENTRY = str(Path(__file__).with_name("ddp_entry.py"))  # cxr-train with faults injected


def _torchrun(data, out, pipeline, extra_env=None, shards=None, timeout=300, entry=("-m", "cxr_fast.train"),
              extra_args=()):
    src = ["--shards", str(shards)] if shards else ["--train_csv", str(data / "train.csv"),
                                                    "--train_dir", str(data / "train"), "--test_dir",
                                                    str(data / "test")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *entry, *src, "--pipeline", pipeline,
           "--out_dir", str(out), "--out_csv", str(out / "submission.csv"), *ARGS, *extra_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def check_ddp_outputs(data, out, stdout):
    train = pd.read_csv(data / "train.csv")
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == len(train) and sorted(oof["Image_name"]) == sorted(train["Image_name"])
    sub = pd.read_csv(out / "submission.csv")
    assert sub["Image_name"].tolist() == sorted(p.name for p in (data / "test").iterdir())
    wrote = [line for line in stdout.splitlines() if line.startswith(f"wrote {out}")]
    assert len(wrote) == len(set(wrote)) == 3, f"only rank 0 prints and writes (oof, submission, report): {wrote}"
    truth = train.set_index("Image_name").loc[oof["Image_name"], CHEXPERT_LABELS].to_numpy(np.float32)
    for k in (1, 2):
        m = (oof["fold"] == k).to_numpy()
        auc, _, _ = macro_auc(truth[m], oof.loc[m, CHEXPERT_LABELS].to_numpy(), CHEXPERT_LABELS)
        ckpt = torch.load(out / f"test_resnet_fold{k}.pth", weights_only=True)
        assert auc == pytest.approx(ckpt["val_auc"], abs=1e-4)
    assert not list(out.glob(".*tmp*"))


@pytest.mark.slow
def test_ddp_pil_two_processes(synth_data, tmp_path):
    # 48 samples, 2 folds of 24, 2 ranks, batch 5: validation shards of 12 per rank -> a partial last batch.
    r = _torchrun(synth_data, tmp_path, "pil")
    assert r.returncode == 0, r.stderr[-3000:]
    check_ddp_outputs(synth_data, tmp_path, r.stdout)


@pytest.mark.slow
def test_failing_rank_ends_the_job(synth_data, tmp_path):
    t0 = time.time()
    r = _torchrun(synth_data, tmp_path, "pil", extra_env={"CXR_FAST_FAIL_RANK": "1"}, timeout=180,
                  entry=(ENTRY,))
    assert r.returncode != 0
    assert "injected failure on rank 1" in r.stderr
    assert time.time() - t0 < 120


def _lr_per_epoch(out):
    import json

    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["fold"], r["epoch"]): r["lr"] for r in recs}


@pytest.mark.slow
def test_resume_on_another_number_of_processes_keeps_the_lr_per_epoch(synth_data, tmp_path):
    """A 1-process run interrupted after epoch 1 of 3, resumed on 2 processes: epochs 2-3 train with the lr of an
    uninterrupted 2-process run (the schedule is re-derived for the new epoch length), and the log says so. Carrying
    the 1-process step count over (twice the steps per epoch) would end epoch 2 at the schedule's end, lr 0."""
    import torch

    from cxr_fast.cli import train as train_cli

    one = tmp_path / "one"
    common = ["--epochs", "3", "--folds_to_run", "1", "--patience", "0", "--warmup_epochs", "0"]
    argv = ["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train"), "--pipeline",
            "pil", "--out_dir", str(one), *ARGS, *common]
    assert train_cli.main(argv) == 0
    last = torch.load(one / "last.pth", weights_only=True)
    torch.save({**last, "epoch": 1}, one / "last.pth")  # as if killed after epoch 1
    (one / "state" / "fold1.json").unlink()
    src = ["--train_csv", str(synth_data / "train.csv"), "--train_dir", str(synth_data / "train")]
    two_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    tail = ["-m", "cxr_fast.train", *src, "--pipeline", "pil", *ARGS, *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*two_cmd, "--master_port", str(_free_port()), *tail, "--out_dir", str(one), "--resume"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the interrupted run had 1 process(es), this one 2" in r.stdout
    ref = tmp_path / "two"
    r = subprocess.run([*two_cmd, "--master_port", str(_free_port()), *tail, "--out_dir", str(ref)],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, uninterrupted = _lr_per_epoch(one), _lr_per_epoch(ref)
    per_rank = torch.load(one / "last.pth", weights_only=True)["rng_per_rank"]  # each rank's own streams
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    for epoch in (2, 3):
        assert resumed[(1, epoch)] == pytest.approx(uninterrupted[(1, epoch)], rel=1e-9, abs=1e-12)
    assert 0 < resumed[(1, 2)] < resumed[(1, 1)]  # the cosine moved on, and epoch 2 did not train at lr 0
