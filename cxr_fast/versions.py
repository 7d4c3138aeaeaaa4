"""The oldest torch and DALI this package runs on, and start-up checks that say so in one line.

Why each floor (read from the projects' release notes and pull requests, not tested against old releases here):
- torch 2.4: `torch.amp.GradScaler(device)` (2.3; `torch.cuda.amp.GradScaler` is deprecated for it), `init_process_group(device_id=...)` (2.3;
  feature-detected in `cxr_fast.dist`), `torch.OutOfMemoryError` (pytorch#121702, merged April 2024: 2.4).
- DALI 2.2: `readers.webdataset(shuffle_after_epoch=..., shuffle_after_epoch_seed=...)` (DALI PR #6288; first in
  the 2.2 docs). Everything else the graph uses is older: `decoders.image(_random_crop)`, `random_crop_generator`,
  `slice`, `resize`, `warp_affine`, `transforms.*`, arithmetic on GPU nodes, `DataNode.shape()` of a GPU node
  (needs the dynamic executor, DALI's default since 2.0). NGC containers may ship DALI 1.x: `check_dali` turns that
  into one line at start-up instead of a TypeError inside a pipeline build.
"""

from __future__ import annotations

import re

from cxr_fast.errors import UserError

TORCH_MIN = "2.4"
DALI_MIN = "2.2"
DALI_PACKAGE = "nvidia-dali-cuda120"
TIMM_MIN = "0.9"  # pretrained tags ("arch.tag"), pretrained_cfg_overlay, get_pretrained_cfg(allow_unregistered=)
# nvImageCodec series whose GPU region-of-interest decode is reported broken (NVIDIA/nvImageCodec#55).
NVIMGCODEC_ROI_BROKEN = ("0.9",)


def parse_version(v: str) -> tuple[int, ...]:
    """'2.4.0', '2.4.0+cu121', '2.5.0a0+git123', '1.38.0.dev2024' -> (2, 4, 0) ...; the leading numeric part."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)", str(v))
    if not m:
        raise ValueError(f"unreadable version {v!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def at_least(installed: str, needed: str) -> bool:
    a, b = parse_version(installed), parse_version(needed)
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) >= b + (0,) * (n - len(b))


def check_dali(version: str | None = None) -> str:
    """Raise a one-line UserError when the installed DALI (or `version`) is older than DALI_MIN; return it."""
    if version is None:
        from nvidia import dali

        version = getattr(dali, "__version__", "0")
    if not at_least(version, DALI_MIN):
        raise UserError(f"NVIDIA DALI {version} is installed; --pipeline dali needs {DALI_PACKAGE}>={DALI_MIN} "
                        f"(readers.webdataset shuffle_after_epoch): pip install -U '{DALI_PACKAGE}>={DALI_MIN}' "
                        f"or use --pipeline pil")
    return version


def check_torch(version: str | None = None) -> str:
    """Raise a one-line UserError when the installed torch (or `version`) is older than TORCH_MIN; return it."""
    if version is None:
        import torch

        version = torch.__version__
    if not at_least(version, TORCH_MIN):
        raise UserError(f"torch {version} is installed; cxr_fast needs torch>={TORCH_MIN} "
                        f"(torch.amp.GradScaler, fused AdamW on CPU): pip install -U 'torch>={TORCH_MIN}'")
    return version


def roi_decode_suspect(nvimgcodec_version: str | None) -> bool:
    """True for an nvImageCodec series whose GPU ROI decode (DALI's `decoders.image_random_crop` on "mixed") is
    reported to fail or crash; `--dali_decode full` avoids it."""
    if not nvimgcodec_version:
        return False
    v = parse_version(nvimgcodec_version)
    return any(v[:len(parse_version(s))] == parse_version(s) for s in NVIMGCODEC_ROI_BROKEN)


def nvimgcodec_version() -> str | None:
    """The installed nvImageCodec's version (the library DALI decodes with), or None when the module is absent."""
    try:
        from nvidia import nvimgcodec
    except (ImportError, OSError):  # absent, or present but its library fails to load
        return None
    return str(getattr(nvimgcodec, "__version__", "unknown"))
