"""tools/gpu_check.py and benchmarks/gpu_rows.py must not rot where no GPU is: the script's no-CUDA mode, and a
CPU smoke run of the GPU rows' code (tiny model, tiny data)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tools"))

import gpu_check
import gpu_rows


@pytest.mark.parametrize("flags", [["--dry-run"], []])
def test_gpu_check_without_cuda_prints_not_measured_and_exits_0(flags, tmp_path):
    if not flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real run is `make gpu-check`")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *flags, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.perf_counter() - t < 30
    lines = r.stdout.splitlines()
    assert sum(ln.endswith(gpu_check.NOT_HERE) for ln in lines) == len(gpu_check.PLANNED)
    assert "FAIL" not in r.stdout and not list(tmp_path.iterdir())


def test_gpu_test_files_are_found():
    files = gpu_check.gpu_test_files()
    assert "tests/pipelines/test_dali_gpu.py" in files and "tests/pipelines/test_dali.py" in files
    assert all(f.startswith("tests/") for f in files)


def test_gpu_rows_code_runs_on_cpu():
    """The GPU rows' code path (bound configs, PIL-fed training, ratios) on a CPU with timm's test model."""
    res = gpu_rows.run(batch=4, steps=2, seconds=0.3, device="cpu", model="test_resnet", img_size=48,
                       data=(16, 96, 64), log=lambda m: None)
    names = [r["name"] for r in res["rows"]]
    assert names[:4] == [f"bound {d} channels_last={'on' if c else 'off'}" for d, c in gpu_rows.CONFIGS]
    assert "pil-shards bf16 channels_last=on" in names
    assert next(r for r in res["rows"] if r["name"] == "dali-gpu")["kind"] == "skipped"
    assert all(r["img_per_s"] > 0 for r in res["rows"] if r["kind"] != "skipped")
    assert set(res["ratios"]) == {"channels_last_gain_bf16", "channels_last_gain_fp16", "bf16_over_fp16"}
    rows = gpu_check.table([["bench", r["name"], "INFO", "x"] for r in res["rows"]])
    assert "pil-shards" in rows
