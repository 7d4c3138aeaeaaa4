"""cxr-shard's per-image encode on MIMIC-sized JPEGs, before and after reduced-scale JPEG decoding (`scale.py --mode
jpeg-draft`): img/s of one process doing exactly what a cxr-shard worker does per image (decode, shrink, encode).

before: `read_gray8(path)` decodes all ~7.8M pixels, then Lanczos to --resize (the code up to issue 24);
after:  `read_gray8(path, shrink_to=resize)` decodes at the smallest DCT scale still >= the target (1/4 for 2544x3056
        -> 426x512), then the same Lanczos. Both outputs are compared pixel by pixel.
The sources are two real NIH radiographs from tests/assets, upscaled to MIMIC-CXR's typical 2544x3056 with a little
Gaussian noise (the film grain a real 3k scan has), saved as q95 JPEG (~1-1.7 MB each).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common.report import cpu_model
from cxr_fast.images.read import read_gray8
from cxr_fast.shards.encode import EncodeOptions, encode, shrink

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "assets"


def make_sources(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """n JPEGs of `size` (W, H) from the real radiographs in tests/assets, upscaled, with sigma-1.5 noise."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [Image.open(p).convert("L").resize(size, Image.Resampling.BICUBIC)
             for p in sorted(ASSETS.glob("*.png"))]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = np.asarray(bases[i % len(bases)], dtype=np.float64) + rng.normal(0, 1.5, (size[1], size[0]))
        path = folder / f"mimic_{i:03d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def _one(path: Path, opts: EncodeOptions, draft: bool) -> tuple[bytes, np.ndarray]:
    if draft:
        arr, info = read_gray8(path, shrink_to=opts.resize)
        img = shrink(arr, opts.resize, (info.width, info.height))
    else:
        img = shrink(read_gray8(path)[0], opts.resize)
    return encode(img, opts), np.asarray(img)


def _timed(paths: list[Path], opts: EncodeOptions, draft: bool, repeats: int) -> tuple[float, list, int]:
    _one(paths[0], opts, draft)  # warm-up: imports, PIL plugin registration, page cache
    t0 = time.perf_counter()
    outs, nbytes = [], 0
    for _ in range(repeats):
        for p in paths:
            data, img = _one(p, opts, draft)
            nbytes += len(data)
            outs.append(img)
    secs = time.perf_counter() - t0
    return len(outs) / secs, outs[:len(paths)], nbytes // len(outs)


def run(work: Path, n: int, size: tuple[int, int], resize: int, repeats: int) -> dict:
    """Time the per-image encode before and after (one run each, in this process) and compare their outputs."""
    load = os.getloadavg()[0]
    paths = make_sources(work / "mimic", n, size)
    opts = EncodeOptions(resize, "jpg", 95, None, 100_000_000)
    before, out_b, bytes_b = _timed(paths, opts, False, repeats)
    after, out_a, bytes_a = _timed(paths, opts, True, repeats)
    diffs = [np.abs(a.astype(np.float64) - b) for a, b in zip(out_a, out_b)]
    return {
        "what": "cxr-shard per-image encode (decode + Lanczos shrink + q95 JPEG), one process",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "load_avg_1m_at_start": load},
        "sources": {"images": n, "size_wh": list(size), "mean_bytes": int(np.mean([p.stat().st_size for p in paths])),
                    "from": "tests/assets NIH radiographs, bicubic upscale + N(0, 1.5) noise, q95 JPEG"},
        "resize": resize, "encodes_per_mode": n * repeats,
        "img_per_s": {"before_full_decode": before, "after_reduced_scale_decode": after},
        "speedup": after / before,
        "stored_bytes_mean": {"before": bytes_b, "after": bytes_a},
        "difference_grey_levels": {"mean_abs": float(np.mean([d.mean() for d in diffs])),
                                   "max_abs": float(max(d.max() for d in diffs))},
    }


def markdown(res: dict) -> str:
    m, ips, d = res["machine"], res["img_per_s"], res["difference_grey_levels"]
    w, h = res["sources"]["size_wh"]
    return "\n".join([
        f"# Reduced-scale JPEG decode in cxr-shard ({res['date'][:10]})", "",
        (f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), no GPU. The cores are shared with "
        f"other jobs (load average {m['load_avg_1m_at_start']:.1f} when it started): one run per mode, so both "
        f"figures carry that noise; the ratio is the number to read."), "",
        (f"{res['sources']['images']} MIMIC-sized sources ({w}x{h}, mean {res['sources']['mean_bytes'] / 1e6:.2f} MB "
        f"q95 JPEG; {res['sources']['from']}), each encoded {res['encodes_per_mode'] // res['sources']['images']}x "
        f"per mode to --resize {res['resize']} by one process doing a cxr-shard worker's per-image work."), "",
        "| decode | img/s (1 process) |", "|---|---:|",
        f"| before: full size, then Lanczos | {ips['before_full_decode']:.1f} |",
        f"| after: DCT-scaled (`Image.draft`), then Lanczos | {ips['after_reduced_scale_decode']:.1f} |", "",
        (f"Speed-up {res['speedup']:.2f}x per core (cxr-shard's encode pass scales it by --workers). Stored images "
        f"differ from the full-decode ones by {d['mean_abs']:.2f} grey levels on average (max {d['max_abs']:.0f}); "
        f"mean stored size {res['stored_bytes_mean']['before']} -> {res['stored_bytes_mean']['after']} bytes."), ""])
