"""Environment rows: Python, torch (and its floor), CUDA, driver, GPUs and their memory, NCCL, DALI, nvImageCodec."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess

import torch

from cxr_fast import versions
from cxr_fast.doctor import Row, guarded
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


def _cudnn_version() -> str:
    """cuDNN's version; its first call checks every visible GPU's compute capability, so a busy neighbour fails it."""
    try:
        return str(torch.backends.cudnn.version())
    except Exception as e:  # noqa: BLE001  (a detail of the CUDA row, not a reason to lose the row)
        return f"unknown ({type(e).__name__}: {str(e)[:80]})"


def cuda_row() -> Row:
    """CUDA runtime + driver + cuDNN; no device is touched here (that is `gpu_row`'s, guarded apart)."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only torch build)"
        return Row("CUDA", "skip", f"no CUDA device visible (torch built for CUDA {built})",
                   "GPU checks skipped; on a GPU machine check nvidia-smi and CUDA_VISIBLE_DEVICES")
    return Row("CUDA", "pass", f"runtime {torch.version.cuda}, driver {driver_version()}, "
                               f"{torch.cuda.device_count()} GPU(s) visible, cuDNN {_cudnn_version()}")


def gpu_row() -> Row:
    """The current device only (name, compute capability, memory total/free): querying every GPU would fail on a
    busy, exclusive-mode or MIG-partitioned neighbour this process never uses."""
    if not torch.cuda.is_available():
        return Row("GPU", "skip", "no CUDA")  # not listed without CUDA (env_rows): the CUDA row says it
    i = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    free, total = torch.cuda.mem_get_info(i)
    return Row(f"GPU {i}", "pass", f"{p.name}, sm_{p.major}{p.minor}, {total / 2**30:.1f} GiB "
                                   f"({free / 2**30:.1f} GiB free)",
               data={"name": p.name, "capability": [p.major, p.minor], "total_bytes": total, "free_bytes": free})


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


def dali_row(cuda: bool) -> Row:
    """DALI's build against torch's CUDA major, its version floor, and whether `--pipeline dali` (the default) can
    run here. `data["usable"]`: DALI imports and is new enough (the DALI decode rows then run)."""
    installed = versions.installed_dali()
    tcuda = versions.torch_cuda()
    major = versions.cuda_major(tcuda)
    fix = versions.dali_pip_line(major)
    try:
        v = dali_version()
    except (ImportError, OSError) as e:
        return Row("DALI", "fail", f"installed but does not import ({e})"[:200], fix)
    if len(installed) > 1:
        both = ", ".join(f"{k} {x}" for k, x in installed.items())
        return Row("DALI", "fail", f"two DALI builds are installed ({both}): both write nvidia/dali/, so one "
                                   "overwrote the other's files", fix, {"version": v, "usable": v is not None})
    if v is None:
        if cuda:
            return Row("DALI", "fail", "CUDA is present but NVIDIA DALI is not installed: the default --pipeline dali "
                                       "cannot run", f"{fix} (or train with --pipeline pil)")
        return Row("DALI", "skip", "NVIDIA DALI is not installed: the DALI rows are skipped",
                   f"--pipeline dali (the default) needs: {fix}; --pipeline pil works without it")
    try:
        versions.check_dali(v)
    except UserError as e:
        return Row("DALI", "fail", f"DALI {v}", str(e))
    pkg = next(iter(installed), None)  # None: a DALI without pip metadata (built from source, copied in)
    dali_major = {p: m for m, p in versions.DALI_PACKAGES.items()}.get(pkg)
    detail = f"DALI {v} ({pkg or 'no pip metadata'}), torch built for CUDA {tcuda or 'none'}"
    data = {"version": v, "package": pkg, "torch_cuda": tcuda, "usable": True}
    if dali_major and tcuda and dali_major != major:
        what = f"{detail}: DALI's CUDA {dali_major} build beside a CUDA {major} torch (NVIDIA tests matching majors only)"
        if cuda:
            return Row("DALI", "fail", what, fix, data)
        return Row("DALI", "info", f"{what}; no GPU here, so only its CPU operators run (fine)", fix, data)
    return Row("DALI", "pass", f"{detail} (needs >= {versions.DALI_MIN})", data=data)


def nvimgcodec_row(cuda: bool) -> Row:
    v = versions.nvimgcodec_version()
    if v is None:
        return Row("nvImageCodec", "info", "no nvidia-nvimgcodec-cu12/-cu13 distribution installed (DALI 2.x brings "
                                           "one; absent here)")
    if cuda and versions.roi_decode_suspect(v):
        return Row("nvImageCodec", "info", f"nvImageCodec {v}: GPU ROI decode crashes in this series "
                                           "(NVIDIA/nvImageCodec#55)",
                   "cxr-train refuses --dali_decode crop on CUDA here; auto and full decode whole images (no ROI "
                   "decode)", {"version": v})
    return Row("nvImageCodec", "info", f"nvImageCodec {v}", data={"version": v})


def env_rows(cuda: bool) -> list[Row]:
    """Every environment row, each guarded on its own: one failing query hides no other row."""
    checks = [("torch", torch_row), ("CUDA", cuda_row), *([("GPU", gpu_row)] if cuda else []), ("NCCL", nccl_row),
              ("DALI", lambda: dali_row(cuda)), ("nvImageCodec", lambda: nvimgcodec_row(cuda))]
    return [row for name, fn in checks for row in guarded(name, fn)]
