"""Rebuild models from fold checkpoints and ensemble their (flip-TTA) probabilities - used by cxr-train's test stage
and by cxr-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_fast.atomic import atomic_path
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.errors import UserError, first_line
from cxr_fast.pipelines import build_loader
from cxr_fast.train.checkpoint import check_fold_checkpoint, load_checkpoint
from cxr_fast.train.config import TrainConfig


def model_from_checkpoint(ckpt: dict, device: torch.device):
    """A CXRClassifier with the checkpoint's backbone and refiner weights, in eval mode."""
    from cxr_fast.model import build_model

    cfg = TrainConfig.from_saved(ckpt["config"]).replace(refiner=bool(ckpt.get("refiner")))
    n = len(ckpt["labels"])
    model = build_model(cfg, n, pretrained=False)
    try:
        model.backbone.load_state_dict(ckpt["model"])
        if model.refiner is not None:
            model.refiner.load_state_dict(ckpt["refiner"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit a {cfg.model!r} model with {n} labels "
                        f"({first_line(e)})") from None
    return model.to(device).eval()


def load_fold_checkpoints(paths: list[str | Path]) -> list[tuple[Path, dict]]:
    """Load every checkpoint and check that they agree on the label list."""
    if not paths:
        raise UserError("no checkpoints given (or the glob matched nothing)")
    loaded = []
    for p in paths:
        ckpt = load_checkpoint(p)
        check_fold_checkpoint(p, ckpt)
        loaded.append((Path(p), ckpt))
    ref_path, ref = loaded[0]
    for p, c in loaded[1:]:
        if list(c["labels"]) != list(ref["labels"]):
            raise UserError(f"{p}: its labels {c['labels']} differ from {ref_path}'s {ref['labels']}")
    return loaded


def ensemble_predict(checkpoints: list[tuple[Path, dict]], samples: SampleSet, *, pipeline: str, batch_size: int,
                     device: torch.device, tta: bool, num_workers: int, amp=None, progress: bool = True,
                     rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean over folds of each fold model's (TTA-averaged) sigmoid probabilities. Returns (index, probs) sorted by
    index, one row per sample (DDP padding removed)."""
    from cxr_fast import dist
    from cxr_fast.train.amp import Amp
    from cxr_fast.train.infer import predict

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


def write_predictions_csv(path: str | Path, names: list[str], label_names: list[str], probs: np.ndarray,
                          image_col: str = "Image_name", extra: dict | None = None) -> None:
    """`Image_name` + one probability column per label, written atomically."""
    path = Path(path)
    df = pd.DataFrame(probs, columns=label_names)
    for k, v in reversed(list((extra or {}).items())):
        df.insert(0, k, v)
    df.insert(0, image_col, names)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")  # float32 round-trips exactly


def write_labels_csv(path: str | Path, names: list[str], label_names: list[str], labels: np.ndarray,
                     image_col: str = "Image_name") -> None:
    """`Image_name` + one 0/1 column per label (blank = unknown), written atomically: the truth beside `oof.csv`,
    as `cxr-eval --truth` and `cxr-compare` read it."""
    df = pd.DataFrame(labels, columns=label_names).astype("Int64")
    df.insert(0, image_col, names)
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False)
