"""uint8 images -> the float input a backbone expects, on the device (ImageNet statistics)."""

from __future__ import annotations

import functools

import torch

# ImageNet statistics; a grey radiograph fed to a 1-channel network uses the mean of the RGB ones
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = 0.449, 0.226


@functools.cache
def _rgb_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std in 0..255 units, (1, 3, 1, 1), made once per device (no host-to-device copy per batch)."""
    with torch.inference_mode(False):  # plain tensors even when first asked for under inference_mode
        mean = torch.tensor(RGB_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(RGB_STD, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std


def normalize(images: torch.Tensor, in_chans: int = 1, *,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (B,1|3,H,W) -> float32 (B,in_chans,H,W) on the same device: (x/255 - mean) / std with ImageNet stats.

    A 1-channel batch for a 3-channel network is expanded to 3 channels; a 3-channel batch for a 1-channel network
    is averaged to grey. `memory_format=torch.channels_last` gives the layout a channels_last network wants (free
    for one channel, where both layouts are the same bytes).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"normalize: expected (B, 1|3, H, W) images, got {tuple(images.shape)}")
    x = images.to(torch.float32, copy=True)  # a copy even for float input: the ops below are in place
    if in_chans == 1:
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        # (x/255 - m)/s == (x - 255m) / (255s): one pass over the batch
        return x.sub_(255.0 * GRAY_MEAN).div_(255.0 * GRAY_STD)
    if in_chans == 3:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        mean, std = _rgb_stats(x.device)
        return ((x - mean) / std).contiguous(memory_format=memory_format)
    raise ValueError(f"normalize: in_chans must be 1 or 3, got {in_chans}")
