"""GPU speed switches, set once at start-up: channels_last, cudnn.benchmark, torch.compile of the backbone.

None of them changes what is saved: channels_last keeps state-dict keys and values (only strides), and the backbone
is compiled in place (`nn.Module.compile`), so no `_orig_mod.` prefix reaches a checkpoint or the EMA.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_fast.model import unwrap


def is_convolutional(model: nn.Module) -> bool:
    """Whether the model has 2-D convolutions (timm's Conv2dSame and friends subclass nn.Conv2d)."""
    return any(isinstance(m, nn.Conv2d) for m in unwrap(model).modules())


def use_channels_last(model: nn.Module, device: torch.device | str, enabled: bool | None = None) -> bool:
    """Put a convolutional model's 4-D weights in channels_last (NHWC), in place; returns whether it did.

    `enabled=None` (the default, --channels_last unset): on for convolutional models on CUDA, where cuDNN's NHWC
    kernels are faster under AMP (tensor cores); off on CPU, where it can be slower. `enabled=True` still leaves a
    model without Conv2d as it is. Call it before building the optimiser (fused optimisers keep per-parameter state
    of the parameters' layout); the EMA copy follows the live model's layout by itself. The engine and `infer`
    read the layout back from the model (`model_memory_format`) and give each input batch the same one.
    """
    if enabled is None:
        enabled = torch.device(device).type == "cuda"
    if not enabled or not is_convolutional(model):
        return False
    unwrap(model).to(memory_format=torch.channels_last)
    return True


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last if any conv weight of `model` is stored NHWC (`use_channels_last`), else contiguous_format.

    Only weights whose two layouts differ count (a 1-channel 1x1 kernel is both)."""
    for m in unwrap(model).modules():
        if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
            w = m.weight
            if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
                return torch.channels_last
    return torch.contiguous_format


def configure_cuda(fixed_size: bool) -> None:
    """Process-wide CUDA settings: cudnn.benchmark when every batch has the same shape (it times the candidate
    kernels on the first batch of each shape, a loss when shapes vary). No-op without CUDA."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = bool(fixed_size)


def maybe_compile(model: nn.Module, enabled: bool = False, **compile_kwargs) -> bool:
    """torch.compile the classifier's backbone in place when `enabled` (--compile); returns whether it did.

    In place (`backbone.compile()`): the module tree, parameter objects and state-dict keys stay as they were, so
    checkpoints (`backbone.state_dict()`), resume, DDP and `ModelEma` (whose copy does not carry the compiled
    forward) are unaffected. The refiner (a few tiny ops) stays eager. A model without a `.backbone` is compiled
    whole, in place too. Compilation happens on the first forward pass.
    """
    if not enabled:
        return False
    bare = unwrap(model)
    target = getattr(bare, "backbone", None)
    (target if isinstance(target, nn.Module) else bare).compile(**compile_kwargs)
    return True
