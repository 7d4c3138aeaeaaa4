"""Find the Grad-CAM target layer of a timm backbone: the module that produces the last convolutional feature map.

timm models split into `forward_features` (stem + stages, the map before global pooling) and `forward_head`. One
dummy pass through `forward_features` with forward hooks finds the module whose output *is* that map (the last
stage, or a final norm / activation applied to it). The map must be (B, C, h, w) with C = `num_features`: token
models (ViT: (B, N, C)) and channels-last ones (Swin: (B, h, w, C)) are refused with a one-line error.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_fast.errors import UserError, first_line


def _describe(backbone: nn.Module) -> str:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(backbone).__name__)


def find_target_layer(backbone: nn.Module, in_chans: int, img_size: int) -> tuple[str, nn.Module]:
    """(qualified name, module) of the backbone's last convolutional feature map; UserError when there is none."""
    name = _describe(backbone)
    if not hasattr(backbone, "forward_features"):
        raise UserError(f"cxr-explain cannot handle backbone {name!r}: it has no timm forward_features()")
    names = {m: n for n, m in backbone.named_modules() if n}
    seen: list[tuple[str, torch.Tensor]] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and module in names:
            seen.append((names[module], output))

    handles = [m.register_forward_hook(hook) for m in names]
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        with torch.no_grad():
            feats = backbone.forward_features(torch.zeros(1, in_chans, img_size, img_size, device=device))
    except Exception as e:  # noqa: BLE001 - e.g. a transformer with a fixed input size
        raise UserError(f"cxr-explain cannot handle backbone {name!r}: forward_features failed at {img_size} px "
                        f"({first_line(e, 200, with_type=True)})") from None
    finally:
        for h in handles:
            h.remove()
        backbone.train(was_training)
    shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
    channels = getattr(backbone, "num_features", None)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or (channels and feats.shape[1] != channels):
        raise UserError(f"cxr-explain cannot handle backbone {name!r}: its features are {shape}, not a convolutional "
                        "(B, C, H, W) map (a transformer?); Grad-CAM here needs a CNN backbone")
    hit = next((n for n, out in reversed(seen) if out is feats), None)
    if hit is None:  # forward_features ended with a functional op: take the last module with the map's shape
        hit = next((n for n, out in reversed(seen) if out.ndim == 4 and out.shape == feats.shape), None)
    if hit is None:
        raise UserError(f"cxr-explain cannot handle backbone {name!r}: no module outputs its {shape} feature map")
    return hit, backbone.get_submodule(hit)
