"""cxr-doctor without a GPU (the mode CI runs): CPU checks pass, GPU checks are listed as skipped, exit 0, a JSON
report; and the machinery a GPU relies on: a probe that dies by a signal becomes a failing row with advice."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest
import torch

from cxr_fast import versions
from cxr_fast.cli import doctor as doctor_cli
from cxr_fast.doctor import Row, decode, run
from tests.helpers import assert_user_error

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU mode")


@needs_no_gpu
def test_doctor_cpu_mode_runs_and_passes(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "doctor.json"
    assert doctor_cli.main(["--out", str(out)]) == 0  # (its time is the doctor's budget's business, not a test's)
    rep = json.loads(out.read_text())
    rows = {r["name"]: r for r in rep["rows"]}
    assert rep["ok"] and rep["machine"]["cuda"] is False
    for name in ("torch", "DALI CPU decode, crop", "DALI CPU decode, full", "training step"):
        assert rows[name]["status"] == "pass", rows[name]
    # pass, or info for a DALI build whose CUDA major differs from torch's (only its CPU operators run here)
    assert rows["DALI"]["status"] in ("pass", "info") and rows["DALI"]["data"]["usable"], rows["DALI"]
    assert rep["complete"] and not any(r["name"].startswith("GPU ") for r in rep["rows"])
    for name in ("CUDA", "NCCL", "DALI mixed decode, crop", "DALI mixed decode, full", "hardware JPEG decoder",
                 "pinned host-to-device copy"):
        assert rows[name]["status"] == "skip" and name in rep["skipped"]
    rates = [r for r in rep["rows"] if r["name"].startswith("loader ")]
    assert {r["name"].split()[1] for r in rates} == {"dali-cpu", "pil-shards"}
    assert all(r["status"] == "info" and r["data"]["img_per_s"] > 0 for r in rates)  # rates, no verdict
    text = capsys.readouterr().out
    assert "skipped: CUDA" in text and "SKIP  DALI mixed decode, crop" in text


SEGV = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


def test_crashing_probe_is_a_failing_row_with_advice(monkeypatch):
    """The decode probe killed by SIGSEGV, with an nvImageCodec not known to crash: reported as a FAIL with the way
    out, not inherited."""
    monkeypatch.setattr(decode, "_probe_cmd", lambda args: SEGV)
    monkeypatch.setattr(versions, "nvimgcodec_version", lambda: "0.10.0")
    res, why = decode.run_probe("decode", "--device", "gpu", "--decode", "crop")
    assert res is None and why == f"crashed ({signal.SIGSEGV.name})"
    rows = decode.decode_rows(cuda=True, have_dali=True)
    crop = next(r for r in rows if r.name == "DALI mixed decode, crop")
    assert crop.status == "fail" and "crashed (SIGSEGV)" in crop.detail
    assert "ROI decode crashes with nvImageCodec" in crop.advice and "--dali_decode full" in crop.advice
    full = next(r for r in rows if r.name == "DALI mixed decode, full")
    assert full.status == "fail" and "--pipeline pil" in full.advice


def test_known_roi_crash_is_informational(monkeypatch):
    """nvImageCodec 0.9.x (NVIDIA/nvImageCodec#55): the GPU crop probe's crash is an info row (cxr-train refuses the
    form there), so the doctor's exit code stays 0 on such an H100; the full form's crash still FAILs."""
    monkeypatch.setattr(decode, "_probe_cmd", lambda args: SEGV)
    monkeypatch.setattr(versions, "nvimgcodec_version", lambda: "0.9.0.20")
    rows = {r.name: r for r in decode.decode_rows(cuda=True, have_dali=True)}
    crop = rows["DALI mixed decode, crop"]
    assert crop.status == "info" and "crashed (SIGSEGV)" in crop.detail and "nvImageCodec#55" in crop.detail
    assert "refuses --dali_decode crop" in crop.advice
    assert rows["DALI mixed decode, full"].status == "fail" and rows["DALI CPU decode, crop"].status == "fail"


def test_hanging_probe_times_out(monkeypatch):
    monkeypatch.setattr(decode, "_probe_cmd", lambda args: [sys.executable, "-c", "import time; time.sleep(60)"])
    t = time.perf_counter()
    res, why = decode.run_probe("hw", timeout=1.0)
    assert res is None and why == "timed out after 1 s" and time.perf_counter() - t < 10
    assert decode.PROBE_TIMEOUT_S <= 30


def test_probe_error_exit_is_reported(monkeypatch):
    monkeypatch.setattr(decode, "_probe_cmd", lambda args: [sys.executable, "-c", "raise RuntimeError('boom')"])
    res, why = decode.run_probe("hw")
    assert res is None and why.startswith("exit code 1") and "RuntimeError: boom" in why


def test_exit_code_table_and_guard():
    rows = [Row("a", "pass", "ok"), Row("b", "skip", "no CUDA"), Row("c", "info", "1 img/s")]
    assert run.exit_code(rows) == 0
    bad = run.guarded("d", lambda: 1 / 0)
    assert bad[0].status == "fail" and "ZeroDivisionError" in bad[0].detail
    assert run.exit_code(rows + bad) == 1
    rows.append(Row("e", "fail", "slow", "do this"))
    text = run.table(rows)
    assert "FAIL  e  slow" in text and "-> do this" in text
    with pytest.raises(ValueError):
        Row("x", "warn", "")


def test_bad_seconds_is_a_user_error():
    assert_user_error(lambda: doctor_cli.main(["--seconds", "0"]), "--seconds must be positive")
