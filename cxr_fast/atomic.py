"""Atomic file writes: readers never see half a file, and a killed writer leaves no partial output behind."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.tmp$")


def temp_target(name: str) -> str | None:
    """The file name an `atomic_path` temporary file (left behind by a killed writer) was meant for, else None."""
    m = _TEMP_NAME.match(name)
    return m.group("name") if m else None


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block ends without an error it is fsynced and
    renamed onto `path` (atomic on POSIX), otherwise removed. `durable=False` skips the fsync: still all or nothing
    for a killed process, but not across a power cut (for files checked by hash before reuse, like journals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique hidden name; created by the caller's writer, so it gets the usual (umask) permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> None:
    """`Path.write_bytes`, but all or nothing."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def sync_dir(path: str | Path) -> None:
    """fsync a directory: makes the renames in it durable (e.g. before a manifest claims an output is complete)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """`Path.write_text`, but all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    """Indented JSON with a final newline, written all or nothing."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
