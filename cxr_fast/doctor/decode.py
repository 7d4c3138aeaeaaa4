"""DALI decode rows: each decode form in its own subprocess (`probe.py`), so a crash becomes a row, not our death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cxr_fast import versions
from cxr_fast.doctor import Row

# Per probe: a CUDA context, nvImageCodec's load and three tiny batches take seconds; a hung decoder must not eat the
# budget `make gpu-check` gives the whole doctor (150 s for 5 probes, the training step and the loader rates).
PROBE_TIMEOUT_S = 30


def _env() -> dict:
    """The child imports this very cxr_fast (also when it runs from a source tree through sys.path)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _probe_cmd(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "cxr_fast.doctor.probe", *args]


def run_probe(*args: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[dict | None, str]:
    """(result, why-not): the probe's JSON line, or None and a one-line reason (signal, exit code, timeout)."""
    cmd = _probe_cmd(args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if r.returncode < 0:
        return None, f"crashed ({signal.Signals(-r.returncode).name})"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        tail = next((ln for ln in reversed(err) if "Error" in ln or "error" in ln), err[-1] if err else "")
        return None, f"exit code {r.returncode}: {tail[:240]}"
    return json.loads(lines[-1]), ""


def _advice(device: str, form: str, reason: str) -> str:
    if device == "gpu" and form == "crop":
        v = versions.nvimgcodec_version() or "?"
        verb = "crashes" if "crashed" in reason else "fails"
        return f"ROI decode {verb} with nvImageCodec {v}: use --dali_decode full (the default, auto, does on CUDA)"
    if device == "gpu":
        return "the GPU decode of whole images fails: use --pipeline pil, and report doctor.json"
    fix = versions.dali_pip_line(versions.cuda_major(versions.torch_cuda()))
    return f"DALI's CPU decoder fails: reinstall DALI ({fix}) or use --pipeline pil"


def _known_roi_row(name: str, res: dict | None, why: str) -> Row:
    """The GPU crop row where nvImageCodec#55 is known (`versions.roi_refusal`): measured, but informational, since
    cxr-train refuses --dali_decode crop here and nothing a user runs goes through this decode."""
    v = versions.nvimgcodec_version()
    got = why or ("decoded, pixels as PIL's" if res and res["ok"] else "wrong pixels")
    return Row(name, "info", f"{got} (nvImageCodec {v}: ROI decode known broken, NVIDIA/nvImageCodec#55)",
               "cxr-train refuses --dali_decode crop on CUDA with this nvImageCodec; auto and full are unaffected",
               res or {})


def decode_rows(cuda: bool, have_dali: bool) -> list[Row]:
    rows = []
    for device in ("cpu", "gpu"):
        for form in ("crop", "full"):
            name = f"DALI {'mixed' if device == 'gpu' else 'CPU'} decode, {form}"
            if not have_dali:
                rows.append(Row(name, "skip", "DALI is not usable here (see the DALI row)"))
                continue
            if device == "gpu" and not cuda:
                rows.append(Row(name, "skip", "no CUDA"))
                continue
            res, why = run_probe("decode", "--device", device, "--decode", form)
            if device == "gpu" and versions.roi_refusal(form, gpu=True):
                rows.append(_known_roi_row(name, res, why))
            elif res is None:
                rows.append(Row(name, "fail", why, _advice(device, form, why)))
            elif not res["ok"]:
                rows.append(Row(name, "fail", f"wrong pixels: mean |DALI - PIL| {res['mad_vs_pil']:.2f}, crop area "
                                              f"{res['area_min']:.2f}-{res['area_max']:.2f}",
                                _advice(device, form, "wrong"), res))
            else:
                rows.append(Row(name, "pass", f"grey JPEG: mean |DALI - PIL| {res['mad_vs_pil']:.2f}, random crop "
                                              f"area {res['area_min']:.2f}-{res['area_max']:.2f}", data=res))
    return rows


def hw_decoder_row(cuda: bool, have_dali: bool) -> Row:
    name = "hardware JPEG decoder"
    if not cuda:
        return Row(name, "skip", "no CUDA")
    if versions.nvimgcodec_version() is None:
        return Row(name, "skip", "nvidia.nvimgcodec is not installed: cannot ask")
    res, why = run_probe("hw")
    use = ("used by DALI's mixed decode of whole baseline grey JPEGs (--dali_decode full/auto, --hw_decoder_load "
           "0.65); the ROI form (crop) may bypass it")
    if res is None:
        return Row(name, "info", f"probe failed: {why}", "DALI falls back to the CUDA (nvJPEG) decoder; expect more "
                                                         "CPU use per image")
    if not res["present"]:
        return Row(name, "info", f"not available here ({res['detail']})", "DALI decodes on CUDA cores instead "
                                                                          "(fine; more CPU for Huffman decoding)")
    return Row(name, "pass", f"present: {res['detail']}; {use}" if have_dali else f"present: {res['detail']}",
               data=res)
