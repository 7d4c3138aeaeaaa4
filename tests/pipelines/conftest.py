"""Fixtures of the pipeline tests: the self-checking synthetic shards and the real-radiograph shards (dali_data)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_fast.data.samples import SampleSet

from .dali_data import make_real, make_synth


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> SampleSet:
    return make_synth(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[SampleSet, list[np.ndarray]]:
    return make_real(tmp_path_factory.mktemp("real"))
