"""A real training step (timm backbone + label-graph refiner, ASL, AdamW, AMP, EMA: `train_one_epoch`) on this
machine's device, and the pinned host-to-device copy rate the PIL pipeline's batches travel at."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from cxr_fast.doctor import Row

# (model, image size, batch, steps): a real convolutional backbone on a GPU, timm's tiny test model on a CPU
GPU_STEP = ("resnet18", 224, 32, 8)
CPU_STEP = ("test_resnet", 64, 4, 2)
MIN_H2D_GBPS = 6.0  # well under any PCIe 3 x16 link's pinned rate (~12 GB/s); below it something is misconfigured


def training_step_row(device: torch.device) -> Row:
    from cxr_fast.data.samples import Batch
    from cxr_fast.model import CXRClassifier, LabelGraphRefiner
    from cxr_fast.model.backbone import create_backbone
    from cxr_fast.model.ema import ModelEma
    from cxr_fast.model.losses import build_loss
    from cxr_fast.train.amp import Amp
    from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
    from cxr_fast.train.speed import use_channels_last

    name, size, bs, steps = GPU_STEP if device.type == "cuda" else CPU_STEP
    n = 14
    torch.manual_seed(0)
    model = CXRClassifier(create_backbone(name, num_classes=n, in_chans=1, pretrained=False),
                          LabelGraphRefiner(n)).to(device)
    channels_last = use_channels_last(model, device)
    ema = ModelEma(model, decay=0.9)
    labels = (np.random.default_rng(0).random((bs, n)) < 0.3).astype(np.float32)
    loss_fn = build_loss("asl", labels).to(device)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=1e-4)
    scheduler = build_scheduler(optimizer, warmup_steps=0, total_steps=100)
    amp = Amp(device)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randint(0, 256, (bs, 1, size, size), dtype=torch.uint8, generator=g).to(device),
                  torch.from_numpy(labels).to(device), torch.arange(bs, device=device))
    before = [p.detach().clone() for p in model.parameters()]
    ema_before = [p.detach().clone() for p in ema.module.parameters()]
    t = time.perf_counter()
    stats = train_one_epoch(model, [batch] * steps, loss_fn, optimizer, scheduler, amp, ema=ema, progress=False,
                            check_every=steps)
    seconds = time.perf_counter() - t
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    ema_moved = any(not torch.equal(a, b) for a, b in zip(ema_before, ema.module.parameters()))
    what = (f"{name} {size} px, batch {bs}, {steps} steps, {amp!r}, channels_last {channels_last}, refiner + EMA: "
            f"loss {stats['loss']:.4f}, {seconds:.1f} s")
    data = {k: stats[k] for k in ("loss", "skipped_steps", "overflow_steps", "img_per_s")}
    ok = math.isfinite(stats["loss"]) and moved and ema_moved and stats["skipped_steps"] == 0
    if not ok:
        why = "non-finite loss" if not math.isfinite(stats["loss"]) else (
            f"{stats['skipped_steps']} skipped steps" if stats["skipped_steps"] else "weights or EMA did not move")
        return Row("training step", "fail", f"{what}: {why}", "try --amp_dtype fp16 or --no_amp and report "
                                                             "doctor.json", data)
    return Row("training step", "pass", what, data=data)


def h2d_row(device: torch.device, mib: int = 256, repeats: int = 5) -> Row:
    if device.type != "cuda":
        return Row("pinned host-to-device copy", "skip", "no CUDA")
    src = torch.empty(mib * 2**20, dtype=torch.uint8).pin_memory()
    dst = torch.empty_like(src, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)  # sync point: the copies are asynchronous
    gbps = repeats * src.numel() / (time.perf_counter() - t) / 1e9
    detail = f"{gbps:.1f} GB/s ({mib} MiB pinned buffer)"
    if gbps < MIN_H2D_GBPS:
        return Row("pinned host-to-device copy", "fail", detail,
                   "check the GPU's PCIe link (nvidia-smi -q | grep -A2 'Link Width'), the process's NUMA binding "
                   "(numactl --cpunodebind), or the VM's IOMMU settings", {"gb_per_s": gbps})
    return Row("pinned host-to-device copy", "pass", detail, data={"gb_per_s": gbps})
