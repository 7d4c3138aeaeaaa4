"""tools/gpu_check.py and benchmarks/gpu_rows.py must not rot where no GPU is: the script's no-CUDA mode, and a
CPU smoke run of the GPU rows' code (tiny model, tiny data)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_check

from benchmarks import gpu_rows


@pytest.mark.parametrize("flags", [["--dry-run"], []])
def test_gpu_check_without_cuda_prints_not_measured_and_exits_0(flags, tmp_path):
    if not flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real run is `make gpu-check`")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *flags, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
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


def test_gpu_rows_quick_reports_every_row_as_it_goes():
    seen = []
    res = gpu_rows.run(batch=4, steps=2, seconds=0.2, device="cpu", model="test_resnet", img_size=48,
                       data=(16, 96, 64), log=lambda m: None, quick=True,
                       on_row=lambda r: seen.append((len(r["rows"]), r["running"])))
    assert [r["name"] for r in res["rows"]][:2] == ["bound bf16 channels_last=on", "pil-shards bf16 channels_last=on"]
    assert seen[0] == (0, "bound bf16 channels_last=on") and seen[-1] == (len(res["rows"]), None)
    assert res["ratios"] == {}  # one bound config: no ratio


HANG = "import time; time.sleep(60)"
SEGV = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


def test_run_cmd_reports_a_hang_and_a_segfault():
    t = time.perf_counter()
    rc, _, why = gpu_check.run_cmd([sys.executable, "-c", HANG], timeout=1)
    assert rc is None and why == "timed out after 1 s" and time.perf_counter() - t < 15
    rc, _, why = gpu_check.run_cmd([sys.executable, "-c", SEGV], timeout=30)
    assert rc == -11 and why == "crashed (SIGSEGV)"
    assert gpu_check.run_cmd([sys.executable, "-c", "print('{}')"], timeout=30) == (0, "{}\n", "")


def test_report_is_written_row_by_row_through_a_hang_a_segfault_and_an_exception(tmp_path):
    path = tmp_path / "gpu-test.json"
    report = gpu_check.Report(path, {"gpu": "fake"})
    assert json.loads(path.read_text()) == {"gpu": "fake", "complete": False, "table": [], "seconds": 0.0}

    def ok(t):
        return [["doctor", "torch", "PASS", "2.14"], ["doctor", "DALI", "PASS", "2.4.0"]]

    def hangs(t):
        on_disk = json.loads(path.read_text())["table"]  # the first section's rows are already written
        assert [r[1] for r in on_disk] == ["torch", "DALI"]
        return [["pytest", "pytest", "FAIL", gpu_check.run_cmd([sys.executable, "-c", HANG], timeout=1)[2]]]

    def segfaults(t):
        return [["bench", "GPU rows", "FAIL", gpu_check.run_cmd([sys.executable, "-c", SEGV], timeout=t)[2]]]

    def raises(t):
        raise RuntimeError("boom")

    sections = [("doctor", 30, ok), ("pytest", 30, hangs), ("bench", 30, segfaults), ("extra", 30, raises)]
    rows = gpu_check.run_sections(report, sections, budget_s=100, log=lambda m: None)
    rep = json.loads(path.read_text())
    assert rep["complete"] and rep["table"] == rows
    assert [r[2] for r in rows] == ["PASS", "PASS", "FAIL", "FAIL", "FAIL"]
    assert rows[2][3] == "timed out after 1 s" and rows[3][3] == "crashed (SIGSEGV)"
    assert rows[4] == ["extra", "extra", "FAIL", "RuntimeError: boom"]
    assert "FAIL  GPU rows  crashed (SIGSEGV)" in gpu_check.table(rows)
    later = gpu_check.run_sections(gpu_check.Report(tmp_path / "b.json", {}), sections[:1], budget_s=5)
    assert later == [["doctor", "doctor", "SKIP", "time budget (5 s) spent"]]


def test_sections_keep_the_rows_a_crashing_child_wrote(tmp_path, monkeypatch):
    """gpu_rows.py / cxr-doctor write their JSON after every row; a child that then segfaults or hangs loses only the
    row it was on, and the table says which."""
    real = gpu_check.run_cmd
    bench_json = {"rows": [{"name": "bound bf16 channels_last=on", "kind": "end_to_end", "img_per_s": 310.0}],
                  "ratios": {}, "running": "dali-gpu loader only"}
    doctor_json = {"rows": [{"name": "torch", "status": "pass", "detail": "2.14", "advice": ""},
                            {"name": "DALI", "status": "fail", "detail": "two builds", "advice": "pip ..."}]}

    def child(payload: dict, then: str):
        script = f"import json, sys; open(sys.argv[1], 'w').write(json.dumps({payload!r}))\n{then}"
        return lambda cmd, timeout: real([sys.executable, "-c", script, cmd[cmd.index("--out") + 1]], timeout)

    monkeypatch.setattr(gpu_check, "run_cmd", child(bench_json, SEGV))
    rows = gpu_check.bench(tmp_path / "bench.json", timeout=30, seconds=1, quick=True)
    assert rows[0] == ["bench", "bound bf16 channels_last=on", "INFO", "310 img/s"]
    assert rows[-1][2] == "FAIL" and rows[-1][3] == ("crashed (SIGSEGV) after 'bound bf16 channels_last=on': "
                                                     "dali-gpu loader only lost")
    monkeypatch.setattr(gpu_check, "run_cmd", child(doctor_json, HANG))
    rows = gpu_check.doctor(tmp_path / "doctor.json", timeout=1, quick=True)
    assert [r[1] for r in rows] == ["torch", "DALI", "cxr-doctor"] and rows[1][3] == "two builds -> pip ..."
    assert rows[-1][2] == "FAIL" and rows[-1][3].startswith("timed out after 1 s after 2 row(s)")


def test_make_gpu_check_uses_the_venv_python():
    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("\ngpu-check:"):].splitlines()[2]
    assert "$(PY)" in recipe and "python3" in recipe and "tools/gpu_check.py" in recipe
