"""Progress for long work: one helper, so every long step shows count, rate and ETA the same way.

On a terminal: a tqdm bar. When stderr is not a terminal (a log file, CI, a pipe): at most one plain line per 10%
of the total (count, rate, ETA), so 100k-item steps do not flood the log with carriage-return redraws.
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class LineProgress:
    """tqdm's `update` / `set_postfix` / `close` for a log: a line at each new tenth of `total` and one at the end.

    Without a total it prints at 1, 2, 4, 8, ... items. Lines look like
    `encode: 60% 67272/112120 img, 812.3 img/s, ETA 0:55`.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", file=None, steps: int = 10):
        self.total, self.desc, self.unit, self.steps = total, desc, unit, steps
        self.file = file if file is not None else sys.stderr
        self.n, self.t0, self.postfix = 0, time.perf_counter(), ""
        self._shown = 0     # tenths already reported (or, without a total, the next count to report at)
        self._last_n = -1
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            step = min(self.steps, self.n * self.steps // self.total)
            if step > self._shown:
                self._shown = step
                self._emit()
        elif self.n >= max(1, self._shown):
            self._shown = max(1, self._shown) * 2
            self._emit()

    def _emit(self) -> None:
        dt = time.perf_counter() - self.t0
        rate = self.n / dt if dt > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta = "done" if self.n >= self.total else (f"ETA {_clock(left)}" if rate > 0 else "ETA ?")
            line = (f"{head}{100 * self.n // self.total:3d}% {self.n}/{self.total} {self.unit}, {rate:.1f} "
                    f"{self.unit}/s, {_clock(dt)} elapsed, {eta}")
        else:
            line = f"{head}{self.n} {self.unit}, {rate:.1f} {self.unit}/s, {_clock(dt)} elapsed"
        print(line + (f" ({self.postfix})" if self.postfix else ""), file=self.file, flush=True)
        self._last_n = self.n

    def close(self) -> None:
        if not self.closed and self.n and self.n != self._last_n and not self.total:
            self._emit()  # the final count of an open-ended run (a total run reported its 100% already)
        self.closed = True


class _Off:
    """A disabled bar: every call does nothing."""

    n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int | None = None, desc: str = "", enabled: bool = True, unit: str = "it", leave: bool = False):
    """A progress display with `.update(n)`, `.set_postfix(**kw)` and `.close()`, usable as a context manager: a tqdm
    bar on a terminal, `LineProgress` lines when stderr is not one, nothing when `enabled` is false."""
    if not enabled:
        return _Off()
    if not _is_terminal(sys.stderr):
        return LineProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, unit=unit)


def loader_bar(loader, enabled: bool, desc: str):
    """A bar over a loader's batches (its `len()` when it has one)."""
    try:
        total = len(loader)
    except TypeError:
        total = None
    return progress_bar(total, desc, enabled, unit="batch")
