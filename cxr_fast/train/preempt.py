"""Preemption: SIGTERM / SIGUSR1 / SIGINT stop training at the end of the current step, with a resumable last.pth.

Schedulers warn before they kill: Slurm sends SIGTERM (preemption, `scancel`) or the signal of `--signal`
(e.g. USR1 120 s before the time limit); clouds send SIGTERM. `watch()` turns these signals into a flag; the
training loop asks `should_stop()` after every step; then the fold writes last.pth with the position inside the
epoch (`train.resume`), prints one line and raises `Preempted`, which `cxr-train` turns into exit code
`EXIT_RESUMABLE` (75, sysexits' EX_TEMPFAIL: "try again later"), distinct from a process killed by a signal
(the shell's 128 + n: then nothing was saved). A second SIGINT (Ctrl-C twice) interrupts at once.

Under torchrun every rank must stop at the same step (else the ranks that go on hang in DDP's next all-reduce):
`should_stop` agrees with one all-reduce MAX of the local flag per step on the long-timeout gloo group of
`cxr_fast.dist` (a CPU tensor: no GPU sync; 1.7 ms measured between 2 local processes on a loaded 2-vCPU box).
Rank 0 writes.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from cxr_fast import dist

EXIT_RESUMABLE = 75
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
_state = {"signal": None, "watching": False}


class Preempted(Exception):
    """Training stopped on a signal after writing a resumable last.pth; `cxr-train` exits with EXIT_RESUMABLE."""

    def __init__(self, message: str):
        super().__init__(message)
        self.exit_code = EXIT_RESUMABLE


def _handler(signum: int, frame) -> None:
    if _state["signal"] == signal.SIGINT and signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
    if _state["signal"] is None:
        _state["signal"] = signum


@contextmanager
def watch() -> Iterator[None]:
    """Catch SIGTERM / SIGUSR1 / SIGINT for the block (main thread only; elsewhere a no-op), then restore the
    previous handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [getattr(signal, n) for n in SIGNALS if hasattr(signal, n)]
    old = {s: signal.getsignal(s) for s in sigs}
    _state.update(signal=None, watching=True)
    for s in sigs:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(signal=None, watching=False)


def requested() -> str | None:
    """The name of the signal this process received (None if none)."""
    s = _state["signal"]
    return signal.Signals(s).name if s is not None else None


def _who() -> str:
    """The stop signal's name for the one-line messages: this process's, or another rank's."""
    return requested() or "a signal on another rank"


def should_stop() -> bool:
    """True on every rank when any rank received a stop signal (one all-reduce per call under torchrun)."""
    return dist.any_rank(_state["signal"] is not None)  # the flag itself without torchrun


def check_between(what: str) -> None:
    """Between folds and before the test stage: a signal received there stops the run with every finished fold
    saved (all ranks call this at the same point: `should_stop` is a collective under torchrun)."""
    if should_stop():
        raise Preempted(f"stopped on {_who()} before {what}: the finished folds are saved; run the same command with "
                        f"--resume to continue (exit code {EXIT_RESUMABLE})")


def stop_message(fold: int, epoch: int, batches: int, steps: int, path) -> str:
    """The one line printed when training stops on a signal."""
    where = f"after step {batches} of {steps} of epoch {epoch}" if batches else f"after epoch {epoch - 1}"
    return (f"stopped on {_who()}: fold {fold} saved {where} in {path}; run the same command with --resume to continue "
            f"from there (exit code {EXIT_RESUMABLE})")

