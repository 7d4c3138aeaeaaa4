"""The fold ensemble: each fold checkpoint's model over one loader, (flip-TTA) probabilities averaged - used by
cxr-train's test stage and by cxr-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr_fast import dist
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.pipelines import build_loader
from cxr_fast.train.amp import Amp
from cxr_fast.train.checkpoint import model_from_checkpoint
from cxr_fast.train.config import TrainConfig
from cxr_fast.train.infer import predict


def ensemble_predict(checkpoints: list[tuple[Path, dict]], samples: SampleSet, *, pipeline: str, batch_size: int,
                     device: torch.device, tta: bool, num_workers: int, amp=None, progress: bool = True,
                     rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds of each fold model's (TTA-averaged) sigmoid probabilities. Returns (index, probs) sorted by
    index, one row per sample (DDP padding removed)."""
    amp = amp or Amp(device, enabled=False)
    total = None
    loaders = {}  # one loader per input size, shared by the folds that use it
    for path, ckpt in checkpoints:
        cfg = TrainConfig.from_saved(ckpt["config"])
        size, in_chans = int(cfg.img_size), int(cfg.in_chans)
        if size not in loaders:
            loaders[size] = build_loader(pipeline, samples, AugmentSpec.for_eval(size), batch_size, device,
                                         num_workers=num_workers, rank=rank, world=world)
        loader = loaders[size]
        model = model_from_checkpoint(ckpt, device)
        probs, index = predict(model, loader, amp, in_chans=in_chans, tta=tta, progress=progress)
        index, probs = dist.gather_predictions(probs, index=index)
        total = probs.astype(np.float64) if total is None else total + probs
        del model
    return index, (total / len(checkpoints)).astype(np.float32)
