"""The training engine: normalisation on the device, AMP, optimiser and schedule, one training epoch, evaluation.

Pipeline-agnostic: a loader yields `(images uint8 (B,1,H,W), labels float32 (B,C) NaN=unknown, index int64 (B,))`
already on the device (see `cxr_fast.pipelines`). No file I/O here.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from cxr_fast.model import unwrap
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.normalize import normalize
from cxr_fast.progress import loader_bar
from cxr_fast.train.amp import Amp


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite training steps: the run cannot continue as configured."""


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


def _prox_threshold(optimizer: torch.optim.Optimizer, A: torch.Tensor, l1: float) -> float | torch.Tensor:
    """Threshold of the proximal step for l1 * sum|A| after an AdamW step on A.

    With plain SGD it is lr * l1. Adam moves every entry by about lr per step whatever its gradient's size, so a
    threshold of lr * l1 (1000x smaller than the move for l1 = 1e-3) could never zero an entry: A would be small, not
    sparse (seed NOTES item 8). Preconditioning the prox like the gradient step, t = lr * l1 / (sqrt(v_hat) + eps)
    per entry, makes it the L1 penalty's own step: an entry stays at 0 unless its loss gradient outweighs l1.
    """
    for group in optimizer.param_groups:
        if any(p is A for p in group["params"]):
            lr = group["lr"]
            state = optimizer.state.get(A, {})
            if "exp_avg_sq" not in state:
                return lr * l1
            # tensor arithmetic throughout: `step` lives on the GPU for the fused optimiser, float() would sync
            bias2 = 1.0 - torch.pow(group["betas"][1], torch.as_tensor(state["step"], dtype=torch.float32,
                                                                       device=A.device))
            return (lr * l1) / (state["exp_avg_sq"].sqrt() / bias2.sqrt() + group["eps"])
    return 0.0


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
                    progress: bool = True, desc: str = "") -> dict:
    """One pass over `loader`. Returns loss (mean over good steps), lr (last), images, seconds, img_per_s,
    data_wait_s, skipped_steps, overflow_steps, step (global step after the epoch), refiner_sparsity, refiner_l1
    (None without a refiner).

    A step with a non-finite loss (or, without a grad scaler, non-finite gradients) is skipped: no optimiser, prox
    or EMA update. More than `max_bad_steps` such steps in a row raise TrainingDiverged. Under fp16 a gradient overflow
    with a finite loss is the GradScaler's business (it skips the step and lowers its scale): counted in
    overflow_steps, not as a bad step. The LR schedule and the global step advance on every iteration, so the LR
    is a function of the iteration alone (identical on every DDP rank, cosine still ending at 0).
    """
    model.train()
    bare = unwrap(model)
    refiner = getattr(bare, "refiner", None)
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = amp.scaler
    max_norm = clip_grad if clip_grad and clip_grad > 0 else math.inf
    device = next(bare.parameters()).device

    loss_sum, good, skipped, overflow, bad_run, images = 0.0, 0, 0, 0, 0, 0
    wait = [0.0]
    optimizer.zero_grad(set_to_none=True)
    bar = loader_bar(loader, progress, desc)
    _sync(device)
    t_start = time.perf_counter()
    for i, batch in enumerate(_batches(loader, wait)):
        x_u8, labels = batch[0], batch[1]
        x = normalize(x_u8, in_chans)
        with amp.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        checks = [loss.detach().float(), grad_norm.detach().float()]
        if scaler.is_enabled():  # the scaler's own inf/NaN check of the unscaled gradients
            checks += [f.float() for f in scaler._found_inf_per_device(optimizer).values()]
        # note: the step's one CPU-GPU sync point; backward and clipping are already queued, so the GPU stays busy
        vals = torch.stack([c.reshape(()).to(loss.device) for c in checks]).tolist()
        loss_val, norm_val, found_inf = vals[0], vals[1], sum(vals[2:])
        bad = not math.isfinite(loss_val) or (not scaler.is_enabled() and not math.isfinite(norm_val))
        if bad:
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.update()  # unscale_ recorded an inf check; update() consumes it (and backs the scale off)
            skipped += 1
            bad_run += 1
            if bad_run > max_bad_steps:
                bar.close()
                raise TrainingDiverged(
                    f"{bad_run} consecutive training steps had a non-finite loss or gradients (last loss {loss_val}); "
                    "the run has diverged: try --no_amp, a lower --lr, or check the input labels")
        else:
            bad_run = 0
            scaler.step(optimizer)  # skips the update itself if found_inf
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if found_inf:
                overflow += 1
            else:
                if refiner is not None and refiner_l1 > 0:
                    refiner.prox_(_prox_threshold(optimizer, refiner.A, refiner_l1))
                if ema is not None:
                    ema.update(model, step)
                    if refiner is not None:
                        # The averaged A keeps the live A's support: an average over a moving sparsity pattern is
                        # dense (tiny leftovers everywhere), and the checkpoint stores the EMA's A.
                        unwrap(ema.module).refiner.A.data.mul_(refiner.A.data != 0)
            loss_sum += loss_val
            good += 1
        if bad:  # the schedule advances on a skipped step too; torch warns if no optimiser step happened yet
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()
        else:
            scheduler.step()
        step += 1
        images += x_u8.shape[0]
        bar.update(1)
        if progress and (i % 10 == 0):
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(loss=f"{loss_sum / max(good, 1):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{images / max(elapsed, 1e-9):.0f}", refresh=False)
    _sync(device)
    seconds = time.perf_counter() - t_start
    bar.close()
    return {
        "loss": loss_sum / good if good else float("nan"),
        "lr": optimizer.param_groups[0]["lr"],
        "images": images,
        "seconds": seconds,
        "img_per_s": images / seconds if seconds > 0 else 0.0,
        "data_wait_s": wait[0],
        "skipped_steps": skipped,
        "overflow_steps": overflow,
        "step": step,
        "refiner_sparsity": refiner.sparsity() if refiner is not None else None,
        "refiner_l1": refiner.l1() if refiner is not None else None,
    }
