"""cxr-shard against faults a cluster job meets: a second run on the same OUT, a disk too small from the start, a
disk that fills up mid-build (a real 2 MB tmpfs), and the rerun that completes once there is room."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.cli.shard import main
from cxr_fast.lock import folder_lock
from cxr_fast.shards import format as fmt
from cxr_fast.shards import space, writer
from cxr_fast.shards.encode import EncodeOptions
from cxr_fast.shards.verify import verify_shards
from tests.helpers import assert_user_error
from tests.shards.tmpfs import resize_tmpfs, small_tmpfs

LABELS = ["A", "B"]


def noisy_data(root: Path, n: int, size: int = 128) -> Path:
    """n incompressible (noise) PNGs with a 2-label CSV: each stores ~size^2 bytes as PNG."""
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "train" / f"{i:03d}.png")
    pd.DataFrame({"Image_name": [f"{i:03d}.png" for i in range(n)], "A": np.arange(n) % 2,
                  "B": np.arange(n) // 2 % 2}).to_csv(root / "train.csv", index=False)
    return root


def argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--train_csv", str(root / "train.csv"), "--train_dir", str(root / "train"), "--out", str(out),
            "--folds", "2", "--format", "png", "--resize", "0", "--samples_per_shard", "4", "--workers", "1",
            "--no-progress", *extra]


def test_second_run_on_a_locked_out_is_refused(tmp_path, capsys):
    root = noisy_data(tmp_path / "d", 4, 16)
    out = tmp_path / "out"
    with folder_lock(out, what="cxr-shard"):
        err = assert_user_error(lambda: main(argv(root, out)))
        assert f"{out} is in use by another cxr-shard run" in err and "pid " in err
        assert [p.name for p in out.iterdir()] == [".lock"] and not fmt.work_dir(out).exists()
    assert main(argv(root, out)) == 0 and not (out / ".lock").exists()


def test_clearly_too_little_space_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    root = noisy_data(tmp_path / "d", 8, 64)
    monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
    err = assert_user_error(lambda: main(argv(root, tmp_path / "out")))
    assert "not enough free space" in err and "1.0 KB free" in err and "8 images (estimated from 8 of them" in err and "needs ~" in err
    assert not (tmp_path / "out").exists() and not fmt.work_dir(tmp_path / "out").exists()


def test_estimate_is_close_to_what_a_build_writes(tmp_path):
    root = noisy_data(tmp_path / "d", 24, 64)
    paths = sorted(str(p) for p in (root / "train").iterdir())
    opts = EncodeOptions(0, "png", 95, None, 10**8)
    est = space.build_bytes(paths, opts, 4)
    assert main(argv(root, tmp_path / "out")) == 0
    tars = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.tar"))
    spool = sum(Path(p).stat().st_size for p in paths)  # noise PNG -> PNG: the spool holds ~the sources' bytes
    assert 0.7 < est / (tars + spool) < 1.3, (est, tars, spool)


def _no_half_files(out: Path) -> None:
    """After a failed build: no temp file, no manifest, and every tar under its final name is whole."""
    wd = fmt.work_dir(out)
    assert wd.is_dir() and not list(wd.rglob("*.tmp"))  # the spool stays: the rerun resumes from it
    if not out.exists():
        return  # it ran out before the tars: OUT, created by this run, is removed again
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")] and not (out / fmt.MANIFEST).exists()
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as t:
            assert len(t.getmembers()) % 4 == 0 and t.getmembers()


@pytest.mark.parametrize("n, workers, tars_before", [(26, "1", True), (70, "2", False)],
                         ids=["tars-fill-it", "spool-fills-it-in-a-worker"])
def test_disk_filling_up_mid_build_is_one_line_and_a_rerun_completes(tmp_path, capsys, monkeypatch, n, workers,
                                                                     tars_before):
    root = noisy_data(tmp_path / "d", n)  # 128 px noise: ~16.5 KB a sample, spool + tars ~ 2 x n x 16.5 KB
    fresh = tmp_path / "fresh"
    assert main(argv(root, fresh)) == 0
    capsys.readouterr()
    monkeypatch.setattr(writer, "check_space", lambda *a, **k: None)  # get past the early check: fill up for real
    with small_tmpfs(tmp_path / "small", "1m") as disk:
        out = disk / "out"
        err = assert_user_error(lambda: main(argv(root, out, "--workers", workers)))
        assert "no space left on the device" in err and str(out) in err and "free there now" in err, err
        assert "rerun the same command" in err
        _no_half_files(out)
        assert (out.exists() and bool(list(out.glob("*.tar")))) == tars_before  # where: writing tars, or the spool
        resize_tmpfs(disk, "8m")
        assert main(argv(root, out, "--workers", workers)) == 0
        assert verify_shards(out, workers=1, progress=False)[0] == []
        got = {p.name: p.read_bytes() for p in out.iterdir() if p.name != fmt.MANIFEST}
        want = {p.name: p.read_bytes() for p in fresh.iterdir() if p.name != fmt.MANIFEST}
        assert got == want and not fmt.work_dir(out).exists()
