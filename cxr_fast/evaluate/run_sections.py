"""Report sections read from metrics.jsonl and the fold checkpoints: training curves, throughput, couplings."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

import cxr_fast.evaluate.html as H
from cxr_fast.run_folder import METRICS, RunPaths


def read_metrics(run: Path, ctx: dict) -> list[dict]:
    """metrics.jsonl records (cached in ctx); unreadable lines are skipped and counted in ctx["bad_lines"]."""
    if "records" not in ctx:
        recs, bad = [], 0
        path = run / METRICS
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    r = json.loads(line) if line.strip() else None
                except ValueError:
                    r = None
                if isinstance(r, dict):
                    recs.append(r)
                elif line.strip():
                    bad += 1
        ctx["records"], ctx["bad_lines"] = recs, bad
    return ctx["records"]


def curves_section(run: Path, ctx: dict) -> str:
    from cxr_fast.evaluate.plots import training_curves_figure

    recs = read_metrics(run, ctx)
    if not recs:
        return H.note("No metrics.jsonl records: no training curves.")
    body = H.image(training_curves_figure(recs), "training curves: loss, learning rate, validation macro-AUC")
    if ctx["bad_lines"]:
        body += H.note(f"{ctx['bad_lines']} unreadable line(s) of metrics.jsonl were skipped.")
    return body


def throughput_section(run: Path, ctx: dict) -> str:
    recs = read_metrics(run, ctx)
    if not recs:
        return H.note("No metrics.jsonl records: no throughput figures.")
    rows = []
    for k in sorted({r.get("fold") for r in recs if r.get("fold") is not None}):
        fr = [r for r in recs if r.get("fold") == k]
        ips = [r["img_per_s"] for r in fr if isinstance(r.get("img_per_s"), (int, float))]
        wait = [r["data_wait_s"] for r in fr if isinstance(r.get("data_wait_s"), (int, float))]
        rows.append([k, len(fr), float(np.mean(ips)) if ips else None, float(np.max(ips)) if ips else None,
                     float(np.mean(wait)) if wait else None])
    return (H.table(["fold", "epochs", "mean img/s", "best img/s", "mean data wait per epoch (s)"], rows)
            + H.para("img/s: training images per second; data wait: seconds per epoch the training step waited "
                     "for the input pipeline."))


def _checkpoints(run: Path, ctx: dict) -> list[Path]:
    model = ctx.get("config", {}).get("model")
    return (RunPaths(run, model).checkpoints() if model else []) or RunPaths(run).checkpoints()


def couplings_section(run: Path, ctx: dict) -> str:
    import torch

    from cxr_fast.evaluate.couplings import mean_coupling, plot_heatmap, top_couplings
    from cxr_fast.evaluate.plots import png_file_base64

    paths = _checkpoints(run, ctx)
    if not paths:
        return H.note("No fold checkpoints ({model}_fold{K}.pth) in the run folder: no coupling matrix.")
    loaded = [(p, torch.load(p, map_location="cpu", weights_only=True)) for p in paths]
    with_a = [(p, c) for p, c in loaded if isinstance(c.get("refiner"), dict) and "A" in c["refiner"]]
    if not with_a:
        return H.note("The run has no label-coupling refiner (trained with --no-refiner): no coupling matrix.")
    if len(with_a[0][1].get("labels", [])) < 2:
        return H.note("A single label has no couplings to other labels: no coupling matrix.")
    body = ""
    if len(with_a) < len(loaded):
        body += H.note(f"{len(loaded) - len(with_a)} checkpoint(s) have no refiner and are left out.")
    a, labels = mean_coupling(with_a)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "couplings.png"
        plot_heatmap(a, labels, png, title=f"Learned label couplings (A), mean of {len(with_a)} fold(s)")
        body += H.image(png_file_base64(png), "heatmap of the coupling matrix A")
    top = top_couplings(a, labels, 3)
    rows = [[name, ", ".join(f"{d['label']} ({d['A']:+.3g})" for d in lst) or "(none)"] for name, lst in top.items()]
    off = a[~np.eye(len(a), dtype=bool)]
    body += H.table(["label", "strongest couplings"], rows)
    body += H.para(f"{(off != 0).mean():.0%} of the off-diagonal entries of A are non-zero "
                   f"(checkpoints: {', '.join(p.name for p, _ in with_a)}).")
    return body
