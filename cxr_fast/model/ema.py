"""Exponential moving average of the whole classifier (backbone *and* refiner), in the style of timm's ModelEmaV3.

Two fixes over the original (seed NOTES item 7): the refiner's A is averaged too (it is part of CXRClassifier), and
the decay warms up as min(decay, (1 + step) / (10 + step)) so a short run's EMA tracks the trained weights instead of
staying near the random init. Integer buffers (BatchNorm's num_batches_tracked) are copied, never averaged.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from cxr_fast.model import unwrap


class ModelEma(nn.Module):
    """`.module` is the averaged model: evaluate and checkpoint it. Create it after moving the model to its device
    and before wrapping it in DDP / torch.compile (update() unwraps either way)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = deepcopy(unwrap(model))
        self.module.eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = warmup

    def get_decay(self, step: int | None = None) -> float:
        """The decay used at optimiser step `step` (0-based): 0.1 at step 0, 0.5 at step 8, reaching `decay` at
        step (10 * decay - 1) / (1 - decay) (8990 for 0.999)."""
        if step is None or not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """ema = decay * ema + (1 - decay) * model over float parameters and buffers; other buffers copied."""
        decay = self.get_decay(step)
        ema_f, model_f = [], []
        for ema_v, model_v in zip(self.module.state_dict().values(), unwrap(model).state_dict().values(), strict=True):
            if ema_v.is_floating_point():
                ema_f.append(ema_v)
                model_f.append(model_v.to(dtype=ema_v.dtype))
            else:
                ema_v.copy_(model_v)
        if ema_f:
            torch._foreach_lerp_(ema_f, model_f, 1.0 - decay)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy the model's state into the EMA (e.g. after loading a checkpoint that has no EMA)."""
        self.module.load_state_dict(unwrap(model).state_dict())

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
