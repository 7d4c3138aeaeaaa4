"""The test-folder check (decode every test image once, to find a bad one before training) under 2-process torchrun,
before and after issue 24, and cxr-predict's decode work per test image.

torchrun, before: every rank runs the check on the whole folder (each with its own decode threads, on the same
cores); after: rank 0 alone runs it and broadcasts the names (`dist.run_on_main`). The time is the wall time from a
barrier before the check to a barrier after it, as rank 0 sees it (what every rank waits before training starts).
predict, before: the check, then one pass of the PIL loader per fold; after: one pass, which is the check. Decodes
are counted (read_gray8 calls) and timed without a model (the decode work is what changed).
The sources are the two real NIH radiographs of tests/assets, upscaled to 1024x1024 with N(0, 1.5) noise, saved as
PNG: `--distinct` different files, copied to `--images` (decode work is the same per file; the copies are in the
page cache either way).

    python -m benchmarks.folder_check --images 2000 --out benchmarks/results/test-check.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
from benchmarks.common.report import cpu_model


def make_folder(folder: Path, n: int, distinct: int, size: int = 1024) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bases = [Image.open(p).convert("L").resize((size, size), Image.Resampling.BICUBIC)
             for p in sorted(ASSETS.glob("*.png"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"test_{i:05d}.png"
        if i < distinct:
            arr = np.asarray(bases[i % len(bases)], dtype=np.float64) + rng.normal(0, 1.5, (size, size))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
        else:
            shutil.copyfile(paths[i % distinct], path)
        paths.append(path)
    return paths


def worker(mode: str, folder: str) -> None:
    """One torchrun process: the check as `mode` does it, timed between two barriers; rank 0 prints JSON."""
    from cxr_fast import dist
    from cxr_fast.train import run_data

    dist.setup("cpu")
    try:
        dist.wait_for_main()
        t0 = time.perf_counter()
        check = run_data._checked_test_names if mode == "before" else run_data.checked_test_names
        names = check(folder, False, None)
        mine = time.perf_counter() - t0
        dist.wait_for_main()
        wall = time.perf_counter() - t0
        per_rank = dist.gather_objects(mine)
        if dist.is_main():
            print(json.dumps({"mode": mode, "wall_s": wall, "per_rank_s": per_rank, "images": len(names)}), flush=True)
    finally:
        dist.cleanup()


def torchrun(mode: str, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(29500 + os.getpid() % 1000), __file__, "--worker", mode, str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("{")))


def predict_decodes(paths: list[Path], folds: int, before: bool) -> dict:
    """cxr-predict's decode work over `paths` without a model: (check +) loader passes, read_gray8 calls counted."""
    import torch

    from cxr_fast.data.augment import AugmentSpec
    from cxr_fast.images import check
    from cxr_fast.pipelines import pil
    from cxr_fast.train.run_data import test_file_set

    calls = [0]
    real = pil.read_gray8

    def counting(path, *args, **kwargs):
        calls[0] += 1
        return real(path, *args, **kwargs)

    pil.read_gray8 = check.read_gray8 = counting
    try:
        samples = test_file_set(paths[0].parent, [p.name for p in paths], 14)
        t0 = time.perf_counter()
        if before:
            check.unreadable(paths)
        loader = pil.build_pil_loader(samples, AugmentSpec.for_eval(512), 16, torch.device("cpu"), num_workers=0)
        for _ in range(folds if before else 1):
            for _batch in loader:
                pass
        secs = time.perf_counter() - t0
    finally:
        pil.read_gray8 = check.read_gray8 = real
    return {"seconds": secs, "decodes_per_image": calls[0] / len(paths)}


def run(n: int, distinct: int, predict_images: int) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-test-check-") as tmp:
        paths = make_folder(Path(tmp) / "test", n, distinct)
        rows = {mode: torchrun(mode, paths[0].parent) for mode in ("before", "after")}
        small = paths[:predict_images]
        pred = {f"{folds}_fold": {"before": predict_decodes(small, folds, True),
                                  "after": predict_decodes(small, folds, False)} for folds in (1, 2)}
        mean_bytes = int(np.mean([p.stat().st_size for p in paths[:distinct]]))
    return {
        "what": "test-folder check under 2-process torchrun (gloo, CPU); cxr-predict decodes per test image",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "load_avg_1m_at_start": load, "gpu": None},
        "sources": {"images": n, "distinct": distinct, "size": 1024, "mean_bytes": mean_bytes,
                    "from": "tests/assets NIH radiographs, bicubic upscale to 1024 + N(0, 1.5) noise, PNG"},
        "torchrun_check": rows, "check_speedup": rows["before"]["wall_s"] / rows["after"]["wall_s"],
        "predict": {"images": predict_images, "eval_size": 512, **pred},
    }


def markdown(res: dict) -> str:
    m, t, p = res["machine"], res["torchrun_check"], res["predict"]
    lines = [
        f"# The test-folder check under torchrun, and cxr-predict's decodes ({res['date'][:10]})", "",
        (f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), no GPU. The cores are shared with "
         f"other jobs (load average {m['load_avg_1m_at_start']:.1f} at the start): one run per mode, so the "
         f"absolute times carry that noise."), "",
        (f"{res['sources']['images']} test images, 1024x1024 PNG (mean {res['sources']['mean_bytes'] / 1e6:.2f} MB; "
         f"{res['sources']['distinct']} distinct, the rest copies; {res['sources']['from']})."), "",
        "| 2-process torchrun (gloo, CPU) | wall s (barrier to barrier) | s per rank |", "|---|---:|---|",
        *[f"| {k}: {'every rank decodes' if k == 'before' else 'rank 0 decodes, broadcast'} | {v['wall_s']:.1f} | "
          f"{', '.join(f'{s:.1f}' for s in v['per_rank_s'])} |" for k, v in t.items()], "",
        f"Speed-up {res['check_speedup']:.2f}x; decodes {2 * res['sources']['images']} -> {res['sources']['images']}.",
        ("The work halves; the time does not quite, on shared cores: 2 ranks x 2 decode threads (before) claim a "
         "larger share of a busy machine than rank 0's 2 threads (after). On a node of its own the check is "
         "CPU-bound, the other ranks' decoding was pure waste, and (world - 1) / world of it is gone."),
        "", f"cxr-predict's decode work over {p['images']} of them (PIL loader, eval at {p['eval_size']} px, no model):",
        "", "| folds | before: decodes/image, s | after: decodes/image, s |", "|---|---|---|",
        *[f"| {k.split('_')[0]} | {v['before']['decodes_per_image']:.0f}, {v['before']['seconds']:.1f} | "
          f"{v['after']['decodes_per_image']:.0f}, {v['after']['seconds']:.1f} |"
          for k, v in p.items() if k.endswith("_fold")], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--distinct", type=int, default=20)
    p.add_argument("--predict_images", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results/test-check.json")
    a = p.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0
    res = run(a.images, a.distinct, a.predict_images)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
