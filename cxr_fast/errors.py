"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(ValueError):
    """A mistake in the user's input (a path, a CSV, a flag). Printed as one line; exit code 2."""


def one_line(e: BaseException) -> str:
    """The message of `e` as one line. A UserError re-raised from a DataLoader worker carries the worker's traceback
    in its message ("Caught UserError in DataLoader worker ... Original Traceback ..."): keep only its last line."""
    msg = str(e).strip()
    if "Traceback (most recent call last)" in msg:
        last = msg.splitlines()[-1]
        msg = last.split("UserError: ", 1)[-1]
    return " ".join(msg.split("\n"))


def first_line(e: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """The first line of `e`'s message, at most `limit` characters; `with_type` puts the exception's class first."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[:limit]


def cli_entry(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main` so a UserError prints one line to stderr and exits 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        return 0 if rc is None else rc

    return wrapper
