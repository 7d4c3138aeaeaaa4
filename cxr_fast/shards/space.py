"""Disk space of a cxr-shard build: an estimate made before the long pass, so a build that clearly cannot fit is
refused in seconds (not after an hour of encoding), and the figures the out-of-space message names.

At its peak a build holds every encoded image twice, once in the spool (the work folder beside OUT) and once in the
tars, plus the tars' headers (512 bytes per member, 4 members per sample, each padded to 512 bytes). The encoded
size is measured, not guessed: a few images spread over the list are decoded, shrunk and encoded with the run's
options, and their mean is scaled to every image. What an earlier run left (spool, tars) is counted as already paid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_fast.disk import free_bytes, human_bytes, not_enough_space
from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8
from cxr_fast.shards import format as fmt
from cxr_fast.shards.encode import EncodeOptions, encode, shrink

SAMPLED = 12                   # images encoded for the estimate
TAR_OVERHEAD = 7 * 512 + 256   # per sample: 4 member headers, 3 small members padded to a block, the image's padding
SMALL_FILES = 1024             # per tar: its .idx line block, plus samples.csv/folds.csv rows per sample (~100 B)
REFUSE_BELOW = 0.8             # refuse only when free < this x the estimate: the estimate has a margin of error


def encoded_bytes_per_image(paths: list[str], opts: EncodeOptions, k: int = SAMPLED) -> float | None:
    """Mean encoded size of up to `k` images spread over `paths` (unreadable ones skipped; None if none reads)."""
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(k, len(paths)))}) if paths else []
    sizes = []
    for i in picks:
        try:
            arr, info = read_gray8(paths[i], window=opts.window, max_pixels=opts.max_pixels, shrink_to=opts.resize)
        except UserError:
            continue
        sizes.append(len(encode(shrink(arr, opts.resize, (info.width, info.height)), opts)))
    return float(np.mean(sizes)) if sizes else None


def _bytes_under(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _own_bytes(out: Path) -> int:
    if not out.is_dir():
        return 0
    return sum(p.stat().st_size for p in out.iterdir() if fmt.is_own(p.name) and p.is_file())


def build_bytes(paths: list[str], opts: EncodeOptions, samples_per_shard: int) -> int | None:
    """Estimated peak bytes of a fresh build of `paths` (spool + tars + small files); None when nothing reads."""
    per = encoded_bytes_per_image(paths, opts)
    if per is None:
        return None
    n = len(paths)
    return int(n * (2 * per + TAR_OVERHEAD) + (-(-n // samples_per_shard) + n // 10) * SMALL_FILES)


def check_space(out: Path, paths: list[str], opts: EncodeOptions, samples_per_shard: int, log) -> int | None:
    """Refuse (UserError, needed vs free) a build that clearly will not fit beside what an earlier run left in OUT
    and the work folder; returns the estimated bytes still to write (None when no image could be sampled)."""
    total = build_bytes(paths, opts, samples_per_shard)
    if total is None:
        return None
    have = _bytes_under(fmt.work_dir(out)) + _own_bytes(out)
    needed = max(0, total - have)
    free = free_bytes(out)
    if free < REFUSE_BELOW * needed:
        raise not_enough_space(out, needed, free, f"the shards and spool of {len(paths)} images (estimated from "
                               f"{min(SAMPLED, len(paths))} of them encoded)", hint="a stopped build resumes when rerun")
    elif free < needed:
        log(f"warning: {out}: the build may need ~{human_bytes(needed)} and {human_bytes(free)} is free; "
            f"if it runs out of space, free some and rerun it: finished work is kept")
    return needed
