"""Input-pipeline throughput: the original PIL loader vs our PIL and DALI pipelines, loader-only and end to end.

    python -m benchmarks.throughput [--data DIR | --synthetic N] [--source_size 1024] [--shard_size 512]
        [--img_size 380] [--batch_size 32] [--workers W] [--repeats 3] [--pipelines ...] [--model NAME]
        [--out benchmarks/results]

Writes benchmarks/results/<machine>-<date>.json (every figure, the machine, library versions), .md (tables) and
.png (bar chart), and prints the tables. How each figure is taken: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import data as bench_data
from benchmarks.common import loaders as bench_loaders
from benchmarks.common import report as bench_report
from benchmarks.common import timing as bench_timing
from cxr_fast.errors import UserError, cli_entry

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="a dataset in the seed's layout (train.csv + train/)")
    src.add_argument("--synthetic", type=int, default=512, help="cxr-synth images to generate (cached)")
    p.add_argument("--source_size", type=int, default=1024, help="synthetic source size (NIH: 1024 px PNG)")
    p.add_argument("--shard_size", type=int, default=512, help="cxr-shard --resize")
    p.add_argument("--img_size", type=int, default=380, help="loader output size")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where batches go and the end-to-end rows train (auto: CUDA when present)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="DataLoader worker processes = DALI threads = shard packing workers (default: usable cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pipelines", nargs="+", choices=bench_loaders.LOADER_ROWS,
                   help="loader rows (default: all that this machine can run)")
    p.add_argument("--model", help="end-to-end timm model (default tf_efficientnet_b4_ns on CUDA, resnet18 on CPU; "
                                   "'none' skips the end-to-end rows)")
    p.add_argument("--e2e_img_size", type=int, help="image size for the end-to-end rows (default: --img_size on "
                                                    "CUDA, 64 on CPU)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", help="output file stem (default <machine>-<date>)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="synthetic data and shards are kept here")
    p.add_argument("--settle", type=float, default=0.5, help="seconds of idle between timed runs")
    p.add_argument("--breakdown_images", type=int, default=64, help="images for the per-stage profile (0 = skip)")
    p.add_argument("--no_packing", action="store_true", help="skip the write_shards throughput row")
    p.add_argument("--notes", type=Path, help="a text file of analysis to record in the results")
    p.add_argument("--render", type=Path, help="only rewrite this results JSON's .md/.png (with --notes, if given)")
    args = p.parse_args(argv)
    for flag in ("source_size", "shard_size", "img_size", "batch_size", "workers", "repeats"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("notes", "render"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise UserError(f"--{flag} {path}: no such file")
    return args


def _pipelines(args, cuda: bool, log) -> list[str]:
    have_dali = importlib.util.find_spec("nvidia.dali") is not None
    if args.pipelines:
        names = list(dict.fromkeys(args.pipelines))
        if "dali-gpu" in names and not cuda:
            raise UserError("--pipelines dali-gpu needs CUDA, which this machine does not have")
        if not have_dali and any(n.startswith("dali") or n == "decode-ceiling" for n in names):
            raise UserError("the dali-* and decode-ceiling rows need NVIDIA DALI (make install; or pip install -e "
                            "'.[dali-cu12]' / '.[dali-cu13]' to match torch.version.cuda)")
        return names
    names = [n for n in bench_loaders.LOADER_ROWS if (n != "dali-gpu" or cuda)]
    if not have_dali:
        log("NVIDIA DALI is not installed: skipping the dali-* and decode-ceiling rows")
        names = [n for n in names if not (n.startswith("dali") or n == "decode-ceiling")]
    return names


def run(args: argparse.Namespace, log=print) -> tuple[dict, dict]:
    """The whole benchmark; returns (results, {"json"|"md"|"png": path})."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    names = _pipelines(args, cuda, log)
    res = {"schema_version": bench_report.SCHEMA_VERSION, "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": bench_report.machine(), "config": {}, "data": {}, "loader": {}, "end_to_end": None,
           "packing": None, "breakdown": None, "targets": [], "notes": None}
    t_all = time.perf_counter()
    bd = bench_data.prepare(args.cache, data=args.data, synthetic=args.synthetic, source_size=args.source_size,
                            shard_size=args.shard_size, workers=args.workers, log=log)
    res["data"] = bd.info
    res["machine"]["load_avg_start"] = list(os.getloadavg())  # as the measurements start (after any data build)
    B, W = args.batch_size, args.workers
    if len(bd.all_folds) < B:
        raise UserError(f"{len(bd.all_folds)} images do not fill one batch of --batch_size {B}")
    skip = skip_batches(W, len(bd.all_folds) // B)
    res["config"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "pipelines": names, "device": str(device), "skip_batches": skip}

    if not args.no_packing:
        log(f"timing shard packing ({len(bd.all_folds)} images, {W} workers) ...")
        res["packing"] = bench_data.time_packing(bd, args.shard_size, W)

    files_all = bd.files(bd.all_folds)
    log(f"loader rows over {len(bd.all_folds)} images, {args.repeats} repeats: {', '.join(names)}")
    builders = {n: (lambda n=n: bench_loaders.build(n, files_all, bd.all_folds, args.img_size, B, W, device))
                for n in names}
    res["loader"] = bench_timing.loader_rows(builders, args.repeats, skip, device, args.settle, log)
    for r in res["loader"].values():
        r["expected_per_epoch"] = (len(bd.all_folds) // B) * B

    model = args.model or default_model(device)
    train_names = [n for n in names if n in bench_loaders.TRAIN_ROWS]
    if model.lower() != "none" and train_names:
        res["end_to_end"] = end_to_end(args, bd, model, train_names, device, log)

    if args.breakdown_images > 0:
        log("per-stage profile (one thread) ...")
        from benchmarks.common import breakdown as bench_breakdown

        res["breakdown"] = bench_breakdown.breakdown(names, files_all, bd.all_folds, args.img_size, B,
                                                     args.breakdown_images)
    res["machine"]["load_avg_end"] = list(os.getloadavg())
    res["seconds_total"] = time.perf_counter() - t_all
    res["targets"] = bench_report.evaluate_targets(res)
    if args.notes:
        res["notes"] = Path(args.notes).read_text()
    return res, bench_report.write(res, Path(args.out), args.name)


def skip_batches(workers: int, n_batches: int) -> int:
    """Batches left out of the steady-state window: >= DALI's prefetch depth (2) and the DataLoader's simultaneous
    first batches (one per worker), but at most half the epoch, so that many-core machines still time a window."""
    return min(max(2, workers), max(1, n_batches // 2))


def default_model(device: torch.device) -> str:
    from benchmarks.common.train import DEFAULT_MODEL

    return DEFAULT_MODEL[device.type if device.type in DEFAULT_MODEL else "cpu"]


def end_to_end(args, bd: bench_data.BenchData, model: str, names: list[str], device: torch.device, log) -> dict:
    from benchmarks.common import train as bench_train

    size = args.e2e_img_size or (args.img_size if device.type == "cuda" else 64)
    B, W = args.batch_size, args.workers
    samples = bd.all_folds
    n_batches = len(samples) // B
    step = bench_train.TrainStep(model, samples.labels, device)
    files = bd.files(samples)
    builders = {n: (lambda n=n: bench_loaders.build(n, files, samples, size, B, W, device, to_device=True))
                for n in names}
    fixed = bench_train.fixed_batch(samples.labels, B, size, device)
    builders["bound"] = lambda: bench_loaders.FixedBatches(fixed, n_batches)
    log(f"end-to-end rows: {model} at {size} px on {device}, {n_batches * B} images per epoch: {', '.join(builders)}")
    step(bench_loaders.FixedBatches(fixed, 2))  # model warm-up: allocations, kernels, optimizer state
    rows = bench_timing.train_rows(builders, args.repeats, step, skip_batches(W, n_batches), device, args.settle, log)
    bound = rows["bound"]["img_per_s"]["median"]
    for r in rows.values():
        r["fraction_of_bound"] = r["img_per_s"]["median"] / bound
        r["expected_per_epoch"] = n_batches * B
    return {"model": model, "params": step.params, "img_size": size, "device": str(device),
            "amp": repr(step.amp), "torch_threads": torch.get_num_threads(), "images_per_epoch": n_batches * B,
            "rows": rows}


def rerender(path: Path, notes: Path | None) -> tuple[dict, dict]:
    """Rewrite a results JSON's .md and .png (and its notes, if given) without measuring anything."""
    import json

    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--render {path}: cannot read a results JSON ({e})") from None
    if res.get("schema_version") != bench_report.SCHEMA_VERSION:
        raise UserError(f"--render {path}: schema_version {res.get('schema_version')!r}, this script writes "
                        f"{bench_report.SCHEMA_VERSION}")
    if notes:
        res["notes"] = Path(notes).read_text()
    res["targets"] = bench_report.evaluate_targets(res)  # today's rules on the recorded rows
    return res, bench_report.write(res, Path(path).parent, Path(path).stem)


@cli_entry
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        res, paths = rerender(args.render, args.notes)
    else:
        res, paths = run(args)
    print()
    print(bench_report.markdown(res))
    print()
    for t in res["targets"]:
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        print(f"target {t['status']:>4}: {t['target']} (ratio {ratio}"
              f"{'' if t['applies_here'] else ', meant for ' + t['meant_for'] + ' machines'})")
    print(f"\nwrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
