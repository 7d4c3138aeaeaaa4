"""Clocks: loader-only epochs and training epochs, warmed up, interleaved round-robin, median of repeats.

Loader rows: each repeat is one epoch of the loader; its rate is taken in steady state, from the arrival of batch
`skip` - 1 to the last batch (`skip` >= the worker count and DALI's prefetch depth), so neither the batches a
pipeline prefetched while another row was being timed nor the workers' simultaneous first batches count.
Between rows the benchmark sleeps `settle` seconds, so one row's background prefetch does not steal the next
row's CPU. Training rows call `cxr_fast.train.engine.train_one_epoch` itself over one epoch; `Clocked` notes when each
batch was asked for and handed over, so the same steady-state window (and the data wait inside it) is taken
there too, beside train_one_epoch's own whole-epoch figures (which include the pipeline's start-up).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def touch(batch) -> int:
    """Use a batch as a trainer would before its step: read (a strided sample of) every tensor; returns batch size.

    On the GPU this only queues work; the caller synchronises before reading a clock.
    """
    images = batch[0]
    if isinstance(images, torch.Tensor):
        images[..., ::16, ::16].sum()
        for t in batch[1:]:
            t.sum()
        return int(images.shape[0])
    return len(images)  # a DALI TensorList (decode-ceiling): decoded in host memory already


def time_epoch(loader, skip: int, device: torch.device) -> dict:
    """One epoch of `loader`: steady-state images/s after the first `skip` batches, and what it delivered."""
    delivered, timed, n_batches = 0, 0, 0
    start = time.perf_counter()
    t0 = start
    for i, batch in enumerate(loader):
        b = touch(batch)
        delivered += b
        n_batches += 1
        if i == skip - 1:
            sync(device)
            t0 = time.perf_counter()
        elif i >= skip:
            timed += b
    sync(device)
    t1 = time.perf_counter()
    if n_batches <= skip:  # too short an epoch for a steady state: fall back to the whole epoch
        timed, t0 = delivered, start
    return {"img_per_s": timed / max(t1 - t0, 1e-9), "timed_images": timed, "seconds": t1 - t0,
            "epoch_seconds": t1 - start, "delivered": delivered, "batches": n_batches}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


class Clocked:
    """A loader wrapper that records, per batch, when it was asked for and when it was handed over."""

    def __init__(self, loader):
        self.loader, self.num_samples = loader, loader.num_samples
        self.asked, self.got, self.sizes = [], [], []

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        self.asked, self.got, self.sizes = [], [], []
        it = iter(self.loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.asked.append(t)
            self.got.append(time.perf_counter())
            self.sizes.append(int(batch[0].shape[0]))
            yield batch


def time_train_epoch(loader, step: Callable, skip: int) -> dict:
    """One training epoch via step(loader) (train_one_epoch, which synchronises at its end), whole and steady.

    Steady window: from the hand-over of batch skip - 1 (its step is the first one inside) to the end.
    """
    clocked = Clocked(loader)
    stats = step(clocked)
    t_end = time.perf_counter()
    got, asked, n = clocked.got, clocked.asked, len(clocked.got)
    k = skip - 1 if n > skip else 0  # too short an epoch for a steady state: the whole epoch
    window = t_end - (got[k] if n > skip else asked[0])
    waits = [got[i] - asked[i] for i in range(k + 1 if n > skip else 0, n)]
    images = sum(clocked.sizes[k:])
    return {"img_per_s": images / max(window, 1e-9), "data_wait_s": sum(waits), "seconds": window,
            "timed_images": images, "epoch_img_per_s": stats["img_per_s"], "epoch_seconds": stats["seconds"],
            "epoch_data_wait_s": stats["data_wait_s"], "delivered": stats["images"], "batches": n,
            "loss": stats["loss"]}


def round_robin(builders: dict[str, Callable[[], object]], repeats: int, measure: Callable, settle: float,
                log=print, warmup: Callable | None = None) -> dict[str, dict]:
    """Build every row, run one untimed warm-up each, then `repeats` rounds over the rows (order rotated per round).

    measure(name, loader) -> dict of one timed run; warmup(name, loader) (default: measure).
    Returns {name: {"build_s", "warmup_s", "runs": [...]}}.
    """
    warmup = warmup or measure
    loaders, out = {}, {}
    for name, build in builders.items():
        t = time.perf_counter()
        loaders[name] = build()
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        warmup(name, loaders[name])  # worker start-up, DALI buffers, first-call allocations
        out[name] = {"build_s": build_s, "warmup_s": time.perf_counter() - t, "runs": []}
        log(f"  {name}: built in {build_s:.1f} s, warm-up epoch {out[name]['warmup_s']:.1f} s")
    names = list(builders)
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            time.sleep(settle)
            res = measure(name, loaders[name])
            out[name]["runs"].append(res)
            log(f"  repeat {r + 1}/{repeats} {name}: {res['img_per_s']:.1f} img/s")
    del loaders
    gc.collect()  # DataLoader workers and DALI threads go away before the next stage
    return out


def loader_rows(builders: dict, repeats: int, skip: int, device: torch.device, settle: float, log=print) -> dict:
    raw = round_robin(builders, repeats, lambda name, loader: time_epoch(loader, skip, device), settle, log)
    rows = {}
    for name, r in raw.items():
        runs = r["runs"]
        rows[name] = {"img_per_s": summary([x["img_per_s"] for x in runs]),
                      "delivered_per_epoch": [x["delivered"] for x in runs],
                      "batches_per_epoch": [x["batches"] for x in runs],
                      "timed_images": [x["timed_images"] for x in runs],
                      "epoch_seconds": [x["epoch_seconds"] for x in runs],
                      "build_s": r["build_s"], "warmup_s": r["warmup_s"]}
    return rows


def train_rows(builders: dict, repeats: int, step: Callable, skip: int, device: torch.device, settle: float,
               log=print) -> dict:
    """step(loader) -> train_one_epoch's stats. Steady-state img/s and data-wait share, plus whole-epoch figures.

    Warm-up per row is one loader-only epoch (the model is warmed up once by the caller)."""
    raw = round_robin(builders, repeats, lambda name, loader: time_train_epoch(loader, step, skip), settle, log,
                      warmup=lambda name, loader: time_epoch(loader, skip, device))
    rows = {}
    for name, r in raw.items():
        runs = r["runs"]
        rows[name] = {"img_per_s": summary([x["img_per_s"] for x in runs]),
                      "data_wait_frac": summary([x["data_wait_s"] / max(x["seconds"], 1e-9) for x in runs]),
                      "epoch_img_per_s": summary([x["epoch_img_per_s"] for x in runs]),
                      "epoch_data_wait_frac": summary([x["epoch_data_wait_s"] / max(x["epoch_seconds"], 1e-9)
                                                       for x in runs]),
                      "runs": runs, "delivered_per_epoch": [x["delivered"] for x in runs],
                      "build_s": r["build_s"], "warmup_s": r["warmup_s"]}
    return rows
