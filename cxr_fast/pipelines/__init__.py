"""Input pipelines, built by name from one registry (`PIPELINES`) that the CLIs read their choices from. Each
honours the loader contract of `cxr_fast.data.samples` (`Batch`, `Loader`); modules are imported lazily (DALI is
optional). A new pipeline is its module and one registry line."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cxr_fast.data.samples import Loader, SampleSet


@dataclass(frozen=True)
class PipelineInfo:
    module: str                      # cxr_fast.pipelines.<name>
    builder: str                     # builder(samples, spec, batch_size, device, *, num_workers, seed, rank, world,
                                     #         **options) -> Loader
    options: tuple[str, ...] = ()    # the pipeline-specific settings its builder takes (others are not passed)
    needs_shards: bool = False       # reads cxr-shard output only (image files must be packed first)
    check: str | None = None         # check(device_type, **options) of the module: stops a run early when it
                                     # cannot work (DALI absent or too old, a decode form this GPU cannot run)


PIPELINES: dict[str, PipelineInfo] = {
    "pil": PipelineInfo("cxr_fast.pipelines.pil", "build_pil_loader"),
    "dali": PipelineInfo("cxr_fast.pipelines.dali", "build_dali_loader", options=("hw_decoder_load", "decode"),
                         needs_shards=True, check="start_check"),
}


def pipeline_info(name: str) -> PipelineInfo:
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")
    return PIPELINES[name]


def check_pipeline(name: str, device_type: str = "cpu", options: dict | None = None) -> None:
    """Run the pipeline's start-up check before shards are built or processes start (DALI: installed, new enough,
    the --dali_decode form runnable on this device); `options` as for `build_loader`."""
    info = pipeline_info(name)
    if info.check:
        own = {k: v for k, v in (options or {}).items() if k in info.options}
        getattr(importlib.import_module(info.module), info.check)(device_type, **own)


def build_loader(name: str, samples: SampleSet, spec, batch_size: int, device, *, num_workers: int = 4,
                 seed: int = 0, rank: int = 0, world: int = 1, options: dict | None = None, **kwargs) -> Loader:
    """The loader of pipeline `name` over `samples` with augmentation `spec` (train or eval). `options`: settings
    of some pipelines (e.g. DALI's hw_decoder_load), each passed only to the pipelines that declare it."""
    info = pipeline_info(name)
    builder = getattr(importlib.import_module(info.module), info.builder)
    own = {k: v for k, v in (options or {}).items() if k in info.options}
    return builder(samples, spec, batch_size, device, num_workers=num_workers, seed=seed, rank=rank, world=world,
                   **own, **kwargs)
