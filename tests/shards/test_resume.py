"""Resumable cxr-shard: a build killed (SIGKILL) mid-encode or mid-write, or stopped by a bad image, and rerun with
the same arguments reuses what it finished and ends byte-identical to an uninterrupted build."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.shards import format as fmt
from cxr_fast.shards.verify import verify_shards
from cxr_fast.shards.writer import write_shards
from tests.helpers import assert_user_error

LABELS = ["A", "B", "C"]
KINDS = 6  # distinct source images; every row's file is a hard link to one of them


def make_linked(root: Path, n: int, size: int = 384) -> Path:
    """n training rows whose images are hard links to KINDS noise PNGs (slow enough to encode to kill mid-way)."""
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True)
    for k in range(KINDS):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(src / f"k{k}.png")
    rows = []
    for i in range(n):
        name = f"p{i % 13}/img_{i:05d}.png"
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / f"k{i % KINDS}.png", root / "train" / name)
        rows.append([name, *rng.integers(0, 2, len(LABELS))])
    pd.DataFrame(rows, columns=["Image_name", *LABELS]).to_csv(root / "train.csv", index=False)
    return root


def _cmd(root: Path, out: Path, per_shard: int) -> list[str]:
    return [sys.executable, "-m", "cxr_fast.cli.shard", "--train_csv", str(root / "train.csv"), "--train_dir",
            str(root / "train"), "--out", str(out), "--resize", "256", "--samples_per_shard", str(per_shard),
            "--workers", "1", "--no-progress"]


def _build(root: Path, out: Path, per_shard: int, logs: list | None = None) -> dict:
    return write_shards(root / "train.csv", root / "train", out, resize=256, samples_per_shard=per_shard, workers=1,
                        progress=False, log=(logs.append if logs is not None else None))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None, f"cxr-shard finished before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    root = make_linked(tmp_path_factory.mktemp("linked"), 480)
    fresh = root / "fresh"
    _build(root, fresh, per_shard=9)
    return root, fresh


def test_kill_mid_encode_resumes_and_matches_fresh_build(linked, tmp_path):
    root, fresh = linked
    out = tmp_path / "out"
    work = fmt.work_dir(out)
    proc = subprocess.Popen(_cmd(root, out, 9), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # 480 rows, 1 worker: chunks of 60 images; kill once 3 of the 8 are journaled (mid-encode: no tar yet)
    _kill_when(proc, lambda: len(list(work.glob("c*.json"))) >= 3)
    done = len(list(work.glob("c*.json")))
    # nothing in OUT but the lock the killed run held (the kernel released it; the next run takes the file over)
    assert 3 <= done < 8 and (not out.exists() or [p.name for p in out.iterdir()] == [".lock"])
    logs: list[str] = []
    _build(root, out, 9, logs)
    m = re.search(r"incomplete earlier run.*: (\d+) of 480 images already encoded, encoding (\d+) images", logs[0])
    assert m, logs
    assert int(m.group(1)) == 60 * done and int(m.group(2)) == 480 - 60 * done  # only what was missing
    assert "encoded " + m.group(2) + " images, reused " + m.group(1) in logs[-1]
    assert _files(out) == _files(fresh)  # tars, idx, samples.csv, folds.csv, manifest.json: the same bytes
    assert not work.exists()


def test_kill_mid_write_keeps_finished_tars(linked, tmp_path):
    root, fresh = linked
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(root, out, 9), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when(proc, lambda: out.is_dir() and len(list(out.glob("fold*.idx"))) >= 20)
    assert not (out / fmt.MANIFEST).exists()
    logs: list[str] = []
    _build(root, out, 9, logs)
    assert "incomplete earlier run" in logs[0] and "480 of 480 images already encoded, encoding 0 images" in logs[0]
    kept = next(line for line in logs if line.startswith("reused "))
    assert int(kept.split()[1]) >= 19, kept  # the tars finished before the kill (the last may lack its journal)
    assert _files(out) == _files(fresh)
    assert verify_shards(out, workers=1)[0] == []


def test_rerun_after_fixing_a_late_bad_image_encodes_only_its_chunk(linked, tmp_path, capsys):
    root, fresh = linked
    bad = root / "train" / "p0/img_00455.png"  # row 455 of 480: found late
    good = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(good[:200])  # truncated: the decoder fails
    out = tmp_path / "out"
    try:
        from cxr_fast.cli.shard import main

        assert_user_error(lambda: main(_cmd(root, out, 9)[3:]), "1 of 480 images", "p0/img_00455.png (row 455)")
        assert not out.exists()  # nothing in OUT: the encoded images wait in the work folder beside it
    finally:
        bad.unlink()
        bad.write_bytes(good)
    logs: list[str] = []
    _build(root, out, 9, logs)
    assert "420 of 480 images already encoded, encoding 60 images" in logs[0], logs  # the bad image's chunk only
    assert _files(out) == _files(fresh)


def test_changed_arguments_do_not_reuse_tars(linked, tmp_path):
    """A work folder of other arguments (here --samples_per_shard) keeps its encoded images but not its tars."""
    root, _ = linked
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(root, out, 9), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when(proc, lambda: out.is_dir() and len(list(out.glob("fold*.idx"))) >= 5)
    logs: list[str] = []
    man = _build(root, out, 11, logs)
    assert not any(line.startswith("reused ") for line in logs)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["tar"] for s in man["shards"])
    assert verify_shards(out, workers=1)[0] == []
