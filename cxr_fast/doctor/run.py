"""Run every check, print the table (a verdict per line, what to do under a failing one), write doctor.json, and
give the exit code: 0 when every check that applies passes (skip and info rows never fail a run)."""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cxr_fast.doctor import Row
from cxr_fast.errors import first_line

GPU_SECONDS, CPU_SECONDS = 10.0, 2.0  # loader-rate windows


def guarded(name: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """A check that raises becomes a failing row: the doctor reports, it does not crash."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        why = first_line(e, with_type=True)
        return [Row(name, "fail", f"the check itself failed: {why}", "report doctor.json")]
    return out if isinstance(out, list) else [out]


def run_checks(*, quick: bool = False, seconds: float | None = None, loaders: bool = True,
               log: Callable[[str], None] = print) -> list[Row]:
    from cxr_fast.doctor import decode, env, step
    from cxr_fast.doctor import loaders as loader_checks

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    rows = guarded("environment", lambda: env.env_rows(cuda))
    have_dali = any(r.name == "DALI" and r.status == "pass" for r in rows)
    log("checking DALI decodes (each in a subprocess) ...")
    rows += guarded("DALI decode", lambda: decode.decode_rows(cuda, have_dali))
    rows += guarded("hardware JPEG decoder", lambda: decode.hw_decoder_row(cuda, have_dali))
    log(f"a training step on {device} ...")
    rows += guarded("training step", lambda: step.training_step_row(device))
    rows += guarded("pinned host-to-device copy", lambda: step.h2d_row(device))
    if loaders:
        window = seconds if seconds is not None else (CPU_SECONDS if quick or not cuda else GPU_SECONDS)
        log(f"loader rates ({window:g} s each) ...")
        with tempfile.TemporaryDirectory(prefix="cxr-doctor-") as tmp:
            rows += guarded("loaders", lambda: loader_checks.loader_rows(Path(tmp), cuda, have_dali, window, quick))
    else:
        rows.append(Row("loaders", "skip", "--no_loaders"))
    return rows


def exit_code(rows: list[Row]) -> int:
    return 1 if any(r.status == "fail" for r in rows) else 0


def table(rows: list[Row]) -> str:
    w = max(len(r.name) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{r.status.upper():<4}  {r.name:<{w}}  {r.detail}")
        if r.advice and r.status in ("fail", "skip", "info"):
            lines.append(f"{'':<4}  {'':<{w}}  -> {r.advice}")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip", "info")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    skipped = [r.name for r in rows if r.status == "skip"]
    verdict = "this machine runs cxr_fast as checked" if not counts["fail"] else "fix the FAIL lines above"
    return f"{head}: {verdict}" + (f"\nskipped: {'; '.join(skipped)}" if skipped else "")


def report(rows: list[Row], seconds: float) -> dict:
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "seconds": round(seconds, 1),
            "machine": {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                        "cuda": torch.cuda.is_available(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "ok": exit_code(rows) == 0, "skipped": [r.name for r in rows if r.status == "skip"],
            "rows": [r.to_dict() for r in rows]}


def run_doctor(out: Path | None, *, quick: bool = False, seconds: float | None = None, loaders: bool = True,
               log: Callable[[str], None] = print) -> tuple[list[Row], int]:
    from cxr_fast.atomic import write_json_atomic

    t = time.perf_counter()
    rows = run_checks(quick=quick, seconds=seconds, loaders=loaders, log=log)
    log("")
    log(table(rows))
    log("")
    log(summary(rows))
    if out is not None:
        write_json_atomic(out, report(rows, time.perf_counter() - t))
        log(f"wrote {out}")
    return rows, exit_code(rows)
