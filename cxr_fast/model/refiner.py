"""Label-graph refiner: a learned, sparse C×C coupling matrix that nudges each label's logit by the others'
probabilities, z' = z + alpha * sigmoid(z) @ A (A's diagonal masked to 0).

Sparsity is real: `prox_` soft-thresholds A in place (the proximal step of an L1 penalty), so unhelpful couplings
become exactly 0 instead of merely small (the original's subgradient L1 never reached 0).
"""

from __future__ import annotations

import torch
from torch import nn


class LabelGraphRefiner(nn.Module):
    """z' = z + alpha * sigmoid(z) @ A_offdiag, in float32. A[i, j] is how much label i's probability raises label
    j's logit. The state_dict holds one key, "A" (the README's plotting snippet reads ckpt["refiner"]["A"])."""

    def __init__(self, num_classes: int, alpha: float = 0.3):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.A = nn.Parameter(torch.zeros(num_classes, num_classes))

    def offdiag(self) -> torch.Tensor:
        """A with its diagonal masked to 0 (a label never couples to itself), differentiable."""
        eye = torch.eye(self.num_classes, dtype=torch.bool, device=self.A.device)
        return self.A.masked_fill(eye, 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: a half-precision matmul here would round the small couplings away
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            return z + self.alpha * (torch.sigmoid(z) @ self.offdiag().float())  # (B, C) @ (C, C)

    @torch.no_grad()
    def prox_(self, threshold: float | torch.Tensor) -> None:
        """Soft-threshold A in place, sign(A) * max(|A| - t, 0), and zero its diagonal.

        `threshold` is a float or a tensor broadcastable to A (a per-entry threshold, e.g. Adam-preconditioned).
        """
        A = self.A
        t = torch.as_tensor(threshold, dtype=A.dtype, device=A.device)
        A.copy_(torch.sign(A) * torch.clamp(A.abs() - t, min=0.0))
        A.fill_diagonal_(0.0)

    @torch.no_grad()
    def sparsity(self) -> float:
        """Fraction of off-diagonal entries of A that are exactly 0."""
        C = self.num_classes
        if C < 2:
            return 1.0
        off = ~torch.eye(C, dtype=torch.bool, device=self.A.device)
        return (self.A[off] == 0).float().mean().item()

    @torch.no_grad()
    def l1(self) -> float:
        """sum |A| (the diagonal is kept at 0 by prox_ and ignored by forward)."""
        return self.A.abs().sum().item()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}"
