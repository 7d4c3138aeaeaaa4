"""The exportable fold ensemble: uint8 images in, per-label probabilities out, with everything between in the graph.

Input `images`: uint8 (B, 1, S, S), the whole radiograph squashed to S x S exactly as `cxr-predict --pipeline pil`
does it (`preprocess_file`: PIL bilinear resize of the 8-bit grey image). Output `probs`: float32 (B, C), the mean
over folds of sigmoid(refined logits), each fold's averaged with its horizontal flip when built with `tta=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_fast.errors import UserError, first_line
from cxr_fast.model.normalize import GRAY_MEAN, GRAY_STD, RGB_MEAN, RGB_STD
from cxr_fast.run_folder import RunPaths
from cxr_fast.train.config import TrainConfig

PREPROCESS = ("8-bit grey image (16-bit windowed over its own range) squashed to img_size x img_size with PIL "
              "bilinear resize; uint8 (B, 1, S, S)")


class Normalize(nn.Module):
    """uint8 (B, 1, S, S) -> the float input of an `in_chans` network, as `cxr_fast.model.normalize` computes it."""

    def __init__(self, in_chans: int):
        super().__init__()
        if in_chans not in (1, 3):
            raise UserError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans
        # the same float32 constants and the same two operations as normalize(): results agree bit for bit
        if in_chans == 1:
            mean, std = torch.tensor([255.0 * GRAY_MEAN]), torch.tensor([255.0 * GRAY_STD])
        else:
            mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(RGB_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class DeployEnsemble(nn.Module):
    """Normalise once, then each fold's CXRClassifier (backbone + refiner); mean of the folds' probabilities."""

    def __init__(self, models: list[nn.Module], in_chans: int, tta: bool = False):
        super().__init__()
        if not models:
            raise ValueError("DeployEnsemble needs at least one model")
        self.normalize = Normalize(in_chans)
        self.folds = nn.ModuleList(models)
        self.tta = bool(tta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        xf = x.flip(-1) if self.tta else x
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for model in self.folds:
            p = torch.sigmoid(model(x).float())
            if self.tta:  # as cxr-predict --tta: the refiner sees each view's own logits
                p = 0.5 * (p + torch.sigmoid(model(xf).float()))
            total = total + p
        return total / len(self.folds)


def check_agree(checkpoints: list[tuple[Path, dict]]) -> dict:
    """The settings every fold must share (labels, img_size, in_chans); a disagreement is a one-line UserError.
    Returns {labels, img_size, in_chans, model}; `model` joins distinct architecture names with commas."""
    ref_path, ref = checkpoints[0]

    def settings(ckpt):
        cfg = TrainConfig.from_saved(ckpt["config"])
        return {"labels": list(ckpt["labels"]), "img_size": int(cfg.img_size), "in_chans": int(cfg.in_chans)}

    want = settings(ref)
    for path, ckpt in checkpoints[1:]:
        got = settings(ckpt)
        for key in ("labels", "img_size", "in_chans"):
            if got[key] != want[key]:
                raise UserError(f"checkpoints disagree: {path} has {key} {got[key]} but {ref_path} has {want[key]}")
    names = list(dict.fromkeys(str(c["config"]["model"]) for _, c in checkpoints))
    return {**want, "model": ",".join(names)}


def find_thresholds(checkpoints: list[tuple[Path, dict]], labels: list[str]) -> dict | None:
    """The run's thresholds.json next to the checkpoints (None when there is none); it must name the same labels."""
    docs = {}
    for folder in dict.fromkeys(p.parent for p, _ in checkpoints):
        f = RunPaths(folder).thresholds
        if f.is_file():
            try:
                docs[f] = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"{f}: not readable JSON ({first_line(e, 160)})") from None
    if not docs:
        return None
    (first, doc), *rest = docs.items()
    for f, other in rest:
        if other != doc:
            raise UserError(f"checkpoints come from runs with different thresholds: {first} and {f}")
    if not isinstance(doc, dict) or not isinstance(doc.get("operating_points"), dict):
        raise UserError(f"{first}: not a thresholds.json (no 'operating_points' object)")
    if "labels" in doc and list(doc["labels"]) != labels:
        raise UserError(f"{first}: its labels {doc['labels']} differ from the checkpoints' {labels}")
    return doc


def build_ensemble(paths: list[str | Path], tta: bool) -> tuple[DeployEnsemble, dict]:
    """Load the fold checkpoints on the CPU; (the ensemble in eval mode, its metadata as {key: str})."""
    from cxr_fast.train.checkpoint import load_fold_checkpoints, model_from_checkpoint

    checkpoints = load_fold_checkpoints(paths)
    info = check_agree(checkpoints)
    models = [model_from_checkpoint(ckpt, torch.device("cpu")) for _, ckpt in checkpoints]
    module = DeployEnsemble(models, info["in_chans"], tta=tta).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    meta = {
        "labels": json.dumps(info["labels"]), "img_size": str(info["img_size"]), "in_chans": str(info["in_chans"]),
        "model": info["model"], "folds": str(len(checkpoints)), "tta": json.dumps(bool(tta)),
        "input": "images", "output": "probs", "preprocess": PREPROCESS,
    }
    thresholds = find_thresholds(checkpoints, info["labels"])
    if thresholds is not None:
        meta["thresholds"] = json.dumps(thresholds)
    return module, meta


def preprocess_file(path: str | Path, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image file (PNG/JPEG, 8/16-bit, DICOM) -> (uint8 (S, S) as the PIL eval pipeline makes it, the uint8
    (H, W) radiograph it was made from)."""
    from PIL import Image

    from cxr_fast.data.augment import AugmentSpec
    from cxr_fast.images.read import read_gray8
    from cxr_fast.pipelines.pil import apply_spec

    arr, _ = read_gray8(path)
    return apply_spec(Image.fromarray(arr), AugmentSpec.for_eval(int(img_size)), None), arr
