"""The one loader contract every pipeline honours, so the engine never knows which one fed it.

A loader (`Loader`) is an iterable with a known length whose batches are `Batch`es:

    images: torch.uint8   (B, 1, H, W)  on the training device (normalisation happens in the engine)
    labels: torch.float32 (B, C)        on the device, NaN = unknown
    index:  torch.int64   (B,)          on the device: the sample's identity (its row in the training CSV, or its
                                        position in the sorted test list), used to put predictions back in order
                                        and to drop DDP padding duplicates

and exposes `len(loader)` (batches per epoch), `loader.num_samples` and `loader.set_epoch(epoch)`. What a loader
reads is a `SampleSet`: image files or (tar, idx) shard pairs, plus each sample's index and labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (B, 1, H, W)
    labels: torch.Tensor  # float32 (B, C), NaN = unknown
    index: torch.Tensor   # int64 (B,)


@runtime_checkable
class Loader(Protocol):
    num_samples: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


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
