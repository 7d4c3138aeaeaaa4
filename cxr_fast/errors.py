"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(ValueError):
    """A mistake in the user's input (a path, a CSV, a flag). Printed as one line; exit code 2."""


def cli_entry(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main` so a UserError prints one line to stderr and exits 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        return 0 if rc is None else rc

    return wrapper
