"""Evaluation and prediction over a loader: sigmoid of the refined logits, optional flip TTA.

Under `torch.inference_mode` and the run's AMP, with each batch in the model's memory format (channels_last after
`cxr_fast.train.speed.use_channels_last`); probabilities stay on the device until one transfer at the end. Without
a backward pass an eval batch needs far less memory than a training batch: the loaders' batch size is the caller's
(`--eval_batch_size`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from cxr_fast.model.normalize import normalize
from cxr_fast.progress import loader_bar
from cxr_fast.train.amp import Amp
from cxr_fast.train.speed import model_memory_format


@torch.inference_mode()
def _infer(model: nn.Module, loader: Iterable, amp: Amp, in_chans: int, tta: bool, progress: bool,
           want_labels: bool):
    was_training = model.training
    model.eval()
    probs, labels, index = [], [], []
    memory_format = model_memory_format(model)
    bar = loader_bar(loader, progress, "eval")
    try:
        for batch in loader:
            x = normalize(batch.images, in_chans, memory_format=memory_format)
            with amp.autocast():
                p = torch.sigmoid(model(x).float())
                if tta:  # flip on the device; the refiner sees each view's own logits
                    p = 0.5 * (p + torch.sigmoid(model(x.flip(-1)).float()))
            probs.append(p)  # stays on the device: one transfer at the end, not one sync per batch
            if want_labels:
                labels.append(batch.labels)
            index.append(batch.index)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    if not probs:
        raise ValueError("validate/predict: the loader yielded no batch")
    out_p = torch.cat(probs).float().cpu().numpy()
    out_i = torch.cat(index).cpu().numpy().astype(np.int64)
    out_l = torch.cat(labels).float().cpu().numpy() if want_labels else None
    return out_p, out_l, out_i


def validate(model: nn.Module, loader: Iterable, amp: Amp, *, in_chans: int = 1, tta: bool = False,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (N,C) float32, labels (N,C) float32 with NaN, index (N,) int64) in loader order; probabilities are
    sigmoid of the refined logits, TTA = mean over the image and its horizontal flip."""
    return _infer(model, loader, amp, in_chans, tta, progress, want_labels=True)


def predict(model: nn.Module, loader: Iterable, amp: Amp, *, in_chans: int = 1, tta: bool = False,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N,C) float32, index (N,) int64) in loader order, as `validate` without labels."""
    probs, _, index = _infer(model, loader, amp, in_chans, tta, progress, want_labels=False)
    return probs, index
