"""A small tmpfs to fill a disk for real (ENOSPC), for the tests of what a full disk does; skips where the test
process may not mount (not root, no CAP_SYS_ADMIN), saying so."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a `size` tmpfs on `path` for the block (unmounted after it, whatever happens)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                           capture_output=True, text=True, timeout=30)
        why = r.stderr.strip() if r.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why:
        pytest.skip(f"cannot mount a {size} tmpfs to fill a disk for real (needs root or CAP_SYS_ADMIN; "
                    f"euid {os.geteuid()}): {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def resize_tmpfs(path: Path, size: str) -> None:
    """Give a mounted tmpfs more room ("once there is room")."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True, timeout=30)
