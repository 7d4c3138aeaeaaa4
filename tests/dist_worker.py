"""Run under torchrun by tests/test_dist.py: one of cxr_fast.dist's helpers on 2 gloo processes.

argv[1] is the mode; what the test checks is printed on stdout (one line per rank) or is the exit code."""

import sys
import time

import torch

from cxr_fast import dist
from cxr_fast.errors import UserError


def main(mode: str, arg: str | None) -> int:
    dist.setup("cpu")
    try:
        if mode in ("wait_for_main", "plain_barrier"):
            if dist.is_main():
                time.sleep(float(arg))  # rank 0's long work (packing shards) outlasting the group timeout
            dist.wait_for_main() if mode == "wait_for_main" else torch.distributed.barrier()
            dist.barrier()  # the main group still works afterwards
            print(f"rank {dist.rank()} passed", flush=True)
        elif mode == "average_buffers":
            bn = torch.nn.BatchNorm1d(3)
            bn.running_mean.fill_(float(dist.rank()))
            bn.running_var.fill_(1.0 + 2 * dist.rank())
            dist.average_buffers(bn)
            print(f"rank {dist.rank()} mean {bn.running_mean.tolist()} var {bn.running_var.tolist()} "
                  f"batches {int(bn.num_batches_tracked)}", flush=True)
        elif mode == "check_shared":
            try:
                dist.check_shared(arg, "--out_dir")
            except UserError as e:
                print(f"rank {dist.rank()} error: {e}", flush=True)
                return 2
            print(f"rank {dist.rank()} shared", flush=True)
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
