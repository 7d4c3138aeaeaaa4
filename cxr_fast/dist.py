"""The few DDP helpers: rank, world, process-group set-up, gathering eval outputs, rank-0-only work.

Launch with `torchrun`; it sets RANK / WORLD_SIZE / LOCAL_RANK. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import inspect
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from cxr_fast.errors import UserError, first_line, one_line

T = TypeVar("T")
LONG_WAIT_S = 24 * 3600  # the longest rank 0's own work (packing a MIMIC-size dataset) may keep the others waiting
_WAIT_GROUP = None


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_kind: str, timeout_s: int | None = None) -> torch.device | None:
    """Initialise the process group when launched by torchrun. Returns this rank's device, or None if not distributed.

    CUDA: `set_device(LOCAL_RANK)` before anything touches CUDA, NCCL bound to that device (`device_id`, eager
    communicator set-up). Besides the main group, a gloo group with a long timeout serves `wait_for_main`: a rank
    waiting there for rank 0's long work (packing shards) waits as long as that takes, which an NCCL collective does
    not (its communicator set-up gives up after the store timeout). The main group's timeout is `timeout_s`
    (default 30 min, or CXR_FAST_DIST_TIMEOUT_S).
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return None
    global _WAIT_GROUP
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_kind == "cuda"
    timeout = datetime.timedelta(seconds=timeout_s or int(os.environ.get("CXR_FAST_DIST_TIMEOUT_S", "1800")))
    kwargs = {}
    if use_cuda:
        torch.cuda.set_device(local_rank)
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout, **kwargs)
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=LONG_WAIT_S))
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def wait_for_main() -> None:
    """Every rank waits here, on the long-timeout gloo group, until rank 0 (doing long work such as packing shards)
    arrives. A plain `barrier()` on the main group would time out after its (short) timeout."""
    if world() > 1:
        dist.barrier(group=_WAIT_GROUP)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank: one all-reduce MAX of a CPU tensor on the gloo group of
    `wait_for_main` (no GPU sync, whatever the main backend; 1.7 ms between 2 local processes on a loaded 2-vCPU
    machine)."""
    if world() <= 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_WAIT_GROUP)
    return bool(t.item())


def run_on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only, its (picklable) result broadcast to every rank: work that gives every rank the same
    answer (decoding a test folder to find bad images) is done once, not once per process. Broadcast on the
    long-timeout gloo group of `wait_for_main`, since the work may take minutes. A UserError on rank 0 is raised on
    every rank with the same line; any other exception on rank 0 ends the others with a line naming it."""
    if world() <= 1:
        return fn()
    box: list = [None]
    failure = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except UserError as e:
            box[0] = ("user", one_line(e))
        except BaseException as e:  # noqa: BLE001 - re-raised below; the others must not wait for a result
            box[0], failure = ("crash", f"rank 0 failed: {first_line(e, with_type=True)}"), e
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "ok":
        return value
    if kind == "user":
        raise UserError(value)
    raise RuntimeError(value)


def log(msg: str) -> None:
    """Print on rank 0 only (flushed: logs of several processes interleave by line)."""
    if is_main():
        print(msg, flush=True)


def average_buffers(module: torch.nn.Module) -> None:
    """Make every rank's floating buffers (BatchNorm running mean/var) the mean over ranks, as timm's
    `distribute_bn(reduce=True)`: DDP syncs parameters, not buffers, so without this each rank would validate and
    save its own statistics. Integer buffers (num_batches_tracked) advance alike on every rank."""
    if world() <= 1:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(world())


def finish() -> None:
    """End of a successful run: every rank waits here until rank 0 has written its outputs.

    It is also what keeps the exit clean. DDP keeps the gloo process group (and its worker threads) alive past
    `destroy_process_group`; a worker that is still releasing the tensors of the last `all_gather_object` needs the
    GIL, and if the interpreter is already finalising, that thread aborts the process ("terminate called without an
    active exception", SIGABRT). While a rank waits in this barrier the GIL is free, so that release completes first;
    the barrier's own tensor is created in C++ and needs no GIL. It waits on the long-timeout gloo group: rank 0's
    test predictions and report may take longer than the main group's timeout.
    """
    wait_for_main()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """All ranks meet here (within the process group's timeout; for a long wait on rank 0 use `wait_for_main`)."""
    if world() > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` without a process group."""
    if world() <= 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def gather_predictions(*arrays: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gather per-rank (probs, labels, ...) and index from every rank, drop the duplicates that distributed samplers
    pad with, and return them sorted by index - the same count and order as a single-process run."""
    if world() > 1:
        parts = gather_objects((index, *arrays))
        index = np.concatenate([p[0] for p in parts])
        arrays = tuple(np.concatenate([p[i + 1] for p in parts]) for i in range(len(arrays)))
    _, first = np.unique(index, return_index=True)  # sorted unique indices, first occurrence of each
    return (index[first], *(a[first] for a in arrays))


SHARED_TOKEN = ".cxr-shared-check"


def check_shared(path: str | Path, what: str) -> None:
    """Several nodes: every node's local rank 0 confirms it sees what global rank 0 wrote under `path`; else one
    line naming the path and the node, on every rank (not a missing-file traceback later). Only global rank 0 writes
    shards and outputs, so `--shards_root` and `--out_dir` must be storage every node mounts."""
    if world() <= 1:
        return
    token_file = Path(path) / SHARED_TOKEN
    box = [uuid.uuid4().hex if is_main() else None]
    if is_main():
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(box[0])
    dist.broadcast_object_list(box, src=0)
    problem = None
    if not is_main() and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            seen = token_file.read_text() == box[0]
        except OSError:
            seen = False
        if not seen:
            problem = (f"{Path(path).absolute()} ({what}) is not shared between the nodes: node "
                       f"{socket.gethostname()} (node rank {os.environ.get('GROUP_RANK', '?')}) does not see what rank "
                       f"0 wrote there; give {what} a path on storage every node mounts")
    problems = gather_objects(problem)
    if is_main():
        token_file.unlink(missing_ok=True)
    found = [p for p in problems if p]
    if found:
        raise UserError(found[0])
