"""Multilabel losses with unknown labels (NaN targets), computed in float32.

Reduction, the same for every loss here: sum over a sample's known labels, mean over the batch (a masked entry
contributes neither value nor gradient). Keeping one reduction keeps `--refiner_l1` on the same scale for ASL and BCE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_fast.errors import UserError


def _known(targets: torch.Tensor, label_smooth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of known targets, targets with NaN -> 0 and label smoothing y*(1-eps) + eps/2 applied), float32."""
    targets = targets.float()
    known = ~torch.isnan(targets)
    y = torch.where(known, targets, torch.zeros_like(targets))
    if label_smooth > 0:
        y = y * (1.0 - label_smooth) + label_smooth / 2.0
    return known, y


def _reduce(per_entry: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    # where() (not a multiply) so that a masked entry's gradient is exactly 0 even if its term were non-finite
    return torch.where(known, per_entry, torch.zeros_like(per_entry)).sum() / max(per_entry.shape[0], 1)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021), the official semantics:

        positives: -(1 - p)^gamma_pos * log(p)
        negatives: -p_m^gamma_neg * log(1 - p_m),  p_m = max(p - clip, 0)   (probability margin shift)

    Differences from the official code, all numerical: logits are cast to float32 first (under fp16 the official
    1e-8 clamp rounds to 0 and 0 * log(0) gives NaN in the original); log(p) is `logsigmoid` (exact, and it keeps
    a gradient for a confidently wrong positive, which the eps clamp zeroes); with clip = 0 the negative term is
    `logsigmoid(-x)`. `eps` only floors the shifted negative probability (which is >= clip anyway when clip > 0).
    As in the official training script (`disable_torch_grad_focal_loss=True`), the focal weights are constants for
    backprop; `focal_grad=True` differentiates through them too.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 label_smooth: float = 0.0, focal_grad: bool = False):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps
        self.label_smooth = float(label_smooth)
        self.focal_grad = focal_grad

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits.float()  # (B, C)
        known, y = _known(targets, self.label_smooth)
        p = torch.sigmoid(x)
        log_p = F.logsigmoid(x)
        if self.clip > 0:
            q = (1.0 - p + self.clip).clamp(min=self.eps, max=1.0)  # 1 - p_m
            log_q = torch.log(q)
        else:
            q = 1.0 - p
            log_q = F.logsigmoid(-x)
        loss = y * log_p + (1.0 - y) * log_q
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            pt = p * y + q * (1.0 - y)
            gamma = self.gamma_pos * y + self.gamma_neg * (1.0 - y)
            w = torch.pow(1.0 - pt, gamma)
            loss = loss * (w if self.focal_grad else w.detach())
        return _reduce(-loss, known)

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
                f"label_smooth={self.label_smooth}")


class MaskedBCEWithLogits(nn.Module):
    """Binary cross-entropy on logits with per-label `pos_weight` (C,), NaN targets masked out."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smooth: float = 0.0):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())
        self.label_smooth = float(label_smooth)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        known, y = _known(targets, self.label_smooth)
        pw = None if self.pos_weight is None else self.pos_weight.to(x.device)
        per_entry = F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
        return _reduce(per_entry, known)


def pos_weight_from_labels(labels: np.ndarray, max_weight: float = 10.0) -> torch.Tensor:
    """neg / pos per label over the known (non-NaN) entries, clipped to [1, max_weight].

    A label with no positive gets `max_weight` (the limit of neg/pos as pos -> 0); a label with no known entry at
    all gets 1 (nothing to rebalance). Returns a float32 tensor (C,).
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    known = ~np.isnan(labels)
    pos = ((labels > 0.5) & known).sum(0).astype(np.float64)
    neg = ((labels <= 0.5) & known).sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(pos > 0, neg / np.maximum(pos, 1), max_weight)
    w = np.where(known.sum(0) == 0, 1.0, w)
    return torch.from_numpy(np.clip(w, 1.0, max_weight)).float()


# The registry --loss reads its choices from: name -> (training fold's labels, label_smooth) -> loss module.
# A new loss is its class above and one line here.
LOSSES: dict[str, Callable[[np.ndarray, float], nn.Module]] = {
    "asl": lambda train_labels, smooth: AsymmetricLoss(label_smooth=smooth),  # ASL defaults 4 / 0 / 0.05
    "bce": lambda train_labels, smooth: MaskedBCEWithLogits(pos_weight_from_labels(train_labels), label_smooth=smooth),
}


def build_loss(name: str, train_labels: np.ndarray, label_smooth: float = 0.0) -> nn.Module:
    """The training loss by --loss name; `train_labels` (the training fold's labels only) set BCE's pos_weight."""
    if not 0.0 <= label_smooth < 1.0:
        raise UserError(f"--label_smooth must be in [0, 1), got {label_smooth}")
    if name not in LOSSES:
        raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name](train_labels, label_smooth)
