"""Grad-CAM (pytorch-grad-cam) maps of the *refined* logits: the target is the label's output of backbone +
refiner, as predictions are made, so a coupling from another label shows in the map too.

For each image and label: `<image>_<label>.npy` (float32 (H, W) in [0, 1] at the original image's size) and
`<image>_<label>.png` (overlay with the label's probability); then `index.html`. Files are written to a hidden
staging folder inside `out` and moved into place at the end, so a failed run leaves no partial set.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from cxr_fast.atomic import write_text_atomic
from cxr_fast.deploy.ensemble import preprocess_file
from cxr_fast.deploy.render import contact_sheet, overlay, resize_map, save_png
from cxr_fast.deploy.target_layer import find_target_layer
from cxr_fast.errors import UserError
from cxr_fast.model.normalize import normalize
from cxr_fast.train.config import TrainConfig

METHODS = ("gradcam", "gradcam++", "eigencam")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff")


def safe_name(s: str) -> str:
    """A file-name-safe form of an image stem or a label ("Pleural Effusion" -> "Pleural_Effusion")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


def list_images(items: list[str]) -> list[Path]:
    """Files as given; a folder contributes its .png/.jpg/.jpeg/.dcm/.tif files (sorted, not recursive)."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise UserError(f"--images {p}: no {'/'.join(e[1:] for e in IMAGE_EXTS)} images in the folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"--images {p}: no such file or folder")
    stems: dict[str, Path] = {}
    for f in files:
        other = stems.setdefault(safe_name(f.stem), f)
        if other != f:
            raise UserError(f"--images: {other} and {f} would write the same output names ({safe_name(f.stem)}_*)")
    return files


def pick_labels(spec: str, labels: list[str]) -> list[int]:
    """`all` or a comma-separated list of the checkpoint's label names -> their indices."""
    if spec.strip().lower() == "all":
        return list(range(len(labels)))
    want = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in want if w not in labels]
    if unknown or not want:
        raise UserError(f"--labels: {', '.join(unknown) or repr(spec)} not among the checkpoint's labels {labels}")
    names = {safe_name(w) for w in want}
    if len(names) < len(set(want)):
        raise UserError(f"--labels {want}: two labels map to the same file name")
    return [labels.index(w) for w in dict.fromkeys(want)]


def cam_for(method: str, model, layer):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

    cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}.get(method)
    if cls is None:
        raise UserError(f"--method must be one of {METHODS}, got {method!r}")
    return cls(model=model, target_layers=[layer])


def image_maps(cam, method: str, x: torch.Tensor, label_ids: list[int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps (L, S, S) float32 in [0, 1] for `label_ids`, probabilities (C,)) for one normalised image (1, c, S, S)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "eigencam":  # no target: one map of the features' first principal component, shared by the labels
        maps = cam(input_tensor=x, targets=None)
        probs = torch.sigmoid(cam.outputs[0].detach().float()).cpu().numpy()
        return np.repeat(maps, len(label_ids), axis=0), probs
    out, probs = [], None
    for i in range(0, len(label_ids), batch):
        ids = label_ids[i:i + batch]
        xs = x.expand(len(ids), -1, -1, -1).contiguous()
        out.append(cam(input_tensor=xs, targets=[ClassifierOutputTarget(j) for j in ids]))
        if probs is None:
            probs = torch.sigmoid(cam.outputs[0].detach().float()).cpu().numpy()
    return np.concatenate(out).astype(np.float32), probs


def run_explain(checkpoint: str | Path, images: list[str], out: str | Path, *, labels: str = "all",
                method: str = "gradcam", img_size: int | None = None, device: str | torch.device = "cpu",
                batch: int = 8, log=print) -> dict:
    """Maps, overlays and index.html for every image x label; returns {"out", "images", "labels", "layer"}."""
    from cxr_fast.train.checkpoint import load_fold_checkpoints, model_from_checkpoint

    if method not in METHODS:
        raise UserError(f"--method must be one of {METHODS}, got {method!r}")
    (_, ckpt), = load_fold_checkpoints([checkpoint])
    names = list(ckpt["labels"])
    label_ids = pick_labels(labels, names)
    files = list_images(images)
    cfg = TrainConfig.from_saved(ckpt["config"])
    size, in_chans = int(img_size or cfg.img_size), int(cfg.in_chans)
    device = torch.device(device)
    model = model_from_checkpoint(ckpt, device)
    layer_name, layer = find_target_layer(model.backbone, in_chans, size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    stage = out / f".cxr-explain-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    rows = []
    try:
        with cam_for(method, model, layer) as cam:
            for f in files:
                rows.append(_explain_one(cam, method, f, stage, names, label_ids, size, in_chans, device, batch))
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    shown = [names[i] for i in label_ids]
    write_text_atomic(out / "index.html", contact_sheet(rows, shown, f"cxr-explain: {method} on "
                                                        f"{cfg.model} ({layer_name}), {Path(checkpoint).name}"))
    log(f"wrote {out}: {len(files)} image(s) x {len(shown)} label(s), {method} on {cfg.model} layer "
        f"{layer_name!r}; open {out / 'index.html'}")
    return {"out": str(out), "images": [str(f) for f in files], "labels": shown, "layer": layer_name}


def _explain_one(cam, method, path: Path, stage: Path, names, label_ids, size, in_chans, device, batch) -> dict:
    small, gray = preprocess_file(path, size)
    x = normalize(torch.from_numpy(small)[None, None].to(device), in_chans)
    maps, probs = image_maps(cam, method, x, label_ids, batch)
    h, w = gray.shape
    stem = safe_name(path.stem)
    cells = {}
    for k, j in enumerate(label_ids):
        base = f"{stem}_{safe_name(names[j])}"
        full = resize_map(maps[k], h, w)
        np.save(stage / f"{base}.npy", full)
        save_png(overlay(gray, full, f"{names[j]}  p = {probs[j]:.3f}"), stage / f"{base}.png")
        cells[names[j]] = (f"{base}.png", float(probs[j]))
    return {"image": path.name, "cells": cells}
