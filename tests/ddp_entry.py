"""torchrun entry for the DDP tests: cxr-train with faults injected through the environment.

CXR_FAST_FAIL_RANK=r      rank r raises in its first epoch (one failing rank must end the whole job, no hang);
CXR_FAST_SLOW_SHARDS_S=s  rank 0's shard build takes s seconds longer (the others must wait past the group timeout).
CXR_FAST_SIGNAL_AT=r:n    rank r sends itself SIGTERM during its n-th training step (a preemption seen by one rank).
"""

import os
import signal
import sys
import time

from cxr_fast.cli import train as train_cli
from cxr_fast.shards import writer
from cxr_fast.train import fold

_train_one_epoch, _write_shards = fold.train_one_epoch, writer.write_shards


def _failing(*args, **kwargs):
    if os.environ.get("RANK") == os.environ["CXR_FAST_FAIL_RANK"]:
        raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")
    return _train_one_epoch(*args, **kwargs)


def _slow(*args, **kwargs):
    time.sleep(float(os.environ["CXR_FAST_SLOW_SHARDS_S"]))
    return _write_shards(*args, **kwargs)


def _signal_at(rank: str, n: int):
    from cxr_fast.train.step import TrainStep

    calls, original = [0], TrainStep.__call__

    def step(self, *args, **kwargs):
        calls[0] += 1
        if os.environ.get("RANK") == rank and calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    TrainStep.__call__ = step


if "CXR_FAST_SIGNAL_AT" in os.environ:
    _r, _n = os.environ["CXR_FAST_SIGNAL_AT"].split(":")
    _signal_at(_r, int(_n))
if "CXR_FAST_FAIL_RANK" in os.environ:
    fold.train_one_epoch = _failing
if "CXR_FAST_SLOW_SHARDS_S" in os.environ:
    writer.write_shards = _slow

if __name__ == "__main__":
    sys.exit(train_cli.main())
