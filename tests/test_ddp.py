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
from cxr_fast.metrics import macro_auc

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
