"""Helpers the test files share: the user-error contract, toy models with an in-memory loader, the tiny cxr-train
command line, and launchers for torchrun and kill -9 runs. Test files import from here, never from each other."""

from __future__ import annotations

import contextlib
import fcntl
import io
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

CPU = torch.device("cpu")
TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the user-error contract

def assert_user_error(result_or_callable: subprocess.CompletedProcess | Callable[[], object], *match: str,
                      prefix: str = "error: ", code: int = 2) -> str:
    """A user's mistake: exit code 2, exactly one line on stderr (starting with `prefix`), no traceback, and every
    `match` in that line. Takes a finished subprocess, or a callable (a CLI's main with its argv, in a lambda) that
    must raise SystemExit(2) or return 2; its stderr is captured here. Returns the line. `code`: another expected
    exit code with the same one-line contract (e.g. a preempted run's EXIT_RESUMABLE)."""
    if isinstance(result_or_callable, subprocess.CompletedProcess):
        got, err = result_or_callable.returncode, result_or_callable.stderr
        err = err.decode(errors="replace") if isinstance(err, bytes) else err or ""
    else:
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            try:
                got = result_or_callable()
            except SystemExit as e:
                got = e.code
        err = buf.getvalue()
    lines = err.strip().splitlines()
    assert got == code, f"exit code {got!r}, not {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr, not 1: {err[-2000:]}"
    assert lines[0].startswith(prefix), lines[0]
    for m in match:
        assert m in lines[0], f"{m!r} not in {lines[0]!r}"
    return lines[0]


# ---------------------------------------------------------------- made once per test session

def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A session fixture's folder, made by `make(folder)` once for the whole session. Each pytest-xdist worker has a
    session of its own, so the folder lives in the workers' common base temp folder: the first worker makes it under
    a file lock, and the others wait for it and read it. Tests treat it as read-only (a test that changes it copies
    it first)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name)
        make(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / name
    done = out.with_name(name + ".done")
    with open(out.with_name(name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            done.touch()
    return out


# ---------------------------------------------------------------- toy models and data

class TensorLoader:
    """A tiny in-memory loader that follows the pipeline contract: Batch(uint8 images, float labels, int64 index)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.num_samples = len(images)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        from cxr_fast.data.samples import Batch

        order = torch.randperm(self.num_samples, generator=self.gen) if self.shuffle else torch.arange(self.num_samples)
        for i in range(len(self)):
            j = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield Batch(self.images[j], self.labels[j], j)


class TinyBackbone(nn.Module):
    """A small conv net whose head cannot see label 1 (its weight row is masked to 0, only the bias is left): label
    1 can only be predicted through the refiner's coupling from label 0, with which it always co-occurs."""

    def __init__(self, num_classes: int = 3, blind=(1,)):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                      nn.Flatten())
        self.head = nn.Linear(128, num_classes)
        mask = torch.ones(num_classes)
        mask[list(blind)] = 0.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.features(x), self.head.weight * self.mask[:, None], self.head.bias)


def toy_data(n: int = 256, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 0: a bright square top-left; label 1 = label 0 (co-occurs); label 2: a square bottom-right."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 3)
    labels[:, 0] = (torch.rand(n, generator=g) < 0.4).float()
    labels[:, 1] = labels[:, 0]
    labels[:, 2] = (torch.rand(n, generator=g) < 0.4).float()
    images = (torch.rand(n, 1, size, size, generator=g) * 60).to(torch.uint8)
    images[labels[:, 0] > 0, :, 4:12, 4:12] = 220
    images[labels[:, 2] > 0, :, 20:28, 20:28] = 220
    return images, labels


def toy_model(seed: int = 0, blind=(1,)) -> nn.Module:
    """TinyBackbone + a 3-label refiner, seeded."""
    from cxr_fast.model import CXRClassifier
    from cxr_fast.model.refiner import LabelGraphRefiner

    torch.manual_seed(seed)
    return CXRClassifier(TinyBackbone(blind=blind), LabelGraphRefiner(3))


def tiny_classifier(name: str = "test_resnet", num_classes: int = 4, refiner: bool = True, seed: int = 0) -> nn.Module:
    """A timm test model (BatchNorm included) for one grey channel, with or without a refiner, seeded."""
    from cxr_fast.model import CXRClassifier
    from cxr_fast.model.backbone import create_backbone
    from cxr_fast.model.refiner import LabelGraphRefiner

    torch.manual_seed(seed)
    bb = create_backbone(name, num_classes, in_chans=1, pretrained=False, drop_rate=0.0)
    return CXRClassifier(bb, LabelGraphRefiner(num_classes) if refiner else None)


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class FlakyLoss(nn.Module):
    """A real loss, except that the calls listed in `bad` return NaN (or give NaN gradients with `grad=True`)."""

    def __init__(self, bad, grad: bool = False):
        from cxr_fast.model.losses import AsymmetricLoss

        super().__init__()
        self.inner, self.bad, self.grad, self.calls = AsymmetricLoss(), set(bad), grad, 0

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        if i in self.bad:
            if self.grad:
                return self.inner(_NanGrad.apply(logits), targets)
            return self.inner(logits, targets) * float("nan")
        return self.inner(logits, targets)


# ---------------------------------------------------------------- tiny cxr-train runs

# --no-tensorboard: its per-epoch coupling heatmap (matplotlib) is ~15% of a tiny run's CPU time; the TensorBoard
# tests pass --tensorboard (later flags win), and the kill -9 runs (resume_cmd) keep the default
FAST = ["--model", "test_resnet", "--no-pretrained", "--img_size", "48", "--batch_size", "8", "--num_workers", "0",
        "--no-progress", "--device", "cpu", "--no-tensorboard"]


def train_pil(data: Path, out: Path, *extra: str) -> int:
    """cxr-train in-process on the synthetic set: PIL pipeline, 2 folds, a tiny timm model at 48 px."""
    from cxr_fast.cli import train as train_cli

    return train_cli.main(["--train_csv", str(data / "train.csv"), "--train_dir", str(data / "train"),
                           "--test_dir", str(data / "test"), "--pipeline", "pil", "--folds", "2",
                           "--out_dir", str(out), "--out_csv", str(out / "submission.csv"), *FAST, *extra])


# ---------------------------------------------------------------- torchrun and kill -9

DDP_ENTRY = str(TESTS / "ddp_entry.py")  # cxr-train with faults injected through the environment
DDP_ARGS = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "5", "--num_workers", "0",
            "--no-progress", "--device", "cpu", "--folds", "2", "--epochs", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(data: Path, out: Path, pipeline: str, extra_env: dict | None = None, shards: Path | None = None,
                   timeout: float = 300, entry=("-m", "cxr_fast.train"), extra_args=()) -> subprocess.CompletedProcess:
    """cxr-train (or `entry`) on 2 gloo processes with DDP_ARGS; the finished process, not checked."""
    src = ["--shards", str(shards)] if shards else ["--train_csv", str(data / "train.csv"),
                                                    "--train_dir", str(data / "train"), "--test_dir",
                                                    str(data / "test")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *entry, *src, "--pipeline", pipeline,
           "--out_dir", str(out), "--out_csv", str(out / "submission.csv"), *DDP_ARGS, *extra_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def check_ddp_outputs(data: Path, out: Path, stdout: str) -> None:
    """A 2-process run wrote every OOF row and test image once, from rank 0, with AUCs matching oof.csv."""
    import pytest

    from cxr_fast.data.table import CHEXPERT_LABELS
    from cxr_fast.evaluate.metrics import macro_auc

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


# 2 folds x 2 epochs: a kill can land between epochs, inside epoch 2, or in fold 2, and resume has an epoch left
RESUME_ARGS = ["--model", "test_resnet", "--no-pretrained", "--img_size", "32", "--batch_size", "4", "--num_workers",
               "0", "--no-progress", "--device", "cpu", "--folds", "2", "--epochs", "2", "--patience", "0",
               "--lr", "1e-3"]


def resume_cmd(data: Path, out: Path, pipeline: str, shards: Path | None = None) -> list[str]:
    """`python -m cxr_fast.train` with RESUME_ARGS: a run to kill and resume."""
    src = ["--shards", str(shards)] if shards else ["--train_csv", str(data / "train.csv"),
                                                    "--train_dir", str(data / "train")]
    return [sys.executable, "-m", "cxr_fast.train", *src, "--test_dir", str(data / "test"), "--pipeline", pipeline,
            "--out_dir", str(out), "--out_csv", str(out / "submission.csv"), *RESUME_ARGS]


def kill_when(cmd: list[str], out: Path, marker: str, extra_delay: float, timeout: float = 240) -> None:
    """Start training, wait for `out/marker` to appear (+ a delay), then SIGKILL the whole process group."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    try:
        while not (out / marker).exists():  # polled finely: an epoch here lasts about a second
            assert proc.poll() is None, f"training ended before it could be interrupted: {proc.stderr.read()!r}"
            assert time.time() - t0 < timeout, "timed out waiting for training progress"
            time.sleep(0.005)
        time.sleep(extra_delay)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def run_outputs(out: Path) -> dict:
    """What a 2-fold run left: file names, fold checkpoints, oof.csv, submission.csv and the (fold, epoch) log."""
    import json

    return {
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
        "ckpt": {k: torch.load(out / f"test_resnet_fold{k}.pth", weights_only=True) for k in (1, 2)},
        "oof": pd.read_csv(out / "oof.csv"),
        "sub": pd.read_csv(out / "submission.csv"),
        "metrics": [(r["fold"], r["epoch"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())],
    }


def assert_same_run(a: dict, b: dict) -> None:
    """Two run_outputs() are the same run: files, (fold, epoch) log, weights, couplings, OOF and submission."""
    import pytest

    assert a["files"] == b["files"]
    assert a["metrics"] == b["metrics"]
    for k in (1, 2):
        ca, cb = a["ckpt"][k], b["ckpt"][k]
        assert ca["epoch"] == cb["epoch"] and ca["val_auc"] == pytest.approx(cb["val_auc"], abs=1e-6)
        for key in ca["model"]:
            torch.testing.assert_close(ca["model"][key], cb["model"][key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ca["refiner"]["A"], cb["refiner"]["A"], atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(a["oof"].iloc[:, 2:].to_numpy(), b["oof"].iloc[:, 2:].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(a["sub"].iloc[:, 1:].to_numpy(), b["sub"].iloc[:, 1:].to_numpy(), atol=1e-5)

# ---------------------------------------------------------------- source folders for cxr-shard

SHARD_LABELS = ["Atelectasis", "Cardiomegaly", "Edema", "Effusion", "No Finding"]
ODD_NAMES = ["CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", "a.b c/ü.png", "x,y 'q\".png"]


def shard_pixels(i: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Image i, regenerable from its index: a gradient plus seeded noise."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2 + i * 7) % 200 + rng.integers(0, 40, (h, w))).astype(np.uint8)


def make_shard_data(root: Path, n: int = 40, n_test: int = 6, size: int = 64, seed: int = 0) -> Path:
    """For the shard tests: n training images (ODD_NAMES first, shard_pixels) with a 5-label CSV holding
    0/1/-1/blank, plus n_test test images."""
    rng = np.random.default_rng(seed)
    names = (ODD_NAMES + [f"p{i % 9}/img_{i:03d}.png" for i in range(len(ODD_NAMES), n)])[:n]
    rows = []
    for i, name in enumerate(names):
        p = root / "train" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shard_pixels(i, size, size)).save(p, format="JPEG" if name.endswith(".jpg") else "PNG")
        vals = rng.choice(["0", "1", "-1", ""], size=len(SHARD_LABELS), p=[0.5, 0.3, 0.1, 0.1])
        rows.append([name, f"pt{i // 3}", *vals])
    pd.DataFrame(rows, columns=["Image_name", "Patient", *SHARD_LABELS]).to_csv(root / "train.csv", index=False)
    (root / "test").mkdir(exist_ok=True)
    for j in range(n_test):
        Image.fromarray(shard_pixels(1000 + j, size, size)).save(root / "test" / f"t{j:02d}.png")
    return root


def shard_cli_args(root: Path, out: Path, *extra: str) -> list[str]:
    """cxr-shard flags for make_shard_data's folder: shards of 7, one worker, blanks and -1 ignored."""
    return ["--train_csv", str(root / "train.csv"), "--train_dir", str(root / "train"), "--test_dir",
            str(root / "test"), "--out", str(out), "--uncertain", "ignore", "--missing", "ignore",
            "--samples_per_shard", "7", "--workers", "1", "--no-progress", *extra]
