"""A full disk as one line: free-space checks before long writes, and ENOSPC/EDQUOT turned into a UserError.

A write that runs out of space fails in different clothes: `OSError(ENOSPC)` ("No space left on device"), `EDQUOT`
(a cluster's per-user quota) and torch.save's `RuntimeError` from its zip writer ("[enforce fail at
inline_container.cc:...] . unexpected pos N vs M" or "PytorchStreamWriter failed writing file data/0: file write
failed"). `disk_full` recognises them (also as the cause of another error), `on_disk_full` turns them into
UserError("no space left on <device> writing <what> to <path>: needs ~X, Y free ...") for the CLI's one line.
Writes through `cxr_fast.atomic` leave no partial file under the final name when this happens.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr_fast.errors import UserError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB', 3.2e9 -> '3.2 GB' (decimal units, as `df -H` and file managers print them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def existing_parent(path: str | Path) -> Path:
    """`path` or its nearest existing ancestor (the folder whose filesystem a new file there would use)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes free to an unprivileged writer on the filesystem that holds (or would hold) `path`."""
    return shutil.disk_usage(existing_parent(path)).free


def disk_full(e: BaseException | None) -> bool:
    """Whether `e` (or an exception it was raised from) is an out-of-space or over-quota write failure."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILED):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_message(path: str | Path, what: str, needed: int | None = None, hint: str = "") -> str:
    """One line: what could not be written where, bytes needed (if known) vs free now, and what to do."""
    path = Path(path).absolute()
    free = free_bytes(path)
    need = f"needs ~{human_bytes(needed)}, " if needed else ""
    return (f"no space left on the device (or over quota) writing {what} to {path}: {need}{human_bytes(free)} "
            f"free there now; free some space or choose a folder on another filesystem" + (f"; {hint}" if hint else ""))


@contextmanager
def on_disk_full(path: str | Path, what: str, needed: int | None = None, hint: str = "") -> Iterator[None]:
    """Re-raise an out-of-space failure inside the block as one UserError line (see `disk_full_message`).

    E.g. `with on_disk_full(ckpt, "the fold 2 checkpoint", needed=approx): torch.save(obj, tmp)`. Other errors pass
    through unchanged. The caller's atomic writes have already removed their temporary files.
    """
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as e:
        if not disk_full(e):
            raise
        raise UserError(disk_full_message(path, what, needed, hint)) from None


def not_enough_space(path: str | Path, needed: int, free: int, what: str, hint: str = "") -> UserError:
    """The one line for a write refused before it starts: what, where, bytes needed vs free, what to do."""
    return UserError(f"not enough free space for {what} in {Path(path).absolute()}: needs ~{human_bytes(needed)}, "
                     f"{human_bytes(free)} free; free some space or choose a folder on another filesystem"
                     + (f"; {hint}" if hint else ""))


def check_free_space(path: str | Path, needed: int, what: str, hint: str = "") -> None:
    """UserError before a long write when `needed` bytes do not fit on `path`'s filesystem now."""
    free = free_bytes(path)
    if needed > free:
        raise not_enough_space(path, needed, free, what, hint)
