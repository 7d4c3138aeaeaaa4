"""The fold ensemble: every fold checkpoint's model over one pass of a loader, (flip-TTA) probabilities averaged -
used by cxr-train's test stage and by cxr-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_fast import dist
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.pipelines import build_loader
from cxr_fast.pipelines.pil import unreadable_positions
from cxr_fast.train.amp import Amp
from cxr_fast.train.checkpoint import model_from_checkpoint
from cxr_fast.train.config import TrainConfig
from cxr_fast.train.infer import predict


class MeanOfFolds(nn.Module):
    """Fold models that take the same input, as one model: its output is the logit of their mean probability, so
    `infer.predict`'s sigmoid (and flip TTA, a mean too) gives the ensemble's probability. One pass of the loader
    then serves every fold: each image is decoded once, not once per fold. The round trip is in float64."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.folds = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(m(x).double()) for m in self.folds]).mean(0)
        return torch.logit(p)


def ensemble_predict(checkpoints: list[tuple[Path, dict]], samples: SampleSet, *, pipeline: str, batch_size: int,
                     device: torch.device, tta: bool, num_workers: int, amp=None, progress: bool = True,
                     rank: int = 0, world: int = 1, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds of each fold model's (TTA-averaged) sigmoid probabilities. Returns (index, probs) sorted by
    index, one row per sample (DDP padding removed). Folds that share an input size and channel count run together
    on one pass of the loader (their models on the device at once). A file that cannot be read stops the pass with
    one line naming it; with `skip_bad` (file samples, PIL pipeline) such files are left out of the result instead:
    the caller finds them as the indices missing from it."""
    amp = amp or Amp(device, enabled=False)
    groups: dict[tuple[int, int], list[dict]] = {}
    for _, ckpt in checkpoints:
        cfg = TrainConfig.from_saved(ckpt["config"])
        groups.setdefault((int(cfg.img_size), int(cfg.in_chans)), []).append(ckpt)
    extra = {"skip_bad": True} if skip_bad else {}
    loaders = {}  # one loader per input size, shared by the groups that use it
    total = None
    for (size, in_chans), ckpts in groups.items():
        if size not in loaders:
            loaders[size] = build_loader(pipeline, samples, AugmentSpec.for_eval(size), batch_size, device,
                                         num_workers=num_workers, rank=rank, world=world, **extra)
        model = MeanOfFolds([model_from_checkpoint(ck, device) for ck in ckpts])
        probs, index = predict(model, loaders[size], amp, in_chans=in_chans, tta=tta, progress=progress)
        del model
        index, probs = dist.gather_predictions(probs, index=index)
        keep = ~unreadable_positions(index)
        index, probs = index[keep], probs[keep].astype(np.float64) * len(ckpts)
        total = probs if total is None else total + probs
    return index, (total / len(checkpoints)).astype(np.float32)
