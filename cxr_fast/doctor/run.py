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

from cxr_fast.doctor import Row, guarded

GPU_SECONDS, CPU_SECONDS = 10.0, 2.0  # loader-rate windows


def run_checks(*, quick: bool = False, seconds: float | None = None, loaders: bool = True,
               log: Callable[[str], None] = print,
               on_rows: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
    """Every check in order; `on_rows(rows so far)` after each, so a report survives a later hang or crash."""
    from cxr_fast.doctor import decode, env, step
    from cxr_fast.doctor import loaders as loader_checks

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    rows: list[Row] = []

    def add(name: str, fn: Callable[[], Row | list[Row]]) -> None:
        rows.extend(guarded(name, fn))
        on_rows(rows)

    add("environment", lambda: env.env_rows(cuda))
    have_dali = any(r.name == "DALI" and r.data.get("usable") for r in rows)
    log("checking DALI decodes (each in a subprocess) ...")
    add("DALI decode", lambda: decode.decode_rows(cuda, have_dali))
    add("hardware JPEG decoder", lambda: decode.hw_decoder_row(cuda, have_dali))
    log(f"a training step on {device} ...")
    add("training step", lambda: step.training_step_row(device))
    add("pinned host-to-device copy", lambda: step.h2d_row(device))
    if loaders:
        window = seconds if seconds is not None else (CPU_SECONDS if quick or not cuda else GPU_SECONDS)
        log(f"loader rates ({window:g} s each) ...")
        with tempfile.TemporaryDirectory(prefix="cxr-doctor-") as tmp:
            add("loaders", lambda: loader_checks.loader_rows(Path(tmp), cuda, have_dali, window, quick))
    else:
        add("loaders", lambda: Row("loaders", "skip", "--no_loaders"))
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


def _gpu_name() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception as e:  # noqa: BLE001  (a report, whatever the GPU says)
        return f"unknown ({type(e).__name__})"


def report(rows: list[Row], seconds: float, *, complete: bool = True) -> dict:
    """doctor.json; `complete` False while checks still run (written after each, so a crash leaves the rows so far)."""
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "seconds": round(seconds, 1),
            "complete": complete,
            "machine": {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                        "cuda": torch.cuda.is_available(), "gpu": _gpu_name()},
            "ok": exit_code(rows) == 0 and complete, "skipped": [r.name for r in rows if r.status == "skip"],
            "rows": [r.to_dict() for r in rows]}


def run_doctor(out: Path | None, *, quick: bool = False, seconds: float | None = None, loaders: bool = True,
               log: Callable[[str], None] = print) -> tuple[list[Row], int]:
    from cxr_fast.atomic import write_json_atomic

    t = time.perf_counter()

    def partial(rows: list[Row]) -> None:
        if out is not None:
            write_json_atomic(out, report(rows, time.perf_counter() - t, complete=False))

    partial([])
    rows = run_checks(quick=quick, seconds=seconds, loaders=loaders, log=log, on_rows=partial)
    log("")
    log(table(rows))
    log("")
    log(summary(rows))
    if out is not None:
        write_json_atomic(out, report(rows, time.perf_counter() - t))
        log(f"wrote {out}")
    return rows, exit_code(rows)
