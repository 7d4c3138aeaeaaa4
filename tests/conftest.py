"""Shared fixtures: a small synthetic dataset (cxr-synth) made once per session, and CUDA/DALI guards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_fast.data.synth import generate

TINY = dict(n_train=48, n_test=10, size=96, seed=0)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 training + 10 test synthetic radiographs at 96 px (PNG) with the 14 CheXpert labels."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, workers=1, progress=False, **TINY)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_data, tmp_path_factory) -> Path:
    """The synthetic dataset sharded into 2 folds (JPEG) with a test split."""
    from cxr_fast.data.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "synth"
    write_shards(synth_data / "train.csv", synth_data / "train", out, test_dir=synth_data / "test", folds=2, seed=42,
                 samples_per_shard=10, workers=1, progress=False, log=None)
    return out


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
