"""The training engine: optimiser and schedule, one training epoch (its step is `cxr_fast.train.step`).

Pipeline-agnostic: a loader yields `(images uint8 (B,1,H,W), labels float32 (B,C) NaN=unknown, index int64 (B,))`
already on the device (see `cxr_fast.pipelines`). No file I/O here.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from cxr_fast.model import unwrap
from cxr_fast.model.ema import ModelEma
from cxr_fast.progress import loader_bar
from cxr_fast.train.amp import Amp
from cxr_fast.train.speed import model_memory_format
from cxr_fast.train.step import StepTally, TrainingDiverged, TrainStep

__all__ = ["TrainingDiverged", "build_optimizer", "build_scheduler", "train_one_epoch"]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with three groups: decayed weights (ndim >= 2); biases and norm parameters without decay (as timm
    does); the refiner's A without decay (the L1 prox in train_one_epoch is its only penalty). Fused on CUDA."""
    bare = unwrap(model)
    refiner = getattr(bare, "refiner", None)
    coupling = [refiner.A] if refiner is not None else []
    skip = {id(p) for p in coupling}
    decay, no_decay = [], []
    for p in bare.parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
              {"params": coupling, "weight_decay": 0.0, "name": "refiner"}]
    groups = [g for g in groups if g["params"]]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimiser-step LR factor: linear warm-up (step+1)/warmup_steps (so step 0 runs at lr/warmup_steps and
    step warmup_steps-1 at lr), then a cosine from lr at step warmup_steps to 0 at step total_steps."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(loader: Iterable, timer: list[float]):
    """Yield the loader's batches, adding the time spent waiting for each to timer[0]."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timer[0] += time.perf_counter() - t0
        yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, amp: Amp, *, ema: ModelEma | None = None, refiner_l1: float = 1e-3,
                    clip_grad: float | None = 1.0, in_chans: int = 1, max_bad_steps: int = 20, step: int = 0,
                    progress: bool = True, desc: str = "", check_every: int = 20,
                    should_stop: Callable[[], bool] | None = None, tally: torch.Tensor | None = None,
                    on_step: Callable[[int, Callable[[], dict]], None] | None = None) -> dict:
    """One pass over `loader`. Returns loss (mean over good steps), lr (last), images, seconds, img_per_s,
    data_wait_s, skipped_steps, overflow_steps, step (global step after the epoch), refiner_sparsity, refiner_l1
    (None without a refiner), batches, stopped, tally. `should_stop()` after each step may end the epoch there
    (`train.preempt`); `tally`: the step counts of a stopped run's part of this epoch (`StepTally.acc`).
    `on_step(step, scalars_fn)` after every step (`train.logger`); `scalars_fn()` reads its values: a sync, if logged.

    A step with a non-finite loss (or, without a grad scaler, non-finite gradients) is skipped: no optimiser or prox
    update (the EMA is still updated, toward the unmoved model, where the skip is decided on the device). More than
    `max_bad_steps` such steps in a row raise TrainingDiverged: at once with an optimiser that cannot skip on the
    device, else at the next of the checks every `check_every` steps (see
    `cxr_fast.train.step`; the progress bar's loss is refreshed at the same checks). Under fp16 a gradient overflow
    with a finite loss is the GradScaler's business: counted in overflow_steps, not as a bad step. The LR schedule
    and the global step advance on every iteration, so the LR is a function of the iteration alone (identical on
    every DDP rank, cosine still ending at 0). Input batches take the model's memory format (channels_last after
    `cxr_fast.train.speed.use_channels_last`).
    """
    model.train()
    bare = unwrap(model)
    device = next(bare.parameters()).device
    train_step = TrainStep(model, loss_fn, optimizer, amp, ema=ema, refiner_l1=refiner_l1, clip_grad=clip_grad,
                           in_chans=in_chans, memory_format=model_memory_format(bare), max_bad_steps=max_bad_steps,
                           device=device)
    if tally is not None:
        train_step.tally.acc.copy_(tally)
    check_every = max(1, int(check_every))
    stopped, i = False, -1
    images, wait = 0, [0.0]
    optimizer.zero_grad(set_to_none=True)
    bar = loader_bar(loader, progress, desc)
    _sync(device)
    t_start = time.perf_counter()
    try:
        for i, batch in enumerate(_batches(loader, wait)):
            skipped = train_step(batch.images, batch.labels, step)
            _advance(scheduler, skipped)
            step += 1
            if on_step is not None:
                on_step(step, lambda: _step_scalars(train_step, optimizer))
            images += batch.images.shape[0]
            bar.update(1)
            if (i + 1) % check_every == 0:
                train_step.tally.read()  # the device path's periodic sync: divergence check and the bar's loss
                if progress:
                    elapsed = time.perf_counter() - t_start
                    bar.set_postfix(loss=f"{train_step.tally.mean_loss:.4f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{images / max(elapsed, 1e-9):.0f}", refresh=False)
            if should_stop is not None and should_stop():
                stopped = True
                break
        tally = train_step.tally.read()
        _sync(device)
        seconds = time.perf_counter() - t_start
    finally:
        bar.close()
    refiner = train_step.refiner
    return {
        "loss": train_step.tally.mean_loss,
        "lr": optimizer.param_groups[0]["lr"],
        "images": images,
        "seconds": seconds,
        "img_per_s": images / seconds if seconds > 0 else 0.0,
        "data_wait_s": wait[0],
        "skipped_steps": int(tally[StepTally.SKIPPED]),
        "overflow_steps": int(tally[StepTally.OVERFLOW]),
        "step": step,
        "refiner_sparsity": refiner.sparsity() if refiner is not None else None,
        "refiner_l1": refiner.l1() if refiner is not None else None,
        "batches": i + 1,
        "stopped": stopped,
        "tally": train_step.tally.acc.detach().cpu().clone(),
    }


def _step_scalars(train_step: TrainStep, optimizer: torch.optim.Optimizer) -> dict:
    """The last step's loss and gradient norm and the epoch's skipped steps so far, in one device sync."""
    loss, norm, skipped = torch.stack([train_step.last_loss.float(), train_step.last_norm.float(),
                                       train_step.tally.acc[StepTally.SKIPPED].float()]).tolist()
    return {"loss": loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": norm, "skipped_steps": int(skipped)}


def _advance(scheduler, skipped: bool) -> None:
    """scheduler.step(); on a step the host knows was skipped torch would warn that no optimiser step happened yet."""
    if not skipped:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()
