"""How many processes the machine lets this process use (CPU affinity, capped by a cgroup v2 or v1 CPU quota), and
the process pool cxr-shard's steps share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")  # a module constant so tests can point it at fake quota files


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: Path | None = None) -> int | None:
    """CPUs allowed by the cgroup's quota (rounded up), or None when there is no quota (or no cgroup files).

    v2: `cpu.max` = "max 100000" (no limit) or "200000 100000" (2 CPUs); v1: `cpu/cpu.cfs_quota_us` (-1 = no limit)
    over `cpu/cpu.cfs_period_us`.
    """
    root = CGROUP_ROOT if root is None else root
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
        return None
    for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(root / d / "cpu.cfs_quota_us"), _read(root / d / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:
            return None
        return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None
    return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (os.cpu_count() where there is none), capped by the quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def default_workers() -> int:
    """Default worker processes for encoding and verifying: every usable CPU."""
    return usable_cpus()


@contextmanager
def worker_pool(workers: int):
    """A spawn pool of `workers` processes that die with their parent (None for workers <= 1: run inline).

    spawn: safe when the caller (cxr-train) already runs torch/CUDA/DALI threads.
    """
    if workers <= 1:
        yield None
        return
    from cxr_fast.shards.encode import worker_init

    pool = get_context("spawn").Pool(workers, initializer=worker_init)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def pool_map(pool, fn: Callable, tasks: Iterable, ordered: bool = False) -> Iterator:
    """`fn` over `tasks` in the pool (results as they finish unless `ordered`), or inline without one."""
    if pool is None:
        return map(fn, tasks)
    return pool.imap(fn, tasks) if ordered else pool.imap_unordered(fn, tasks)
