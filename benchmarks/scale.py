"""Scale benchmark: an NIH-sized dataset (default 112,120 rows) through folds -> cxr-shard (fresh, then killed at ~55%
and resumed) -> cxr-shard verify -> one training epoch per pipeline, with seconds and peak memory per stage.

    python -m benchmarks.scale [--rows 112120] [--pipelines pil,dali] [--workdir DIR] [--results benchmarks/results/scale]

The images are a few generated PNG/JPEG files hard-linked under every row's name, so the run measures the machinery
(spool, journal, tar assembly, readers, start-up), not decoding big radiographs. Every stage runs in its own process
(`python -m benchmarks.scale _stage ...`), which reports its wall time and peak resident memory (itself and its largest child, from
`resource.getrusage`) and its memory right after imports, so `(peak - base) / rows` is the per-row growth.
Writes `<results>.json` and a markdown table `<results>.md`.

    python -m benchmarks.scale --mode jpeg-draft [--images 16] [--resize 512] [--results benchmarks/results/jpeg-draft]

times cxr-shard's per-image encode on MIMIC-sized JPEGs before/after reduced-scale JPEG decoding
(`bench_jpeg_draft.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia"]
KINDS = 8  # distinct source images
FOLDS = 5


def _rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest finished child (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _stage(name: str, spec: dict, report: Path) -> None:
    """Run one stage in this process and write {seconds, rss_*_mb} to `report`."""
    if name == "folds":
        from cxr_fast.data.folds import make_folds
        from cxr_fast.data.table import read_table
    elif name == "shard":
        from cxr_fast.cli.shard import main as shard_main
    elif name == "verify":
        from cxr_fast.shards.verify import verify_shards
    else:
        from cxr_fast.cli.train import main as train_main
    base = _rss_mb()[0]
    t0 = time.perf_counter()
    extra = {}
    if name == "folds":
        t = read_table(spec["csv"], group_col="Patient ID", uncertain="zeros", missing="zeros")
        folds, method = make_folds(t.labels, FOLDS, 42, t.groups)
        extra = {"method": method, "fold_sizes": np.bincount(folds)[1:].tolist()}
    elif name == "shard":
        shard_main(spec["argv"])
    elif name == "verify":
        problems, _summary = verify_shards(spec["out"], progress=True)
        extra = {"problems": len(problems)}
    else:
        train_main(spec["argv"])
    secs = time.perf_counter() - t0
    me, kids = _rss_mb()
    report.write_text(json.dumps({"seconds": secs, "rss_mb": me, "rss_children_mb": kids, "rss_base_mb": base,
                                  **extra}))


def run_stage(name: str, spec: dict, logs: Path, kill_when=None) -> dict:
    """A stage in a fresh process (so its peak memory is its own); `kill_when()` true -> SIGKILL it."""
    report = logs / f"{name}-{time.time_ns()}.json"
    tag = spec.get("tag", name)
    with open(logs / f"{tag}.out", "w") as out, open(logs / f"{tag}.err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "_stage", name, json.dumps(spec), str(report)],
                                stdout=out, stderr=err, cwd=ROOT)
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"killed_after_s": time.perf_counter() - t0}
            time.sleep(0.005)
    if proc.returncode != 0:
        tail = (logs / f"{tag}.err").read_text().strip().splitlines()[-3:]
        return {"failed": proc.returncode, "error": " | ".join(tail), "seconds": time.perf_counter() - t0}
    return json.loads(report.read_text())


def make_dataset(root: Path, rows: int, size: int, seed: int = 0) -> dict:
    """`rows` CSV rows (NIH-like: ~3.9 images per patient, 7 labels) whose images are links to KINDS files."""
    import pandas as pd
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    src, train = root / "src", root / "train"
    src.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(KINDS):
        yy, xx = np.mgrid[0:size, 0:size]
        img = ((xx + 2 * yy + 40 * k) % 256 * 0.6 + rng.integers(0, 100, (size, size))).astype(np.uint8)
        name = f"k{k}.{'png' if k % 2 == 0 else 'jpg'}"
        Image.fromarray(img).save(src / name)
        files.append(src / name)
    names = [f"images_{i // 10_000:03d}/{i:08d}_000.{'png' if i % KINDS % 2 == 0 else 'jpg'}" for i in range(rows)]
    for d in sorted({n.split("/")[0] for n in names}):
        (train / d).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        p = train / n
        if not p.exists():
            os.link(files[i % KINDS], p)
    labels = (rng.random((rows, len(LABELS))) < 0.12).astype(int)
    patient = np.minimum(np.arange(rows) * 10 // 39, rows - 1)  # ~3.9 images per patient, as in NIH
    df = pd.DataFrame(labels, columns=LABELS)
    df.insert(0, "Patient ID", patient)
    df.insert(0, "Image_name", names)
    df.to_csv(root / "train.csv", index=False)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "distinct_images": KINDS, "source_px": size}


def _shard_argv(data: Path, out: Path, args, csv: str = "train.csv") -> list[str]:
    argv = ["--train_csv", str(data / csv), "--train_dir", str(data / "train"), "--out", str(out),
            "--group_col", "Patient ID", "--folds", str(FOLDS), "--resize", str(args.resize), "--progress"]
    return argv + (["--workers", str(args.workers)] if args.workers else [])


def _tree_hash(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.iterdir()):
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def shard_stages(data: Path, work: Path, logs: Path, args) -> dict:
    """Fresh build; then a build killed once ~`kill_at` of its spool chunks are journaled, and its resumed rerun."""
    import pandas as pd

    from cxr_fast.shards.format import work_dir

    small = max(FOLDS * 40, args.rows // 10)  # the same build at a tenth of the rows: memory growth per row
    pd.read_csv(data / "train.csv").iloc[:small].to_csv(data / "small.csv", index=False)
    res = {"small": run_stage("shard", {"argv": _shard_argv(data, work / "small", args, "small.csv"),
                                        "tag": "shard-small"}, logs), "small_rows": small}
    res["fresh"] = run_stage("shard", {"argv": _shard_argv(data, work / "fresh", args), "tag": "shard-fresh"}, logs)
    if args.rows > small and "rss_mb" in res["small"] and "rss_mb" in res["fresh"]:
        res["fresh"]["growth_bytes_per_row"] = ((res["fresh"]["rss_mb"] - res["small"]["rss_mb"]) * 2**20
                                                / (args.rows - small))
    res["fresh"]["progress_lines"] = sum(" img, " in line or " shard, " in line
                                         for line in (logs / "shard-fresh.err").read_text().splitlines())
    out = work / "killed"
    wd = work_dir(out)

    def past_kill_point() -> bool:
        try:
            chunk = json.loads((wd / "key.json").read_text())["chunk"]
        except (OSError, ValueError, KeyError):
            return False
        return len(list(wd.glob("c*.json"))) >= args.kill_at * -(-args.rows // chunk)

    killed = run_stage("shard", {"argv": _shard_argv(data, out, args), "tag": "shard-killed"}, logs, past_kill_point)
    res["killed"] = killed
    if "killed_after_s" not in killed:
        res["resume"] = {"note": "the build finished before the kill point (too few rows to catch it)"}
        return res
    chunks = len(list(wd.glob("c*.json")))
    rerun = run_stage("shard", {"argv": _shard_argv(data, out, args), "tag": "shard-resume"}, logs)
    said = next((line for line in (logs / "shard-resume.out").read_text().splitlines() if "resuming" in line), "")
    res["resume"] = {**rerun, "chunks_done_at_kill": chunks, "log": said,
                     "ratio_to_fresh": rerun["seconds"] / res["fresh"]["seconds"],
                     "identical_to_fresh": _tree_hash(out) == _tree_hash(work / "fresh")}
    return res


def train_stage(shards: Path, work: Path, logs: Path, pipeline: str, args) -> dict:
    out = work / f"train-{pipeline}"
    argv = ["--shards", str(shards), "--pipeline", pipeline, "--model", args.model, "--no-pretrained",
            "--img_size", "64", "--epochs", "1", "--folds_to_run", "1", "--batch_size", str(args.batch_size),
            "--num_workers", "2", "--device", "cpu", "--no-ema", "--no-refiner", "--out_dir", str(out),
            "--out_csv", str(out / "submission.csv"), "--no-progress"]
    res = run_stage("train", {"argv": argv, "tag": f"train-{pipeline}"}, logs)
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        res["epoch"] = json.loads(metrics.read_text().splitlines()[-1])
    return res


def _mb(r: dict) -> str:
    return f"{r['rss_mb']:.0f} / {r['rss_children_mb']:.0f}" if "rss_mb" in r else "-"


def write_results(res: dict, prefix: Path) -> None:
    from cxr_fast.atomic import write_json_atomic, write_text_atomic

    write_json_atomic(prefix.with_suffix(".json"), res)
    rows = res["rows"]
    lines = [f"# Scale benchmark: {rows:,} rows ({res['machine']})", "",
             (f"{res['data']['distinct_images']} distinct {res['data']['source_px']} px images hard-linked under "
             f"{rows:,} names; {FOLDS} patient-grouped folds; shards at --resize {res['resize']}; "
             f"{res['workers']} encode workers; tiny model `{res['model']}` at 64 px, one epoch of fold 1."), "",
             "| stage | seconds | peak RSS MB (process / largest child) | MB after imports |",
             "|---|---:|---:|---:|"]
    for name, r in res["stages"].items():
        if "seconds" not in r:
            continue
        base = f"{r['rss_base_mb']:.0f}" if "rss_base_mb" in r else "-"
        lines.append(f"| {name} | {r['seconds']:.1f}{' (failed)' if 'failed' in r else ''} | {_mb(r)} | {base} |")
    fresh = res["stages"].get("shard (fresh build)", {})
    if "growth_bytes_per_row" in fresh:
        lines += ["", (f"cxr-shard's peak memory grows by {fresh['growth_bytes_per_row']:.0f} bytes per row between the "
                      f"tenth-size and the full build (per-sample metadata: names, labels, spool records, plan).")]
    for name, r in res["stages"].items():
        ep = r.get("epoch")
        if ep and "train_s" in ep:
            other = r["seconds"] - ep["train_s"] - ep.get("val_s", 0)
            lines += ["", (f"{name}: training {ep['train_s']:.1f} s ({ep.get('img_per_s', 0):.0f} img/s, data wait "
                          f"{ep.get('data_wait_s', 0):.1f} s), validation {ep.get('val_s', 0):.1f} s, everything else "
                          f"(start-up, pipeline build, index reading, OOF and outputs) {other:.1f} s.")]
    resume = res["stages"].get("shard resume (after kill)", {})
    if "ratio_to_fresh" in resume:
        lines += ["", (f"Resume after SIGKILL at {res['kill_at']:.0%} of the encode chunks "
                      f"({resume['chunks_done_at_kill']} chunks journaled): rerun {resume['seconds']:.1f} s = "
                      f"{resume['ratio_to_fresh']:.0%} of a fresh build; output byte-identical to the fresh build: "
                      f"{resume['identical_to_fresh']}. Rerun said: `{resume['log']}`")]
    if res.get("note"):
        lines += ["", res["note"]]
    write_text_atomic(prefix.with_suffix(".md"), "\n".join(lines) + "\n")


def jpeg_draft(args, work: Path) -> dict:
    """`--mode jpeg-draft`: bench_jpeg_draft.run, written as <results>.json and .md."""
    from benchmarks.common import jpeg_draft as bench_jpeg_draft
    from cxr_fast.atomic import write_json_atomic, write_text_atomic

    w, h = (int(v) for v in args.jpeg_size.lower().split("x"))
    res = bench_jpeg_draft.run(work, args.images, (w, h), 512 if args.resize is None else args.resize, args.repeats)
    write_json_atomic(Path(args.results).with_suffix(".json"), res)
    write_text_atomic(Path(args.results).with_suffix(".md"), bench_jpeg_draft.markdown(res))
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=112_120, help="dataset rows (default: NIH ChestX-ray14's 112,120)")
    p.add_argument("--pipelines", default="pil,dali", help="training pipelines to time ('' for none)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    p.add_argument("--source_px", type=int, default=256)
    p.add_argument("--mode", choices=("pipeline", "jpeg-draft"), default="pipeline",
                   help="pipeline: the scale run above; jpeg-draft: encode img/s on MIMIC-sized JPEGs, before/after")
    p.add_argument("--images", type=int, default=16, help="jpeg-draft: distinct source images (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="jpeg-draft: encodes of each image per mode (default 3)")
    p.add_argument("--jpeg_size", default="2544x3056", help="jpeg-draft: source W x H (default MIMIC's 2544x3056)")
    p.add_argument("--resize", type=int, default=None, help="cxr-shard --resize (default 128; jpeg-draft 512)")
    p.add_argument("--workers", type=int, default=None, help="cxr-shard --workers (default: its own default)")
    p.add_argument("--kill_at", type=float, default=0.55)
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--batch_size", type=int, default=64)
    args = p.parse_args(argv)
    import tempfile

    from cxr_fast.shards.cpus import default_workers

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-scale-"))
    if args.mode == "jpeg-draft":
        return jpeg_draft(args, work)
    args.resize = 128 if args.resize is None else args.resize
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    res = {"rows": args.rows, "resize": args.resize, "model": args.model, "kill_at": args.kill_at,
           "workers": args.workers or default_workers(), "machine": f"{platform.processor() or platform.machine()}, "
           f"{default_workers()} usable CPUs", "data": make_dataset(data, args.rows, args.source_px), "stages": {}}
    st = res["stages"]
    st["folds (read CSV + 5 grouped folds)"] = run_stage("folds", {"csv": str(data / "train.csv")}, logs)
    sh = shard_stages(data, work, logs, args)
    st[f"shard (fresh build, first {sh['small_rows']:,} rows)"] = sh["small"]
    st["shard (fresh build)"] = sh["fresh"]
    st["shard resume (after kill)"] = sh["resume"]
    st["verify"] = run_stage("verify", {"out": str(work / "fresh")}, logs)
    for pipe in [x for x in args.pipelines.split(",") if x]:
        st[f"train 1 epoch ({pipe})"] = train_stage(work / "fresh", work, logs, pipe, args)
    write_results(res, Path(args.results))
    return res


if __name__ == "__main__":
    if sys.argv[1:2] == ["_stage"]:
        _stage(sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
