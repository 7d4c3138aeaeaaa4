"""Shared fixtures: a small synthetic dataset (cxr-synth) made once per session, and CUDA/DALI guards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_fast.synth.write import generate
from tests.helpers import FAST, train_pil  # noqa: F401 - FAST for tests that still import it here

TINY = {"n_train": 48, "n_test": 10, "size": 96, "seed": 0}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 training + 10 test synthetic radiographs at 96 px (PNG) with the 14 CheXpert labels."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, workers=1, progress=False, **TINY)
    return out


@pytest.fixture(scope="session")
def long_epoch_data(tmp_path_factory) -> Path:
    """240 training images at 64 px: epochs long enough (~30 steps at batch 4) to kill a run inside one."""
    out = tmp_path_factory.mktemp("synth_long") / "data"
    generate(out, n_train=240, n_test=10, size=64, seed=1, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def long_epoch_shards(long_epoch_data, tmp_path_factory) -> Path:
    from cxr_fast.shards.writer import write_shards

    out = tmp_path_factory.mktemp("shards_long") / "synth"
    write_shards(long_epoch_data / "train.csv", long_epoch_data / "train", out, test_dir=long_epoch_data / "test",
                 folds=2, seed=42, samples_per_shard=40, workers=1, progress=False, log=None)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_data, tmp_path_factory) -> Path:
    """The synthetic dataset sharded into 2 folds (JPEG) with a test split."""
    from cxr_fast.shards.writer import write_shards

    out = tmp_path_factory.mktemp("shards") / "synth"
    write_shards(synth_data / "train.csv", synth_data / "train", out, test_dir=synth_data / "test", folds=2, seed=42,
                 samples_per_shard=10, workers=1, progress=False, log=None)
    return out


@pytest.fixture(scope="session")
def pil_run(synth_data, tmp_path_factory) -> tuple[Path, Path]:
    """One finished 2-fold x 2-epoch PIL run: (data folder, out_dir)."""
    out = tmp_path_factory.mktemp("pil_run")
    assert train_pil(synth_data, out, "--epochs", "2", "--lr", "1e-3", "--ema_decay", "0.9") == 0
    return synth_data, out


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
