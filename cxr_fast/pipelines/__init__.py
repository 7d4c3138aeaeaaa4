"""Input pipelines (`pil.py`, `dali.py`), built by name. Both honour the loader contract of
`cxr_fast.data.samples` (`Batch`, `Loader`); DALI is imported lazily."""

from __future__ import annotations

from cxr_fast.data.samples import Loader, SampleSet

PIPELINES = ("pil", "dali")


def build_loader(name: str, samples: SampleSet, spec, batch_size: int, device, *, num_workers: int = 4,
                 seed: int = 0, rank: int = 0, world: int = 1, **kwargs) -> Loader:
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
