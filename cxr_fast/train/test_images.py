"""A prediction pass over a test folder as its own check: a bad image stops it with one line (plus the --skip_bad
hint), or, with --skip_bad, is left out and named afterwards - each image decoded once, by the pass itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cxr_fast.errors import UserError, one_line
from cxr_fast.images.check import unreadable
from cxr_fast.train.run_data import say_left_out


@contextmanager
def skip_bad_hint(test_dir: str | Path) -> Iterator[None]:
    """A UserError raised inside that names a file of `test_dir` (a test image the pass could not read) gets the
    --skip_bad hint; any other error passes unchanged."""
    try:
        yield
    except UserError as e:
        msg = one_line(e)
        if not msg.startswith(str(Path(test_dir))):
            raise
        raise UserError(f"{msg} (a test image that cannot be read: fix or remove it, or pass --skip_bad to leave "
                        f"unreadable test images out)") from None


def say_skipped(test_dir: str | Path, names: list[str], index: np.ndarray, log: Callable[[str], None] = print) -> None:
    """After a --skip_bad pass: the images it left out (the positions of `names` missing from `index`), each with
    why (only those are read again, for the reason), through `say_left_out`; none read at all is an error."""
    missing = np.setdiff1d(np.arange(len(names)), np.asarray(index)).tolist()
    if missing and len(missing) == len(names):
        raise UserError(f"{test_dir}: none of the {len(names)} test images can be read")
    reasons = unreadable([Path(test_dir) / names[i] for i in missing]) if missing else {}
    say_left_out([(names[i], reasons.get(j, "unreadable")) for j, i in enumerate(missing)], log)
