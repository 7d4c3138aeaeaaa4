"""normalize: uint8 grey to the network's float input (grey or ImageNet-RGB statistics), the requested memory
layout, the input left alone, bad shapes refused."""

from __future__ import annotations

import pytest
import torch

from cxr_fast.model.normalize import normalize


def _cl(w: torch.Tensor) -> bool:
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def test_normalize_grey_values():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalize(x, in_chans=1)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 1, 3)
    expected = (torch.tensor([0.0, 1.0, 128 / 255]) - 0.449) / 0.226
    torch.testing.assert_close(out.view(-1), expected)


def test_normalize_expands_to_rgb_stats():
    x = torch.full((2, 1, 4, 4), 100, dtype=torch.uint8)
    out = normalize(x, in_chans=3)
    assert out.shape == (2, 3, 4, 4)
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        torch.testing.assert_close(out[:, c], torch.full((2, 4, 4), (100 / 255 - m) / s))
    rgb = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(normalize(rgb, 1), (rgb.float().mean(1, keepdim=True) / 255 - 0.449) / 0.226)
    torch.testing.assert_close(normalize(rgb, 3)[:, 1], (rgb[:, 1].float() / 255 - 0.456) / 0.224)


def test_normalize_does_not_touch_its_input_and_rejects_bad_shapes():
    x = torch.full((1, 1, 2, 2), 50.0)
    normalize(x, 1)
    assert torch.equal(x, torch.full((1, 1, 2, 2), 50.0))
    with pytest.raises(ValueError):
        normalize(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 1)
    with pytest.raises(ValueError):
        normalize(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_normalize_gives_the_requested_layout():
    rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = normalize(rgb, 3, memory_format=torch.channels_last)
    assert _cl(out)
    torch.testing.assert_close(out, normalize(rgb, 3))
    grey = normalize(rgb[:, :1], 1, memory_format=torch.channels_last)
    assert grey.is_contiguous(memory_format=torch.channels_last)
