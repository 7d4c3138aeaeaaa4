#!/usr/bin/env python3
"""`make gpu-check`: everything a GPU machine can tell us, in one run of at most ~4 minutes on one GPU.

    python3 tools/gpu_check.py [--dry-run] [--out benchmarks/results] [--budget_s 240] [--no-pytest]

Runs with the machine's own Python and no install step: cxr_fast is imported from this source tree (sys.path), and
only modules that need torch, torchvision, timm, numpy, pandas and Pillow; DALI, webdataset and
iterative-stratification may be absent (the DALI rows then say so). Sections:

1. `cxr-doctor` (in a subprocess: a crash there is a FAIL row, not the end of this script);
2. `pytest -m gpu` over the test files that hold GPU tests (if pytest is installed);
3. the GPU rows of the throughput benchmark (`benchmarks/gpu_rows.py`): tf_efficientnet_b4_ns at 380 px AMP,
   channels_last on/off x bf16/fp16 on fixed on-device batches (the bound), pil-shards- and dali-gpu-fed training.

Prints one table and writes `benchmarks/results/gpu-<card>.json`. Without CUDA (or with --dry-run) every row reads
"not measured here (no CUDA)" and the exit code is 0; otherwise 1 when any row FAILs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NOT_HERE = "not measured here (no CUDA)"
PLANNED = [("doctor", "cxr-doctor (every check)"), ("pytest", "pytest -m gpu"),
           ("bench", "bound tf_efficientnet_b4_ns 380 px: bf16/fp16 x channels_last on/off"),
           ("bench", "pil-shards-fed training"), ("bench", "dali-gpu loader only"), ("bench", "dali-gpu-fed training")]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def doctor(tmp: Path, timeout: float) -> tuple[list[list[str]], dict | None]:
    out = tmp / "doctor.json"
    cmd = [sys.executable, "-m", "cxr_fast.cli.doctor", "--out", str(out)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return [["doctor", "cxr-doctor", "FAIL", f"timed out after {timeout:.0f} s"]], None
    if not out.is_file():
        return [["doctor", "cxr-doctor", "FAIL", f"exit {r.returncode}: {(r.stderr.strip() or '?')[-300:]}"]], None
    rep = json.loads(out.read_text())
    rows = [["doctor", x["name"], x["status"].upper(), x["detail"] + (f" -> {x['advice']}" if x["advice"] and
                                                                       x["status"] == "fail" else "")]
            for x in rep["rows"]]
    return rows, rep


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if re.search(r"mark\.gpu\b|pytest\.mark\.gpu", p.read_text(errors="replace")))


def pytest_gpu(timeout: float) -> tuple[list[list[str]], dict]:
    if importlib.util.find_spec("pytest") is None:
        return [["pytest", "pytest -m gpu", "SKIP", "pytest is not installed"]], {}
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *files]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return [["pytest", "pytest -m gpu", "FAIL", f"timed out after {timeout:.0f} s"]], {}
    lines = r.stdout.strip().splitlines()
    last = lines[-1].strip("= ") if lines else "no output"
    status = "PASS" if r.returncode in (0, 5) else "FAIL"  # 5: nothing collected
    skips = [ln for ln in lines if ln.startswith("SKIPPED")]
    detail = last + (f"; {len(skips)} skip line(s), e.g. {skips[0][8:120]}" if skips else "")
    return [["pytest", f"pytest -m gpu ({len(files)} files)", status, detail]], {"rc": r.returncode,
                                                                                  "tail": lines[-40:]}


def bench(seconds: float) -> tuple[list[list[str]], dict | None]:
    import gpu_rows

    try:
        res = gpu_rows.run(seconds=seconds, log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001  (one failing section must not hide the others)
        return [["bench", "GPU rows", "FAIL", f"{type(e).__name__}: {str(e)[:200]}"]], None
    rows = []
    for r in res["rows"]:
        if r["img_per_s"] is None:
            rows.append(["bench", r["name"], "SKIP", r.get("note", "")])
            continue
        frac = f", {r['fraction_of_bound']:.2f} of the bound" if "fraction_of_bound" in r else ""
        rows.append(["bench", r["name"], "INFO", f"{r['img_per_s']:.0f} img/s{frac}"])
    rows.append(["bench", "ratios", "INFO", ", ".join(f"{k} {v:.2f}" for k, v in res["ratios"].items())])
    return rows, res


def table(rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[2]:<{w[2]}}  {r[1]:<{w[1]}}  {r[3]}" for r in rows)


def card_slug() -> str:
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="measure nothing: print the rows this script would fill")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--budget_s", type=float, default=240.0, help="stop starting sections after this many seconds")
    p.add_argument("--seconds", type=float, default=8.0, help="window of each fed/loader bench row")
    p.add_argument("--no-pytest", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    if a.dry_run or not torch.cuda.is_available():
        rows = [[sec, name, "-", NOT_HERE] for sec, name in PLANNED]
        print(table(rows))
        print(f"\n{NOT_HERE}: nothing written; run this on a CUDA machine (make gpu-check)")
        return 0
    t0, rows, report = time.perf_counter(), [], {}

    def left() -> float:
        return a.budget_s - (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        print("cxr-doctor ...", flush=True)
        got, report["doctor"] = doctor(Path(tmp), timeout=min(150.0, max(30.0, left() - 60)))
        rows += got
    if a.no_pytest:
        rows.append(["pytest", "pytest -m gpu", "SKIP", "--no-pytest"])
    else:
        print("pytest -m gpu ...", flush=True)
        got, report["pytest"] = pytest_gpu(timeout=max(30.0, min(120.0, left() - 60)))
        rows += got
    if left() > 40:
        print("GPU bench rows ...", flush=True)
        got, report["bench"] = bench(a.seconds)
        rows += got
    else:
        rows.append(["bench", "GPU rows", "SKIP", f"time budget ({a.budget_s:.0f} s) spent"])
    report.update({"date": dt.datetime.now().isoformat(timespec="seconds"), "seconds": time.perf_counter() - t0,
                   "gpu": torch.cuda.get_device_name(0), "table": rows})
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"gpu-{card_slug()}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print("\n" + table(rows))
    print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 1 if any(r[2] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
