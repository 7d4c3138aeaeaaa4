"""Progress bars for long work: one helper, so every long step shows rate and ETA the same way."""

from __future__ import annotations


def progress_bar(total: int | None = None, desc: str = "", enabled: bool = True, unit: str = "it", leave: bool = False):
    """A tqdm bar (disabled when `enabled` is false); use `.update(n)` and `.close()`, or as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True, unit=unit)


def loader_bar(loader, enabled: bool, desc: str):
    """A bar over a loader's batches (its `len()` when it has one)."""
    try:
        total = len(loader)
    except TypeError:
        total = None
    return progress_bar(total, desc, enabled, unit="batch")
