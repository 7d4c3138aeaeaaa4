"""An advisory lock on an output folder, held for a whole run, so two jobs never write the same folder at once.

`fcntl.flock(LOCK_EX | LOCK_NB)` on `<folder>/.lock`: the kernel releases it when the holder's process dies, however
it dies (`kill -9`, OOM killer, node preemption of the job's processes), so a lock file left behind never blocks the
next run; only a live holder does. The holder writes its host, pid and start time into the file (after taking the
lock) so a refused run can say who holds it. Forked children (DataLoader workers) close their copy of the lock, so
a worker that outlives a killed parent does not keep the folder locked.

Limits: flock is advisory (only runs that take it are kept out) and per open file: on NFS (Linux >= 2.6.12 emulates
flock with fcntl byte-range locks, which the server holds) it works across hosts; a filesystem without locks (ENOLCK,
EOPNOTSUPP, e.g. Lustre mounted without `flock`) gets a warning on stderr and the run goes on unlocked.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr_fast.errors import UserError

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # file descriptors of the locks this process holds


def _close_in_child() -> None:
    """After fork: drop the child's copies of held locks (the parent keeps them; only a last close unlocks)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder(folder: str | Path) -> str:
    """Who holds (or last held) `folder`'s lock, as the lock file says: 'host H, pid P, started T (what)'."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not fields.get("pid"):
        return "a process that has not written its name yet"
    return (f"host {fields.get('host', '?')}, pid {fields['pid']}, started {fields.get('started', '?')}"
            + (f" ({fields['what']})" if fields.get("what") else ""))


def _same_file(fd: int, path: Path) -> bool:
    """The locked descriptor is still the file at `path` (not one a releasing holder unlinked meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _take(path: Path, folder: Path, what: str) -> int | None:
    """The descriptor of the taken lock; None when the filesystem has no locks; UserError when someone holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{folder} is in use by another {what} run ({holder(folder)}): wait for it to finish, "
                            f"stop it, or choose another output folder (the lock is {path}; it is released when "
                            f"that process exits, even if killed)") from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                print(f"warning: {folder}: this filesystem does not support file locks ({os.strerror(e.errno)}); "
                      f"running without the lock that keeps a second run out of this folder", file=sys.stderr)
                return None
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # we locked a file the previous holder unlinked on release: take the new one


def _write_holder(fd: int, what: str) -> None:
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    text = f"host={socket.gethostname()}\npid={os.getpid()}\nstarted={started}\nwhat={what}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)


@contextmanager
def folder_lock(folder: str | Path, what: str = "cxr_fast") -> Iterator[Path]:
    """Hold `folder`'s lock (creating the folder) for the block; UserError naming the holder if another run has it.

    `what` names the run in the lock file and in the refusal (e.g. "cxr-shard"). The lock file is removed on a
    clean release; one left by a killed holder is simply taken over. Yields the folder.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    try:
        fd = _take(path, folder, what)
    except PermissionError:
        raise UserError(f"{path}: cannot create the folder's lock file (permission denied)") from None
    if fd is None:
        yield folder
        return
    _HELD.add(fd)
    try:
        try:
            _write_holder(fd, what)
        except OSError:
            pass  # a full disk: the lock itself holds; only the holder's name is missing
        yield folder
    finally:
        _HELD.discard(fd)
        if _same_file(fd, path):
            path.unlink(missing_ok=True)  # while still locked: a waiter that opened it re-checks and retries
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
