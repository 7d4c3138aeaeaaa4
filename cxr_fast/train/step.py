"""One training step without a per-step host sync: forward, backward, clipping, the skip decision for a non-finite
step, the optimiser step, the refiner's L1 prox and the EMA update; and the epoch's step counts kept on the device.

A step is *bad* when its loss is non-finite (or, without a grad scaler, its gradient norm is): it is skipped (no
optimiser or prox update) and counted; more than `max_bad_steps` bad steps in a row raise TrainingDiverged. Under
fp16 a gradient overflow with a finite loss is the GradScaler's business (the step is skipped and the scale
lowered): an *overflow* step, not a bad one. The EMA is updated after a skipped step only on the device path (see
`ModelEma.update`: it cannot be gated without a sync), toward a model that did not move.

Where the optimiser can skip a step on the device (the fused AdamW/Adam/SGD kernels take a `found_inf` flag, as the
GradScaler uses them), the skip is decided on the device and the host reads the counts only every `check_every`
steps: a run of bad steps then aborts at the first check after it passes `max_bad_steps` (the steps in between are
skipped too, so nothing is lost but their time). Other optimisers read the flag every step (the host path: free on
the CPU, one sync per step on a GPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cxr_fast.model import unwrap
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.normalize import normalize
from cxr_fast.train.amp import Amp


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite training steps: the run cannot continue as configured."""


def _prox_threshold(optimizer: torch.optim.Optimizer, A: torch.Tensor, l1: float) -> float | torch.Tensor:
    """Threshold of the proximal step for l1 * sum|A| after an AdamW step on A.

    With plain SGD it is lr * l1. Adam moves every entry by about lr per step whatever its gradient's size, so a
    threshold of lr * l1 (1000x smaller than the move for l1 = 1e-3) could never zero an entry: A would be small, not
    sparse (as in the original project). Preconditioning the prox like the gradient step, t = lr * l1 / (sqrt(v_hat) + eps)
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


class StepTally:
    """The epoch's step counts, accumulated on the device; `read()` brings them to the host (a sync point)."""

    LOSS, GOOD, SKIPPED, OVERFLOW, RUN, WORST, LAST_BAD = range(7)

    def __init__(self, device: torch.device, max_bad_steps: int):
        dtype = torch.float32 if device.type == "mps" else torch.float64  # exact counts, a long sum of losses
        self.acc = torch.zeros(7, dtype=dtype, device=device)
        self.max_bad_steps = max_bad_steps
        self.host = [0.0] * 7

    @torch.no_grad()
    def record(self, loss: torch.Tensor, bad: torch.Tensor, overflow: torch.Tensor) -> None:
        """Add one step: loss (0-dim), bad and overflow (0-dim bool), all on the device; no sync."""
        acc, dt = self.acc, self.acc.dtype
        b, lv = bad.to(dt), loss.to(dt)
        run = (acc[self.RUN] + 1.0) * b  # the current run of bad steps: +1, or back to 0
        new = torch.stack([acc[self.LOSS] + torch.where(bad, 0.0, lv), acc[self.GOOD] + 1.0 - b, acc[self.SKIPPED] + b,
                           acc[self.OVERFLOW] + (overflow & ~bad).to(dt), run, torch.maximum(acc[self.WORST], run),
                           torch.where(bad, lv, acc[self.LAST_BAD])])
        acc.copy_(new)

    def read(self) -> list[float]:
        """The counts on the host; raises TrainingDiverged if a run of bad steps passed max_bad_steps."""
        self.host = vals = self.acc.tolist()  # note: a CPU-GPU sync point
        if vals[self.WORST] > self.max_bad_steps:
            raise TrainingDiverged(
                f"{int(vals[self.WORST])} consecutive training steps had a non-finite loss or gradients (last loss "
                f"{vals[self.LAST_BAD]}); the run has diverged: try --no_amp, a lower --lr, or check the input labels")
        return vals

    @property
    def mean_loss(self) -> float:
        """Mean loss over the good steps as of the last read (NaN before any)."""
        good = self.host[self.GOOD]
        return self.host[self.LOSS] / good if good else math.nan


class TrainStep:
    """The training step for one epoch's loop: `step(images_u8, labels, global_step)`; counts in `.tally`."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, amp: Amp, *,
                 ema: ModelEma | None, refiner_l1: float, clip_grad: float | None, in_chans: int,
                 memory_format: torch.memory_format, max_bad_steps: int, device: torch.device):
        self.model, self.loss_fn, self.optimizer, self.amp, self.ema = model, loss_fn, optimizer, amp, ema
        self.refiner = getattr(unwrap(model), "refiner", None)
        self.refiner_l1, self.in_chans, self.memory_format = refiner_l1, in_chans, memory_format
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = clip_grad if clip_grad and clip_grad > 0 else math.inf
        # fused optimisers take the GradScaler's `found_inf` flag and skip the whole update on the device
        self.on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self.tally = StepTally(device, max_bad_steps)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> bool:
        """One step at global step `step`; True when the host knows it was skipped (host path only)."""
        scaler = self.amp.scaler
        x = normalize(images, self.in_chans, memory_format=self.memory_format)
        with self.amp.autocast():
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        loss = loss.detach()
        self.last_loss, self.last_norm = loss, norm  # device tensors, read only on logged steps (train/logger.py)
        bad = ~torch.isfinite(loss)
        if scaler.is_enabled():  # the scaler's own inf/NaN check of the unscaled gradients
            overflow = sum(scaler._found_inf_per_device(self.optimizer).values()).reshape(()) > 0
        else:
            bad = bad | ~torch.isfinite(norm)
            overflow = torch.zeros((), dtype=torch.bool, device=bad.device)
        skip = bad | overflow
        self.tally.record(loss, bad, overflow)
        if self.on_device:
            self._device_step(skip, step)
            return False
        self.tally.read()  # the host path's sync; raises after too many bad steps in a row
        if skip.item():
            self.optimizer.zero_grad(set_to_none=True)
            scaler.update()  # unscale_ recorded an inf check; update() consumes it (and backs the scale off)
            return True
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._after_update(step, None)
        return False

    def _device_step(self, skip: torch.Tensor, step: int) -> None:
        """The optimiser step with the skip flag handed to the fused kernel, as GradScaler.step does after
        unscale_: a skipped step changes neither the parameters nor the optimiser state (its step count included)."""
        opt = self.optimizer
        opt.grad_scale, opt.found_inf = None, skip.to(torch.float32)
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
        self.amp.scaler.update()  # fp16: consumes unscale_'s inf check, adjusts the scale; otherwise a no-op
        opt.zero_grad(set_to_none=True)
        self._after_update(step, ~skip)

    @torch.no_grad()
    def _after_update(self, step: int, ok: torch.Tensor | None) -> None:
        """The L1 prox on A and the EMA update after an optimiser step. `ok` (device bool, device path) gates the
        prox on the device; the EMA is updated either way (no sync-free way to gate it), toward a model that a
        skipped step left where it was."""
        refiner = self.refiner
        if refiner is not None and self.refiner_l1 > 0:
            kept = None if ok is None else refiner.A.detach().clone()  # C x C: cheap
            refiner.prox_(_prox_threshold(self.optimizer, refiner.A, self.refiner_l1))
            if kept is not None:  # (the threshold is NaN after a skipped first step: discarded with the rest)
                refiner.A.copy_(torch.where(ok, refiner.A, kept))
        if self.ema is not None:
            self.ema.update(self.model, step)  # after a skipped step too (device path): see ModelEma.update
            if refiner is not None:
                # The averaged A keeps the live A's support: an average over a moving sparsity pattern is dense
                # (tiny leftovers everywhere), and the checkpoint stores the EMA's A.
                unwrap(self.ema.module).refiner.A.mul_(refiner.A != 0)
