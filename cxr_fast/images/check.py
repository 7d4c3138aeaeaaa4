"""Which of a list of images cannot be read: a full decode of each (a truncated file is only found that way)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cxr_fast.errors import UserError, one_line
from cxr_fast.images.read import read_gray8
from cxr_fast.images.window import DEFAULT_MAX_PIXELS

MAX_THREADS = 32  # past this the GIL, held between a PNG's decode chunks, is the limit, not the cores (a guess)


def _reason(path: Path, max_pixels: int) -> str | None:
    try:
        read_gray8(path, max_pixels=max_pixels)
    except UserError as e:
        msg = one_line(e)
        return msg.removeprefix(f"{path}: ")
    return None


def unreadable(paths: list[Path], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None) -> dict[int, str]:
    """{position in `paths`: why} for every image `read_gray8` refuses. Threads, one per usable core (up to
    MAX_THREADS): PIL releases the GIL while it decodes (2 threads ran as fast as 2 processes on 2 cores), and a
    thread pool is safe inside a torchrun rank, whose process group threads a fork would copy mid-state. Under
    torchrun only rank 0 runs it (`dist.run_on_main`), so it may take every core."""
    workers = workers or max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda p: _reason(Path(p), max_pixels), paths))
    return {i: r for i, r in enumerate(reasons) if r is not None}
