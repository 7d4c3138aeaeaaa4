"""`cxr-doctor`: one command that tells, in about a minute, whether this machine runs cxr_fast well.

Checks torch/CUDA/driver/GPUs, NCCL, DALI and nvImageCodec versions, the hardware JPEG decoder, DALI decodes in both
--dali_decode forms (each in a subprocess), an AMP training step with refiner + EMA, pinned host-to-device
bandwidth and loader rates on generated shards. Prints a table with a verdict per line, writes doctor.json, exits 0
when every check that applies passes (1 otherwise). Without a GPU it runs the CPU checks and lists what it skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-doctor", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("doctor.json"), help="the JSON report (default doctor.json)")
    p.add_argument("--quick", action="store_true", help="short loader windows and small data, no loader verdicts")
    p.add_argument("--seconds", type=float, help="loader-rate window (default 10 on a GPU, 2 on a CPU or --quick)")
    p.add_argument("--no_loaders", action="store_true", help="skip the loader rates")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.seconds is not None and a.seconds <= 0:
        raise UserError(f"--seconds must be positive, got {a.seconds}")
    from cxr_fast.doctor.run import run_doctor

    _, code = run_doctor(a.out, quick=a.quick, seconds=a.seconds, loaders=not a.no_loaders)
    return code


if __name__ == "__main__":
    sys.exit(main())
