"""The doctor's environment rows with faked versions: DALI's CUDA major against torch's, two DALI builds at once,
CUDA without DALI, and one failing GPU query that must not hide the other rows (issue 21, items 1 and 6)."""

from __future__ import annotations

import pytest
import torch

from cxr_fast import versions
from cxr_fast.doctor import env


def fake(monkeypatch, *, torch_cuda: str | None, dists: dict[str, str], imported: str | None = "2.4.0") -> None:
    """torch built for `torch_cuda`, pip metadata holding `dists`, `import nvidia.dali` giving `imported`."""
    monkeypatch.setattr(versions, "torch_cuda", lambda: torch_cuda)
    monkeypatch.setattr(versions, "_dist_version", lambda name: dists.get(name))
    monkeypatch.setattr(env, "dali_version", lambda: imported)


def test_matching_build_passes(monkeypatch):
    fake(monkeypatch, torch_cuda="13.0", dists={"nvidia-dali-cuda130": "2.4.0"})
    row = env.dali_row(cuda=True)
    assert row.status == "pass" and "nvidia-dali-cuda130" in row.detail and row.data["usable"]


@pytest.mark.parametrize("cuda", [True, False])
def test_cuda_major_mismatch_fails_on_a_gpu_only(monkeypatch, cuda):
    fake(monkeypatch, torch_cuda="13.0", dists={"nvidia-dali-cuda120": "2.4.0"})
    row = env.dali_row(cuda=cuda)
    assert row.status == ("fail" if cuda else "info") and "CUDA 12 build beside a CUDA 13 torch" in row.detail
    assert row.advice == "pip uninstall -y nvidia-dali-cuda120 nvidia-dali-cuda130 && pip install 'nvidia-dali-cuda130>=2.2'"
    fake(monkeypatch, torch_cuda="12.8", dists={"nvidia-dali-cuda130": "2.4.0"})
    row = env.dali_row(cuda=cuda)
    assert row.status == ("fail" if cuda else "info") and "install 'nvidia-dali-cuda120>=2.2'" in row.advice


def test_both_builds_fail(monkeypatch):
    fake(monkeypatch, torch_cuda="12.6", dists={"nvidia-dali-cuda120": "2.4.0", "nvidia-dali-cuda130": "2.4.0"})
    row = env.dali_row(cuda=False)
    assert row.status == "fail" and "two DALI builds" in row.detail and "nvidia-dali-cuda130 2.4.0" in row.detail
    assert "pip uninstall -y nvidia-dali-cuda130 nvidia-dali-cuda120" in row.advice


def test_missing_dali_fails_with_cuda_and_skips_without(monkeypatch):
    fake(monkeypatch, torch_cuda="13.0", dists={}, imported=None)
    row = env.dali_row(cuda=True)
    assert row.status == "fail" and "default --pipeline dali cannot run" in row.detail
    assert "pip install 'nvidia-dali-cuda130>=2.2'" in row.advice and "--pipeline pil" in row.advice
    assert env.dali_row(cuda=False).status == "skip"


def test_floor_reads_whichever_build(monkeypatch):
    fake(monkeypatch, torch_cuda="13.0", dists={"nvidia-dali-cuda130": "2.1.0"}, imported="2.1.0")
    row = env.dali_row(cuda=True)
    assert row.status == "fail" and "nvidia-dali-cuda130>=2.2" in row.advice and "2.1.0" in row.advice


def test_one_failing_gpu_query_hides_no_other_row(monkeypatch):
    """A busy / exclusive-mode GPU: mem_get_info raises. The GPU row fails alone; CUDA, NCCL and DALI rows stay."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    asked = []

    def props(i):
        asked.append(i)
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(env, "nccl_row", lambda: env.Row("NCCL", "pass", "NCCL 2.30"))
    monkeypatch.setattr(env, "driver_version", lambda: "580.1")
    fake(monkeypatch, torch_cuda="13.0", dists={"nvidia-dali-cuda130": "2.4.0"})
    assert env._cudnn_version().startswith("unknown (RuntimeError")  # cuDNN's init asks every GPU: guarded
    asked.clear()
    monkeypatch.setattr(env, "_cudnn_version", lambda: "91002")
    rows = {r.name: r for r in env.env_rows(cuda=True)}
    assert asked == [3]  # the current device only
    assert rows["GPU"].status == "fail" and "busy or unavailable" in rows["GPU"].detail
    assert rows["CUDA"].status == "pass" and rows["DALI"].status == "pass" and rows["NCCL"].status == "pass"
    assert {"torch", "nvImageCodec"} <= set(rows)
