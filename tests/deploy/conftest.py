"""Fixtures for the deploy tests: tiny fold checkpoints built directly (no training run), odd-sized test images, and
one thread for torch (two threads on a busy 2-core machine are many times slower than one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("pytorch_grad_cam")

LABELS = ["Atelectasis", "Pleural Effusion", "No Finding"]
SIZE = 64


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_checkpoint(path: Path, *, seed: int, labels=LABELS, img_size=SIZE, in_chans=1, model="test_resnet",
                    refiner=True) -> Path:
    """A fold checkpoint of a randomly initialised timm model, with non-trivial BN statistics and couplings A."""
    from cxr_fast.model.backbone import create_backbone
    from cxr_fast.model.refiner import LabelGraphRefiner
    from cxr_fast.train.checkpoint import best_checkpoint, save_atomic

    torch.manual_seed(seed)
    n = len(labels)
    backbone = create_backbone(model, num_classes=n, in_chans=in_chans, pretrained=False, drop_rate=0.0)
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        backbone.get_classifier().weight.mul_(30.0)  # probabilities spread over (0, 1), not all near 0.5
    ref = None
    if refiner:
        r = LabelGraphRefiner(n, alpha=0.3)
        torch.nn.init.normal_(r.A, std=1.0)
        ref = r.state_dict()
    cfg = {"model": model, "img_size": img_size, "in_chans": in_chans, "drop_rate": 0.0, "refiner_alpha": 0.3}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(best_checkpoint(backbone.state_dict(), ref, labels=labels, config=cfg, fold=seed, epoch=0,
                                val_auc=0.5, val_auc_per_label={}), path)
    return path


THRESHOLDS = {"version": 1, "labels": LABELS, "decision": "prob >= threshold",
              "operating_points": {"youden": {lb: {"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.7}
                                              for lb in LABELS}, "sens90": {}}}


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory) -> Path:
    """outputs/ of a 2-fold run: test_resnet_fold{1,2}.pth (64 px, 3 labels, refiner) and thresholds.json."""
    out = tmp_path_factory.mktemp("deploy_run")
    for k in (1, 2):
        make_checkpoint(out / f"test_resnet_fold{k}.pth", seed=k)
    (out / "thresholds.json").write_text(json.dumps(THRESHOLDS))
    return out


@pytest.fixture(scope="package")
def test_images(tmp_path_factory) -> Path:
    """Radiograph-like images of odd sizes: 8-bit PNGs, a 16-bit PNG and a JPEG (what cxr-predict lists)."""
    d = tmp_path_factory.mktemp("deploy_images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(100, 80), (64, 64), (50, 130), (211, 173)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = 90 + 100 * xx / w + 50 * np.sin(xx / (7 + i)) * np.cos(yy / 11) + rng.normal(0, 20, (h, w))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img {i}.png")
    Image.fromarray((rng.random((90, 70)) * 50000 + 3000).astype(np.uint16)).save(d / "deep16.png")
    Image.fromarray((rng.random((77, 95)) * 255).astype(np.uint8)).save(d / "photo.jpg", quality=90)
    return d
