"""The GPU rows of the throughput benchmark, small enough for `tools/gpu_check.py` (minutes on one GPU):

- bound, end to end: `tf_efficientnet_b4_ns` at 380 px, the real training step (`train_one_epoch`: refiner, ASL,
  AdamW, EMA, AMP) fed fixed on-device uint8 batches (nanoGPT's bench.py bound), for channels_last on/off x bf16/fp16;
- pil-shards, end to end: the same step (bf16, channels_last) fed by the PIL shard loader, as a fraction of the bound;
- dali-gpu, loader only and end to end, where DALI is installed (skipped with the reason where it is not).

    python -m benchmarks.gpu_rows [--steps 30] [--seconds 8] [--batch_size 32] [--out FILE]

Recorded, not asserted. Needs CUDA; `run()` returns the rows for the caller's table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODEL, IMG_SIZE, LABELS = "tf_efficientnet_b4_ns", 380, 14
CONFIGS = [("bf16", True), ("bf16", False), ("fp16", True), ("fp16", False)]  # (amp dtype, channels_last)


class Step:
    """One classifier + optimiser + EMA, trained by `train_one_epoch` on whatever loader it is given."""

    def __init__(self, model: str, dtype: str, channels_last: bool, device: torch.device):
        from cxr_fast.model import CXRClassifier, LabelGraphRefiner
        from cxr_fast.model.backbone import create_backbone
        from cxr_fast.model.ema import ModelEma
        from cxr_fast.model.losses import build_loss
        from cxr_fast.train.amp import Amp
        from cxr_fast.train.engine import build_optimizer, build_scheduler
        from cxr_fast.train.speed import configure_cuda, use_channels_last

        torch.manual_seed(0)
        configure_cuda(fixed_size=True)
        self.model = CXRClassifier(create_backbone(model, num_classes=LABELS, in_chans=1, pretrained=False),
                                   LabelGraphRefiner(LABELS)).to(device)
        self.channels_last = use_channels_last(self.model, device, enabled=channels_last)
        self.ema = ModelEma(self.model, decay=0.999)
        labels = (np.random.default_rng(0).random((64, LABELS)) < 0.3).astype(np.float32)
        self.loss = build_loss("asl", labels).to(device)
        self.optimizer = build_optimizer(self.model, lr=1e-4, weight_decay=1e-5)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps=0, total_steps=1_000_000)
        self.amp = Amp(device, dtype=dtype)
        self.step = 0

    def __call__(self, loader) -> dict:
        from cxr_fast.train.engine import train_one_epoch

        stats = train_one_epoch(self.model, loader, self.loss, self.optimizer, self.scheduler, self.amp, ema=self.ema,
                                step=self.step, progress=False)
        self.step = stats["step"]
        return stats


def fixed_batch(batch: int, size: int, device: torch.device):
    from cxr_fast.data.samples import Batch

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand((batch, LABELS), generator=g) < 0.3).float()
    return Batch(torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g).to(device),
                 labels.to(device), torch.arange(batch, device=device))


def model_name(device: torch.device) -> str:
    """tf_efficientnet_b4_ns where this timm still knows the name, else its successor tf_efficientnet_b4."""
    from cxr_fast.errors import UserError
    from cxr_fast.model.backbone import create_backbone

    try:
        create_backbone(MODEL, num_classes=LABELS, pretrained=False)
        return MODEL
    except UserError:
        return "tf_efficientnet_b4"


def bound_rows(model: str, size: int, batch: int, steps: int, device: torch.device, log=print,
               configs=CONFIGS, on_row=lambda rows, running: None) -> list[dict]:
    rows = []
    for dtype, cl in configs:
        on_row(rows, f"bound {dtype} channels_last={'on' if cl else 'off'}")
        step = Step(model, dtype, cl, device)
        b = fixed_batch(batch, size, device)
        step([b] * 5)  # warm-up: cudnn.benchmark's search, allocations, optimiser state
        stats = step([b] * steps)
        rows.append({"name": f"bound {dtype} channels_last={'on' if cl else 'off'}", "kind": "end_to_end",
                     "img_per_s": stats["img_per_s"], "amp": repr(step.amp), "images": stats["images"]})
        log(f"  {rows[-1]['name']}: {stats['img_per_s']:.0f} img/s")
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def fed_row(name: str, loader, model: str, seconds: float, device: torch.device) -> dict:
    """The bf16 + channels_last step fed by `loader` for >= `seconds` after one warm-up epoch."""
    step = Step(model, "bf16", True, device)
    step(loader)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        images += step(loader)["images"]
    return {"name": f"{name} bf16 channels_last=on", "kind": "end_to_end",
            "img_per_s": images / (time.perf_counter() - t0), "images": images}


def _ratios(bound: dict) -> dict:
    """channels_last and bf16 gains from the bound rows measured (--quick measures one: no ratio)."""
    pairs = {"channels_last_gain_bf16": ("bound bf16 channels_last=on", "bound bf16 channels_last=off"),
             "channels_last_gain_fp16": ("bound fp16 channels_last=on", "bound fp16 channels_last=off"),
             "bf16_over_fp16": ("bound bf16 channels_last=on", "bound fp16 channels_last=on")}
    return {k: bound[a] / bound[b] for k, (a, b) in pairs.items() if a in bound and b in bound}


def run(*, batch: int = 32, steps: int = 30, seconds: float = 8.0, device: str = "cuda", model: str | None = None,
        img_size: int = IMG_SIZE, data: tuple[int, int, int] = (256, 512, 512), log=print, quick: bool = False,
        on_row=lambda res: None) -> dict:
    """Every GPU row; the ratios (channels_last and bf16 gains, fraction of the bound) beside them. `on_row(result so
    far)` before each row starts (`result["running"]` names it) and after the last, so a crash loses one row only.

    `device`, `model`, `img_size` and `data` (images, source px, shard px) exist for the CPU smoke test that keeps
    this script from rotting where no GPU is (tests/doctor/test_gpu_check.py)."""
    from cxr_fast.data.augment import AugmentSpec
    from cxr_fast.doctor.loaders import make_shards, measure
    from cxr_fast.pipelines.pil import build_pil_loader

    device = torch.device(device)
    model = model or model_name(device)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    log(f"GPU rows: {model} at {img_size} px, batch {batch}, on {gpu}")
    res = {"model": model, "img_size": img_size, "batch_size": batch, "gpu": gpu, "torch": torch.__version__,
           "quick": quick, "rows": [], "ratios": {}}

    def report(rows: list[dict], running: str | None) -> None:
        res["rows"], res["running"] = rows, running
        on_row(res)

    rows = bound_rows(model, img_size, batch, steps, device, log, CONFIGS[:1] if quick else CONFIGS,
                      on_row=report)
    bound = {r["name"]: r["img_per_s"] for r in rows}
    workers = max(1, min(16, len(os.sched_getaffinity(0))))
    spec = AugmentSpec.for_training(img_size)
    with tempfile.TemporaryDirectory(prefix="gpu-rows-") as tmp:
        report(rows, "shards + pil-shards bf16 channels_last=on")
        samples = make_shards(Path(tmp), *data, workers)
        rows.append(fed_row("pil-shards", build_pil_loader(samples, spec, batch, device, num_workers=workers),
                            model, seconds, device))
        if device.type == "cuda" and importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
            from cxr_fast.pipelines.dali import build_dali_loader

            report(rows, "dali-gpu loader only")
            dali = build_dali_loader(samples, spec, batch, device, num_workers=workers)
            rows.append({"name": "dali-gpu loader only", "kind": "loader", **measure(dali, seconds, device)})
            if not quick:
                report(rows, "dali-gpu bf16 channels_last=on")
                rows.append(fed_row("dali-gpu", dali, model, seconds, device))
        else:
            why = "NVIDIA DALI is not installed" if device.type == "cuda" else "no CUDA"
            rows.append({"name": "dali-gpu", "kind": "skipped", "img_per_s": None,
                         "note": f"{why}: dali-gpu rows not measured"})
    ref = bound["bound bf16 channels_last=on"]
    for r in rows:
        if r["kind"] == "end_to_end" and r["img_per_s"]:
            r["fraction_of_bound"] = r["img_per_s"] / ref
    res["ratios"] = _ratios(bound)
    report(rows, None)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--quick", action="store_true", help="one bound config (bf16, channels_last), no dali-gpu-fed row")
    p.add_argument("--out", type=Path, help="the JSON, rewritten after every row (a crash keeps the rows so far)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_rows: not measured here (no CUDA)")
        return 0
    from cxr_fast.atomic import write_json_atomic

    res = run(batch=a.batch_size, steps=10 if a.quick and a.steps == 30 else a.steps, seconds=a.seconds,
              quick=a.quick, on_row=lambda r: a.out and write_json_atomic(a.out, r))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
