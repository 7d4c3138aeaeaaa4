"""Input pipelines. Every pipeline honours one loader contract, so the engine never knows which one fed it.

A loader is an iterable with a known length whose batches are

    images: torch.uint8   (B, 1, H, W)  on the training device (normalisation happens in the engine)
    labels: torch.float32 (B, C)        on the device, NaN = unknown
    index:  torch.int64   (B,)          on the device: the sample's identity (its row in the training CSV, or its
                                        position in the sorted test list), used to put predictions back in order
                                        and to drop DDP padding duplicates

and exposes `len(loader)` (batches per epoch), `loader.num_samples` and `loader.set_epoch(epoch)`.
`build_loader(name, ...)` builds one by pipeline name ("pil" or "dali"); DALI is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SampleSet:
    """What a loader reads: either image files or (tar, idx) shard pairs, plus each sample's index and labels."""

    index: np.ndarray                 # (N,) int64
    labels: np.ndarray                # (N, C) float32, NaN = unknown
    files: list[Path] | None = None   # one path per sample (file-based PIL pipeline)
    shards: list[tuple[Path, Path]] = field(default_factory=list)  # (tar, idx) pairs (shard readers)
    image_hint: tuple[int, int] | None = None  # (max height, max width) of stored images, from the manifest

    def __post_init__(self):
        self.index = np.asarray(self.index, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        assert len(self.index) == len(self.labels)
        assert self.files is None or len(self.files) == len(self.index)

    def __len__(self) -> int:
        return len(self.index)


PIPELINES = ("pil", "dali")


def build_loader(name: str, samples: SampleSet, spec, batch_size: int, device, *, num_workers: int = 4,
                 seed: int = 0, rank: int = 0, world: int = 1, **kwargs):
    """Build the loader for pipeline `name` over `samples` with augmentation `spec` (train or eval)."""
    if name == "pil":
        from cxr_fast.pipelines.pil import build_pil_loader

        return build_pil_loader(samples, spec, batch_size, device, num_workers=num_workers, seed=seed,
                                rank=rank, world=world, **kwargs)
    if name == "dali":
        from cxr_fast.pipelines.dali import build_dali_loader

        return build_dali_loader(samples, spec, batch_size, device, num_workers=num_workers, seed=seed,
                                 rank=rank, world=world, **kwargs)
    raise ValueError(f"unknown pipeline {name!r}; choose from {PIPELINES}")
