"""`cxr-doctor`: does this machine run cxr_fast well? Small checks, each returning one `Row` (see `run.py`).

Modules: `env` (versions, CUDA, NCCL, DALI, nvImageCodec), `decode` + `probe` (DALI decodes in a subprocess each, so
a crash is reported, not inherited), `step` (an AMP training step with refiner + EMA; pinned host-to-device
bandwidth), `loaders` (loader rates on generated shards), `run` (the table, doctor.json, the exit code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

STATUSES = ("pass", "fail", "skip", "info")


@dataclass
class Row:
    """One line of the report: `status` is pass / fail / skip (does not apply here, and why) / info (no verdict)."""

    name: str
    status: str
    detail: str
    advice: str = ""
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def guarded(name: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """A check that raises becomes a failing row: the doctor reports, it does not crash, and one failing check (a
    busy GPU, exclusive mode, MIG) hides no other."""
    from cxr_fast.errors import first_line

    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        why = first_line(e, with_type=True)
        return [Row(name, "fail", f"the check itself failed: {why}", "report doctor.json")]
    return out if isinstance(out, list) else [out]
