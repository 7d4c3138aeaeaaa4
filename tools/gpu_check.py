#!/usr/bin/env python3
"""`make gpu-check`: everything a GPU machine can tell us, in one run of at most 5 minutes (--quick: 2.5) on one GPU.

    python tools/gpu_check.py [--quick] [--dry-run] [--out benchmarks/results] [--budget_s 300] [--no-pytest]

`make gpu-check` runs it with the project's venv python when there is one (else python3); cxr_fast is imported from
this source tree. DALI, webdataset and iterative-stratification may be absent (the DALI rows then say so). Sections,
each in a subprocess with a timeout, so a hang or a crash (a DALI segfault) costs its own rows only:

1. `cxr-doctor` (<= 150 s; each decode probe <= 30 s), writing `doctor-<card>.json` row by row;
2. `pytest -m gpu` over the test files that hold GPU tests, one row per test (<= 120 s; --quick: not the slow ones);
3. the GPU rows of the throughput benchmark (`benchmarks.gpu_rows`, writing its JSON after every row):
   tf_efficientnet_b4_ns at 380 px AMP, channels_last on/off x bf16/fp16 on fixed on-device batches (the bound),
   pil-shards- and dali-gpu-fed training (--quick: bf16 channels_last only, shorter windows).

Writes `benchmarks/results/gpu-<card>[-quick].json` after every row ("complete": false until the end) and prints
one table. Without CUDA (or with --dry-run) every row reads "not measured here (no CUDA)", nothing is written and
the exit code is 0; otherwise 1 when any row FAILs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOT_HERE = "not measured here (no CUDA)"
PLANNED = [("doctor", "cxr-doctor (every check)"), ("pytest", "pytest -m gpu"),
           ("bench", "bound tf_efficientnet_b4_ns 380 px: bf16/fp16 x channels_last on/off"),
           ("bench", "pil-shards-fed training"), ("bench", "dali-gpu loader only"), ("bench", "dali-gpu-fed training")]


# seconds: the doctor's own budget (5 probes of <= 30 s, a training step, two loader windows), then pytest's
DOCTOR_S, PYTEST_S = 150.0, 120.0


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cmd(cmd: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code or None, stdout, why-not): why-not is '' on exit 0, else 'timed out after N s', 'crashed (SIGSEGV)'
    or 'exit code N'. Whatever the child printed before a timeout comes back too."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, f"timed out after {timeout:.0f} s"
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        return r.returncode, r.stdout, f"crashed ({name})"
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return r.returncode, r.stdout, "" if r.returncode == 0 else f"exit code {r.returncode}: {(err or ['?'])[-1][:300]}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def doctor(out: Path, timeout: float, quick: bool) -> list[list[str]]:
    """cxr-doctor in a subprocess, writing `out` row by row: whatever it reached before a hang or a crash is kept."""
    why = run_cmd([sys.executable, "-m", "cxr_fast.cli.doctor", "--out", str(out), *(["--quick"] if quick else [])],
                  timeout)[2]
    rep = _read_json(out) or {"rows": []}
    rows = [["doctor", x["name"], x["status"].upper(), x["detail"] + (f" -> {x['advice']}" if x["advice"] and
                                                                       x["status"] in ("fail", "info") else "")]
            for x in rep["rows"]]
    if why and not why.startswith("exit code 1"):  # exit 1 = a FAIL row, already listed
        rows.append(["doctor", "cxr-doctor", "FAIL", f"{why} after {len(rows)} row(s); {out.name} holds them"])
    return rows


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if re.search(r"mark\.gpu\b|pytest\.mark\.gpu", p.read_text(errors="replace")))


_OUTCOME = re.compile(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def pytest_gpu(timeout: float, quick: bool) -> list[list[str]]:
    """`pytest -m gpu`: one row per test (from -v), then the summary line."""
    if importlib.util.find_spec("pytest") is None:
        return [["pytest", "pytest -m gpu", "SKIP", "pytest is not installed"]]
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu and not slow" if quick else "gpu", "-v", "-rsx",
           "-p", "no:cacheprovider", "--continue-on-collection-errors", *files]
    rc, out, why = run_cmd(cmd, timeout)
    verdict = {"PASSED": "PASS", "FAILED": "FAIL", "ERROR": "FAIL", "SKIPPED": "SKIP", "XFAIL": "INFO", "XPASS": "INFO"}
    rows = [["pytest", m.group(1), verdict[m.group(2)], m.group(2).lower()]
            for m in map(_OUTCOME.match, out.splitlines()) if m]
    lines = out.strip().splitlines()
    last = lines[-1].strip("= ") if lines else "no output"
    ok = rc in (0, 5)  # 5: nothing collected
    detail = last if ok or rc == 1 else f"{why}; last line: {last}"  # 1: some test failed, listed above
    rows.append(["pytest", f"pytest -m gpu ({len(files)} files)", "PASS" if ok else "FAIL", detail])
    return rows


def bench(out: Path, timeout: float, seconds: float, quick: bool) -> list[list[str]]:
    """`python -m benchmarks.gpu_rows` in a subprocess (cwd: the repository) writing `out` after every row: a DALI
    segfault loses only its row."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_rows", "--out", str(out), "--seconds", str(seconds),
           *(["--quick"] if quick else [])]
    why = run_cmd(cmd, timeout)[2]
    res = _read_json(out) or {"rows": [], "ratios": {}}
    rows = []
    for r in res["rows"]:
        if r.get("img_per_s") is None:
            rows.append(["bench", r["name"], "SKIP", r.get("note", "")])
            continue
        frac = f", {r['fraction_of_bound']:.2f} of the bound" if "fraction_of_bound" in r else ""
        rows.append(["bench", r["name"], "INFO", f"{r['img_per_s']:.0f} img/s{frac}"])
    if res.get("ratios"):
        rows.append(["bench", "ratios", "INFO", ", ".join(f"{k} {v:.2f}" for k, v in res["ratios"].items())])
    if why:
        after = f" after {res['rows'][-1]['name']!r}" if res["rows"] else ""
        rows.append(["bench", "GPU rows", "FAIL", f"{why}{after}: {res.get('running', 'the next row')} lost"])
    return rows


def table(rows: list[list[str]]) -> str:
    if not rows:
        return "(no rows)"
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[2]:<{w[2]}}  {r[1]:<{w[1]}}  {r[3]}" for r in rows)


class Report:
    """The gpu-check JSON, rewritten atomically after every row: a crash or a kill leaves every row so far."""

    def __init__(self, path: Path, head: dict):
        self.path, self.t0 = path, time.perf_counter()
        self.data = {**head, "complete": False, "table": []}
        self.write()

    def write(self) -> None:
        from cxr_fast.atomic import write_json_atomic

        self.data["seconds"] = round(time.perf_counter() - self.t0, 1)
        write_json_atomic(self.path, self.data)

    def add(self, rows: list[list[str]]) -> None:
        for row in rows:
            self.data["table"].append(row)
            self.write()

    def finish(self) -> None:
        self.data["complete"] = True
        self.write()


def run_sections(report: Report, sections: list[tuple[str, float, Callable[[float], list[list[str]]]]],
                 budget_s: float, log: Callable[[str], None] = print) -> list[list[str]]:
    """Each (name, wanted seconds, fn(timeout)) in turn within `budget_s`; a section that raises is one FAIL row, a
    section with under 20 s left one SKIP row. Every row reaches `report` as it comes."""
    t0 = time.perf_counter()
    for name, wanted, fn in sections:
        left = budget_s - (time.perf_counter() - t0)
        if left < 20:
            report.add([[name, name, "SKIP", f"time budget ({budget_s:.0f} s) spent"]])
            continue
        log(f"{name} (up to {min(wanted, left):.0f} s) ...")
        try:
            rows = fn(min(wanted, left))
        except Exception as e:  # noqa: BLE001  (one failing section must not hide the others)
            rows = [[name, name, "FAIL", f"{type(e).__name__}: {str(e)[:200]}"]]
        report.add(rows)
    report.finish()
    return report.data["table"]


def card_slug() -> str:
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(torch.cuda.current_device()).lower()).strip("-")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="measure nothing: print the rows this script would fill")
    p.add_argument("--quick", action="store_true", help="<= 3 minutes: doctor --quick, no slow tests, fewer rows")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--budget_s", type=float, help="stop starting sections after this many seconds (300; quick 150)")
    p.add_argument("--seconds", type=float, help="window of each fed/loader bench row (8; quick 3)")
    p.add_argument("--no-pytest", action="store_true")
    return p.parse_args(argv)


def not_here() -> int:
    print(table([[sec, name, "-", NOT_HERE] for sec, name in PLANNED]))
    print(f"\n{NOT_HERE}: nothing written; run this on a CUDA machine (make gpu-check)")
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.dry_run:
        return not_here()
    import torch

    if not torch.cuda.is_available():
        return not_here()
    budget = a.budget_s or (150.0 if a.quick else 300.0)
    seconds = a.seconds or (3.0 if a.quick else 8.0)
    slug = card_slug()
    report = Report(a.out / f"gpu-{slug}{'-quick' if a.quick else ''}.json",
                    {"date": dt.datetime.now().isoformat(timespec="seconds"), "gpu": torch.cuda.get_device_name(),
                     "torch": torch.__version__, "torch_cuda": torch.version.cuda, "quick": a.quick})
    doctor_json = a.out / f"doctor-{slug}.json"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        sections = [("doctor", DOCTOR_S, lambda t: doctor(doctor_json, t, a.quick))]
        if not a.no_pytest:
            sections.append(("pytest", PYTEST_S, lambda t: pytest_gpu(t, a.quick)))
        sections.append(("bench", budget, lambda t: bench(Path(tmp) / "bench.json", t, seconds, a.quick)))
        rows = run_sections(report, sections, budget)
        report.data["bench"] = _read_json(Path(tmp) / "bench.json")
        report.write()
    print("\n" + table(rows))
    print(f"\nwrote {report.path} and {doctor_json.name} ({report.data['seconds']:.0f} s)")
    return 1 if any(r[2] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
