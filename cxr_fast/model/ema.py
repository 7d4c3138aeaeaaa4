"""Exponential moving average of the whole classifier (backbone *and* refiner), in the style of timm's ModelEmaV3.

Two fixes over the original project's EMA: the refiner's A is averaged too (it is part of CXRClassifier), and
the decay warms up as min(decay, (1 + step) / (10 + step)) so a short run's EMA tracks the trained weights instead of
staying near the random init. Integer buffers (BatchNorm's num_batches_tracked) are copied, never averaged.

Per update the host cost is one `_foreach_lerp_` (float parameters and buffers) and one `_foreach_copy_` (the other
buffers): the paired tensors are collected once, on the first update, not rebuilt from two state dicts every step.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from cxr_fast.model import unwrap


class _Pairs:
    """The EMA copy's state tensors paired with the live model's, collected once.

    The live side holds the model's own Parameter / buffer objects, so anything done to them in place (optimiser
    steps, `load_state_dict`, which copies into them, `.data = ...` on a parameter) is seen by later updates.
    Replacing a tensor object (`module.to(...)` re-creates buffers; `load_state_dict(assign=True)`; assigning a new
    Parameter or buffer) is not: the EMA would average a tensor the model no longer uses. `ModelEma.refresh()` drops
    the cache; passing another model object to `update` does so by itself.
    """

    def __init__(self, ema: nn.Module, model: nn.Module):
        ema_sd, model_sd = ema.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        if list(ema_sd) != list(model_sd):
            raise ValueError("ModelEma.update: the model's state dict keys differ from the EMA copy's")
        self.model = model
        self.ema_f, self.model_f, self.ema_i, self.model_i = [], [], [], []
        self.convert = False  # another dtype or device on the live side: cast it per update (slow, unusual)
        for key, e in ema_sd.items():
            m = model_sd[key]
            if e.shape != m.shape:
                raise ValueError(f"ModelEma.update: {key} has shape {tuple(m.shape)}, the EMA copy "
                                 f"{tuple(e.shape)}")
            if e.dtype == m.dtype and e.device == m.device and e.stride() != m.stride():
                e = _restride(ema, key, e, m)  # e.g. channels_last applied after the EMA was made
            # the Parameter objects themselves, not .detach() aliases: those would miss a later `.data = ...`
            if e.is_floating_point():
                self.ema_f.append(e)
                self.model_f.append(m)
                self.convert |= e.dtype != m.dtype or e.device != m.device
            else:
                self.ema_i.append(e)
                self.model_i.append(m)


def _restride(root: nn.Module, key: str, e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Give the EMA copy's tensor `key` the live tensor's memory layout (the fast foreach kernels need matching
    strides), in place of the old one: a Parameter keeps its object (`.data`), a buffer is re-registered."""
    new = torch.empty_like(like).copy_(e)  # empty_like keeps a dense tensor's strides
    owner_name, _, name = key.rpartition(".")
    owner = root.get_submodule(owner_name)
    if name in owner._parameters:
        owner._parameters[name].data = new
        return owner._parameters[name]
    owner._buffers[name] = new
    return new


class ModelEma(nn.Module):
    """`.module` is the averaged model: evaluate and checkpoint it (`.module.state_dict()`).

    Create it after moving the model to its device; before or after channels_last, DDP or `maybe_compile` (update()
    unwraps DDP / compile wrappers, and gives the copy the live model's memory layout on the first update). After
    replacing the live model's tensor objects (not in-place changes: see `_Pairs`), call `refresh()`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = deepcopy(unwrap(model))
        for m in self.module.modules():  # a compiled submodule's forward stays with the live model
            if getattr(m, "_compiled_call_impl", None) is not None:
                m._compiled_call_impl = None
        self.module.eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = warmup
        self._pairs: _Pairs | None = None

    def get_decay(self, step: int | None = None) -> float:
        """The decay used at optimiser step `step` (0-based): 0.1 at step 0, 0.5 at step 8, reaching `decay` at
        step (10 * decay - 1) / (1 - decay) (8990 for 0.999)."""
        if step is None or not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def refresh(self) -> None:
        """Forget the cached tensor pairs; the next update collects them again."""
        self._pairs = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """ema = decay * ema + (1 - decay) * model over float parameters and buffers; other buffers copied.

        No host sync: the decay is a Python number. (A device-side skip flag cannot gate the lerp without one:
        `_foreach_lerp_` has no tensor-weight overload, and torch turns a 0-dim tensor weight into a number with
        `.item()`. The training step therefore updates the EMA after a step the optimiser skipped on the device, as
        timm does after a GradScaler-skipped step: the model did not move, so the EMA only moves further toward it.)
        """
        bare = unwrap(model)
        pairs = self._pairs
        if pairs is None or pairs.model is not bare:
            pairs = self._pairs = _Pairs(self.module, bare)
        model_f = pairs.model_f
        if pairs.convert:
            model_f = [m.to(device=e.device, dtype=e.dtype) for e, m in zip(pairs.ema_f, model_f, strict=True)]
        if model_f:
            torch._foreach_lerp_(pairs.ema_f, model_f, 1.0 - self.get_decay(step))
        if pairs.ema_i:
            torch._foreach_copy_(pairs.ema_i, pairs.model_i)
