"""Report sections read from metrics.jsonl and the fold checkpoints: training curves, throughput, couplings."""

from __future__ import annotations

import json
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


DEFAULT_ALPHA = 0.3  # LabelGraphRefiner's default, for checkpoints whose config does not record refiner_alpha
NEGLIGIBLE = 0.05   # a coupling under this fraction of the typical logit spread hardly moves any prediction


def logit_spread(run: Path, ctx: dict, labels: list[str]) -> dict[str, float]:
    """Per label, the standard deviation of logit(p) over the out-of-fold predictions: the typical spread a
    coupling's shift is to be compared with (empty when oof.csv is not readable)."""
    from cxr_fast.evaluate.runs import read_run

    try:
        oof = ctx.get("oof") or read_run(run)
    except Exception:  # noqa: BLE001 - no OOF predictions: the couplings are shown without the comparison
        return {}
    p = np.clip(oof.probs, 1e-6, 1 - 1e-6)
    z = np.log(p) - np.log1p(-p)
    return {n: float(z[:, oof.label_names.index(n)].std()) for n in labels if n in oof.label_names}


def _alpha(with_a: list[tuple[Path, dict]], ctx: dict) -> tuple[float, str]:
    vals = {c.get("config", {}).get("refiner_alpha") for _, c in with_a}
    vals = {v for v in vals if isinstance(v, (int, float))} or {ctx.get("config", {}).get("refiner_alpha")} - {None}
    if len(vals) == 1:
        return float(vals.pop()), "the checkpoints' refiner_alpha"
    if vals:
        return float(np.mean(sorted(vals))), "the mean of the checkpoints' differing refiner_alpha"
    return DEFAULT_ALPHA, f"not recorded: the refiner's default {DEFAULT_ALPHA}"


def coupling_words(effect: np.ndarray, labels: list[str], spread: dict[str, float], top: int = 10) -> list[list]:
    """The `top` largest |alpha * A[i, j]| as rows: [in words, logit change, typical spread of j, fraction]."""
    order = np.dstack(np.unravel_index(np.argsort(-np.abs(effect), axis=None, kind="stable"), effect.shape))[0]
    rows = []
    for i, j in order:
        if i == j or effect[i, j] == 0 or len(rows) == top:
            continue
        v, sd = float(effect[i, j]), spread.get(labels[j])
        rows.append([f"a certain {labels[i]} {'raises' if v > 0 else 'lowers'} {labels[j]}'s logit", f"{v:+.3g}",
                     sd, abs(v) / sd if sd else None])
    return rows


def _load_mapped(path: Path) -> dict:
    """A fold checkpoint memory-mapped: this section reads A and a few fields, not the backbone's weights (about half
    the CPU time of a full read, more for bigger models); a file not in torch.save's zip format is read whole."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format; a damaged file fails the same way below
        return torch.load(path, map_location="cpu", weights_only=True)


def couplings_section(run: Path, ctx: dict) -> str:
    from cxr_fast.evaluate.couplings import mean_coupling
    from cxr_fast.evaluate.plots import coupling_figure

    paths = _checkpoints(run, ctx)
    if not paths:
        return H.note("No fold checkpoints ({model}_fold{K}.pth) in the run folder: no coupling matrix.")
    loaded = [(p, _load_mapped(p)) for p in paths]
    with_a = [(p, c) for p, c in loaded if isinstance(c.get("refiner"), dict) and "A" in c["refiner"]]
    if not with_a:
        return H.note("The run has no label-coupling refiner (trained with --no-refiner): no coupling matrix.")
    if len(with_a[0][1].get("labels", [])) < 2:
        return H.note("A single label has no couplings to other labels: no coupling matrix.")
    body = ""
    if len(with_a) < len(loaded):
        body += H.note(f"{len(loaded) - len(with_a)} checkpoint(s) have no refiner and are left out.")
    a, labels = mean_coupling(with_a)
    alpha, alpha_from = _alpha(with_a, ctx)
    effect = alpha * a
    spread = logit_spread(run, ctx, labels)
    body += H.para(f"The refiner adds alpha x sum_i p_i A[i, j] to label j's logit (alpha = {alpha:g}, {alpha_from}): "
                   f"a certain positive of label i (p_i = 1) moves label j's logit by alpha x A[i, j]. The figures "
                   f"below are that shift, beside the typical spread of label j's logit (standard deviation of "
                   f"logit(p) over the out-of-fold images), so a real coupling can be told from noise.")
    body += H.image(coupling_figure(effect, labels, f"Logit change alpha x A, mean of {len(with_a)} fold(s)"),
                    "heatmap of the couplings in logit units")
    rows = coupling_words(effect, labels, spread)
    body += H.table(["strongest couplings", "logit change", "typical spread of that logit (SD)",
                     "change / spread"], rows)
    big = max((r[3] for r in rows if r[3] is not None), default=None)
    if big is not None:
        body += H.para(f"The largest coupling is {big:.1%} of its label's typical logit spread: "
                       + ("the couplings hardly move any prediction (under 5%)." if big < NEGLIGIBLE else
                          "large enough to move predictions near a threshold."))
    off = a[~np.eye(len(a), dtype=bool)]
    body += H.para(f"{(off != 0).mean():.0%} of the off-diagonal entries of A are non-zero "
                   f"(checkpoints: {', '.join(p.name for p, _ in with_a)}).")
    return body
