"""The few DDP helpers: rank, world, process-group set-up, gathering eval outputs, rank-0-only work.

Launch with `torchrun`; it sets RANK / WORLD_SIZE / LOCAL_RANK. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_kind: str, timeout_s: int = 1800) -> torch.device | None:
    """Initialise the process group when launched by torchrun. Returns this rank's device, or None if not distributed."""
    if not launched_by_torchrun() or dist.is_initialized():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_kind == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def finish() -> None:
    """End of a successful run: every rank waits here until rank 0 has written its outputs.

    It is also what keeps the exit clean. DDP keeps the gloo process group (and its worker threads) alive past
    `destroy_process_group`; a worker that is still releasing the tensors of the last `all_gather_object` needs the
    GIL, and if the interpreter is already finalising, that thread aborts the process ("terminate called without an
    active exception", SIGABRT). While a rank waits in this barrier the GIL is free, so that release completes first;
    the barrier's own tensor is created in C++ and needs no GIL.
    """
    barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(timeout_s: float | None = None) -> None:
    """All ranks meet here; `timeout_s` overrides the process group's timeout (for a long wait on rank 0's work)."""
    if world() > 1:
        dist.barrier(timeout=None if timeout_s is None else datetime.timedelta(seconds=timeout_s))


def gather_predictions(*arrays: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gather per-rank (probs, labels, ...) and index from every rank, drop the duplicates that distributed samplers
    pad with, and return them sorted by index - the same count and order as a single-process run."""
    if world() > 1:
        parts = [None] * world()
        dist.all_gather_object(parts, (index, *arrays))
        index = np.concatenate([p[0] for p in parts])
        arrays = tuple(np.concatenate([p[i + 1] for p in parts]) for i in range(len(arrays)))
    _, first = np.unique(index, return_index=True)  # sorted unique indices, first occurrence of each
    return (index[first], *(a[first] for a in arrays))
