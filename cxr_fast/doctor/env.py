"""Environment rows: Python, torch (and its floor), CUDA, driver, GPUs and their memory, NCCL, DALI, nvImageCodec."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess

import torch

from cxr_fast import versions
from cxr_fast.doctor import Row
from cxr_fast.errors import UserError


def torch_row() -> Row:
    detail = f"torch {torch.__version__}, Python {platform.python_version()}"
    try:
        versions.check_torch()
    except UserError as e:
        return Row("torch", "fail", detail, str(e))
    return Row("torch", "pass", f"{detail} (needs >= {versions.TORCH_MIN})")


def driver_version() -> str:
    """The NVIDIA driver version, from nvidia-smi when it is on PATH, else 'unknown'."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20, check=False).stdout.strip().splitlines()
            if out:
                return out[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def cuda_rows() -> list[Row]:
    """CUDA runtime + driver, then one row per GPU (name, compute capability, memory total/free)."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only torch build)"
        return [Row("CUDA", "skip", f"no CUDA device visible (torch built for CUDA {built})",
                    "GPU checks skipped; on a GPU machine check nvidia-smi and CUDA_VISIBLE_DEVICES")]
    rows = [Row("CUDA", "pass", f"runtime {torch.version.cuda}, driver {driver_version()}, "
                                f"{torch.cuda.device_count()} GPU(s), cuDNN {torch.backends.cudnn.version()}")]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        rows.append(Row(f"GPU {i}", "pass", f"{p.name}, sm_{p.major}{p.minor}, {total / 2**30:.1f} GiB "
                                            f"({free / 2**30:.1f} GiB free)",
                        data={"name": p.name, "capability": [p.major, p.minor], "total_bytes": total,
                              "free_bytes": free}))
    return rows


def nccl_row() -> Row:
    if not torch.cuda.is_available():
        return Row("NCCL", "skip", "no CUDA")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_nccl_available()):
        return Row("NCCL", "fail", "this torch build has no NCCL", "multi-GPU runs need a CUDA torch build with NCCL")
    v = torch.cuda.nccl.version()
    return Row("NCCL", "pass", "NCCL " + (".".join(map(str, v)) if isinstance(v, tuple) else str(v)))


def dali_version() -> str | None:
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return None
    from nvidia import dali

    return str(getattr(dali, "__version__", "0"))


def dali_row() -> Row:
    try:
        v = dali_version()
    except (ImportError, OSError) as e:
        return Row("DALI", "fail", f"installed but does not import ({e})"[:200],
                   f"pip install -U '{versions.DALI_PACKAGE}>={versions.DALI_MIN}'")
    if v is None:
        return Row("DALI", "skip", "NVIDIA DALI is not installed: the DALI rows are skipped",
                   f"--pipeline dali (the default) needs pip install '{versions.DALI_PACKAGE}>={versions.DALI_MIN}'; "
                   "--pipeline pil works without it")
    try:
        versions.check_dali(v)
    except UserError as e:
        return Row("DALI", "fail", f"DALI {v}", str(e))
    return Row("DALI", "pass", f"DALI {v} (needs >= {versions.DALI_MIN})", data={"version": v})


def nvimgcodec_row(cuda: bool) -> Row:
    v = versions.nvimgcodec_version()
    if v is None:
        return Row("nvImageCodec", "info", "nvidia.nvimgcodec is not installed (DALI 2.x brings it; absent here)")
    if cuda and versions.roi_decode_suspect(v):
        return Row("nvImageCodec", "info", f"nvImageCodec {v}: GPU ROI decode reported broken in this series "
                                           "(NVIDIA/nvImageCodec#55)",
                   "keep --dali_decode auto or full on GPUs (decodes whole images, no ROI decode)", {"version": v})
    return Row("nvImageCodec", "info", f"nvImageCodec {v}", data={"version": v})


def env_rows(cuda: bool) -> list[Row]:
    return [torch_row(), *cuda_rows(), nccl_row(), dali_row(), nvimgcodec_row(cuda)]
