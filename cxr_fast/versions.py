"""The oldest torch and DALI this package runs on, and start-up checks that say so in one line.

Why each floor (read from the projects' release notes and pull requests, not tested against old releases here):
- torch 2.4: `torch.amp.GradScaler(device)` (2.3; `torch.cuda.amp.GradScaler` is deprecated for it), `init_process_group(device_id=...)` (2.3;
  feature-detected in `cxr_fast.dist`), `torch.OutOfMemoryError` (pytorch#121702, merged April 2024: 2.4).
- DALI 2.2: `readers.webdataset(shuffle_after_epoch=..., shuffle_after_epoch_seed=...)` (DALI PR #6288; first in
  the 2.2 docs). Everything else the graph uses is older: `decoders.image(_random_crop)`, `random_crop_generator`,
  `slice`, `resize`, `warp_affine`, `transforms.*`, arithmetic on GPU nodes, `DataNode.shape()` of a GPU node
  (needs the dynamic executor, DALI's default since 2.0). NGC containers may ship DALI 1.x: `check_dali` turns that
  into one line at start-up instead of a TypeError inside a pipeline build.

DALI's build must match torch's CUDA major (`nvidia-dali-cuda120` / `-cuda130`, the extras `dali-cu12` / `dali-cu13`;
`python -m cxr_fast.versions dali-extra` is what `make install` asks). Versions of installed builds and of
nvImageCodec are read from pip's metadata, so tests fake them by patching `_dist_version` and `torch_cuda`.
"""

from __future__ import annotations

import re

from cxr_fast.errors import UserError

TORCH_MIN = "2.4"
DALI_MIN = "2.2"
# DALI's builds per CUDA major and the pyproject extra that installs each (both write nvidia/dali/: never both)
DALI_PACKAGES = {"12": "nvidia-dali-cuda120", "13": "nvidia-dali-cuda130"}
DALI_EXTRAS = {"12": "dali-cu12", "13": "dali-cu13"}
DEFAULT_CUDA = "12"  # the build for a CPU-only torch: its CPU operators are all that run there
NVIMGCODEC_PACKAGES = ("nvidia-nvimgcodec-cu12", "nvidia-nvimgcodec-cu13", "nvidia-nvimgcodec")
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


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_cuda() -> str | None:
    """The CUDA version torch was built for ('13.0'), None for a CPU-only build (read, not imported twice)."""
    import torch

    return torch.version.cuda


def cuda_major(cuda: str | None) -> str:
    """The DALI build's CUDA major for torch's CUDA version: '13' for 13.x (and later), '12' for 12.x or no CUDA."""
    if not cuda:
        return DEFAULT_CUDA
    major = parse_version(cuda)[0]
    return "13" if major >= 13 else "12"


def dali_extra(cuda: str | None) -> str:
    """The pyproject extra (`dali-cu12` / `dali-cu13`) for torch's CUDA version `cuda` (`make install` uses it)."""
    return DALI_EXTRAS[cuda_major(cuda)]


def installed_dali() -> dict[str, str]:
    """{distribution: version} of the DALI builds pip has installed (normally one; two is a broken install)."""
    found = {name: _dist_version(name) for name in DALI_PACKAGES.values()}
    return {k: v for k, v in found.items() if v}


def dali_pip_line(major: str) -> str:
    """The exact commands that leave exactly the build for CUDA `major` installed (the other one removed first:
    both wheels own the same files, so uninstalling one after installing the other breaks DALI)."""
    want = DALI_PACKAGES[major]
    others = " ".join(p for m, p in DALI_PACKAGES.items() if m != major)
    return f"pip uninstall -y {others} {want} && pip install '{want}>={DALI_MIN}'"


def check_dali(version: str | None = None) -> str:
    """Raise a one-line UserError when the installed DALI (or `version`) is older than DALI_MIN; return it."""
    if version is None:
        from nvidia import dali

        version = getattr(dali, "__version__", "0")
    if not at_least(version, DALI_MIN):
        pkg = next(iter(installed_dali()), None) or DALI_PACKAGES[cuda_major(torch_cuda())]
        raise UserError(f"NVIDIA DALI {version} is installed; --pipeline dali needs {pkg}>={DALI_MIN} "
                        f"(readers.webdataset shuffle_after_epoch): pip install -U '{pkg}>={DALI_MIN}' "
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
    """The installed nvImageCodec's version (the library DALI decodes with), from pip's metadata (no import: a
    broken CUDA library must not take the caller down); None when no nvImageCodec distribution is installed."""
    return next((v for v in map(_dist_version, NVIMGCODEC_PACKAGES) if v), None)


def roi_refusal(decode: str, gpu: bool, nvimgcodec: str | None = None) -> str | None:
    """Why `--dali_decode crop` must not run here (one line), or None: on CUDA with an nvImageCodec series whose ROI
    decode crashes the process (SIGSEGV on H100, NVIDIA/nvImageCodec#55), which DALI's signal cannot catch."""
    v = nvimgcodec if nvimgcodec is not None else nvimgcodec_version()
    if decode != "crop" or not gpu or not roi_decode_suspect(v):
        return None
    return (f"--dali_decode crop on CUDA: the installed nvImageCodec {v} has the GPU region-of-interest decode that "
            f"crashes the process (NVIDIA/nvImageCodec#55, {'/'.join(NVIMGCODEC_ROI_BROKEN)} series); use "
            f"--dali_decode full or auto (same crops, decoded whole)")


def install_choice(which: str, cuda: str | None, forced: str = "") -> str:
    """For `make install` (`forced` = its DALI_EXTRA: dali-cu12, dali-cu13, none or empty = follow torch's CUDA):
    'dali-extra' -> the extra to install ('' for none); 'dali-remove' -> the DALI builds to uninstall first (all
    installed ones when a build other than the wanted one is there: both own nvidia/dali/, so the wanted one is
    reinstalled clean); 'torch-cuda' -> a note on what decided."""
    if forced and forced != "none" and forced not in DALI_EXTRAS.values():
        raise UserError(f"DALI_EXTRA must be one of {', '.join(DALI_EXTRAS.values())} or none, got {forced!r}")
    extra = "" if forced == "none" else (forced or DALI_EXTRAS[cuda_major(cuda)])
    if which == "dali-extra":
        return extra
    if which == "torch-cuda":
        return f"DALI_EXTRA={forced}" if forced else f"torch built for CUDA {cuda or 'none (CPU-only)'}"
    installed = installed_dali()
    want = next((DALI_PACKAGES[m] for m, e in DALI_EXTRAS.items() if e == extra), None)
    return " ".join(installed) if extra and any(p != want for p in installed) else ""


if __name__ == "__main__":  # python -m cxr_fast.versions dali-extra|dali-remove|torch-cuda (for `make install`)
    import os
    import sys

    print(install_choice(sys.argv[1] if len(sys.argv) > 1 else "dali-extra", torch_cuda(),
                         os.environ.get("DALI_EXTRA", "").strip()))
