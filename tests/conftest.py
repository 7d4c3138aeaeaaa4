"""Shared fixtures: a small synthetic dataset (cxr-synth), its shards and one finished run, each made once per test
session (once for all pytest-xdist workers together), the cores shared between workers, and CUDA/DALI guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cxr_fast.synth.write import generate
from tests.helpers import FAST, made_once, train_pil  # noqa: F401 - FAST for tests that still import it here

TINY = {"n_train": 48, "n_test": 10, "size": 96, "seed": 0}

# pytest-xdist workers share the cores: torch's intra-op threads per worker (and OMP_NUM_THREADS for the processes
# the tests start) are the cores divided by the workers, not every core in every worker
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
    _PER_WORKER = max(1, _CORES // _WORKERS)
    torch.set_num_threads(_PER_WORKER)
    os.environ.setdefault("OMP_NUM_THREADS", str(_PER_WORKER))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 training + 10 test synthetic radiographs at 96 px (PNG) with the 14 CheXpert labels."""
    return made_once(tmp_path_factory, "synth",
                     lambda d: generate(d / "data", workers=1, progress=False, **TINY)) / "data"


@pytest.fixture(scope="session")
def long_epoch_data(tmp_path_factory) -> Path:
    """240 training images at 64 px: epochs long enough (~30 steps at batch 4) to kill a run inside one."""
    return made_once(tmp_path_factory, "synth_long", lambda d: generate(d / "data", n_train=240, n_test=10, size=64,
                                                                       seed=1, workers=1, progress=False)) / "data"


@pytest.fixture(scope="session")
def long_epoch_shards(long_epoch_data, tmp_path_factory) -> Path:
    from cxr_fast.shards.writer import write_shards

    def make(d: Path) -> None:
        write_shards(long_epoch_data / "train.csv", long_epoch_data / "train", d / "synth",
                     test_dir=long_epoch_data / "test", folds=2, seed=42, samples_per_shard=40, workers=1,
                     progress=False, log=None)

    return made_once(tmp_path_factory, "shards_long", make) / "synth"


@pytest.fixture(scope="session")
def synth_shards(synth_data, tmp_path_factory) -> Path:
    """The synthetic dataset sharded into 2 folds (JPEG) with a test split."""
    from cxr_fast.shards.writer import write_shards

    def make(d: Path) -> None:
        write_shards(synth_data / "train.csv", synth_data / "train", d / "synth", test_dir=synth_data / "test",
                     folds=2, seed=42, samples_per_shard=10, workers=1, progress=False, log=None)

    return made_once(tmp_path_factory, "shards", make) / "synth"


@pytest.fixture(scope="session")
def pil_run(synth_data, tmp_path_factory) -> tuple[Path, Path]:
    """One finished 2-fold x 2-epoch PIL run: (data folder, out_dir)."""
    def make(out: Path) -> None:
        assert train_pil(synth_data, out, "--epochs", "2", "--lr", "1e-3", "--ema_decay", "0.9") == 0

    return synth_data, made_once(tmp_path_factory, "pil_run", make)


@pytest.fixture(params=["pil", "dali"])
def pipeline(request) -> str:
    """Each input pipeline, for a command tested through both; the DALI case skips where DALI is not installed."""
    if request.param == "dali":
        pytest.importorskip("nvidia.dali")
    return request.param


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
