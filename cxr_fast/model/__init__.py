"""The classifier: a timm backbone followed by the optional label-graph refiner."""

from __future__ import annotations

import torch
from torch import nn

from cxr_fast.model.refiner import LabelGraphRefiner

__all__ = ["CXRClassifier", "LabelGraphRefiner", "build_model", "unwrap"]


class CXRClassifier(nn.Module):
    """backbone(x) -> logits z (B, C); refiner(z) -> refined logits z' (B, C), always float32.

    `x` is the normalised float image batch (see `cxr_fast.model.normalize`). `refiner=None` (--no-refiner) returns
    the backbone's logits cast to float32.
    """

    def __init__(self, backbone: nn.Module, refiner: LabelGraphRefiner | None = None):
        super().__init__()
        self.backbone = backbone
        self.refiner = refiner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)  # (B, C), half precision under autocast
        return z.float() if self.refiner is None else self.refiner(z)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers; also reaches
    the averaged model of a `ModelEma` (its `.module`)."""
    while True:
        if isinstance(model, CXRClassifier):
            return model
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def build_model(config, n_labels: int, *, pretrained: bool | None = None) -> CXRClassifier:
    """The one place a classifier is assembled (training, inference, benchmarks): `config` has the `TrainConfig`
    fields model, in_chans, pretrained, weights, drop_rate, refiner, refiner_alpha. `pretrained=False` skips any
    download or weights file (inference, where a checkpoint's weights are loaded next)."""
    from cxr_fast.model.backbone import create_backbone

    use_pretrained = config.pretrained if pretrained is None else pretrained
    backbone = create_backbone(config.model, num_classes=n_labels, in_chans=int(config.in_chans),
                               pretrained=use_pretrained, weights=config.weights if use_pretrained else None,
                               drop_rate=float(config.drop_rate))
    refiner = LabelGraphRefiner(n_labels, alpha=float(config.refiner_alpha)) if config.refiner else None
    return CXRClassifier(backbone, refiner)
