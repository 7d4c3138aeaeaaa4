"""One seed scheme: every random stream of a run is derived from the run's `--seed` and a named stream id, with
numpy's `SeedSequence` (as `cxr_fast.synth` does), so no two streams collide and none depends on another's use.

Fold assignment keeps its own historical use of the seed (`cxr_fast.data.folds`): shard reuse and `--resume`
depend on the same CSV and seed giving the same folds.
"""

from __future__ import annotations

import numpy as np

STREAMS = {
    "shard_shuffle": 1,   # order of samples within each split's tars (cxr-shard)
    "loader_order": 2,    # PIL loader: the epoch's sample order, per (fold, epoch)
    "augment": 3,         # PIL loader: per-sample augmentation, per (fold, epoch, sample index)
    "dali_reader": 4,     # DALI: the tar order each epoch (shared by all ranks, so their parts stay disjoint)
    "dali_augment": 5,    # DALI: the augmentation operators, per rank
    "torch_init": 6,      # torch: model initialisation, per fold (the same on every rank)
    "dropout": 7,         # torch: dropout and other training-time randomness, per (fold, rank)
    "fold_loader": 8,     # the base seed handed to a fold's loaders, which derive their own streams from it
    "loader_base_seed": 9,  # PIL DataLoader: its own generator for the workers' base seeds (not torch's global RNG)
}


def _sequence(seed: int, stream: str, ids: tuple[int, ...]) -> np.random.SeedSequence:
    if stream not in STREAMS:
        raise KeyError(f"unknown RNG stream {stream!r}; known: {', '.join(STREAMS)}")
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, STREAMS[stream], *(int(i) & 0xFFFFFFFF for i in ids)])


def derive(seed: int, stream: str, *ids: int) -> int:
    """A non-negative 31-bit seed (valid for torch, numpy and DALI) for `stream`, keyed by further integer ids."""
    return int(_sequence(seed, stream, ids).generate_state(1)[0] & 0x7FFFFFFF)


def rng(seed: int, stream: str, *ids: int) -> np.random.Generator:
    """A numpy Generator for `stream` keyed by `ids`."""
    return np.random.default_rng(_sequence(seed, stream, ids))
