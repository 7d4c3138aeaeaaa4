"""The losses: ASL against a hand computation, NaN targets (no value, no gradient), fp16 extremes, masked BCE with
pos_weight, label smoothing, pos_weight_from_labels and build_loss's choices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_fast.errors import UserError
from cxr_fast.model.losses import AsymmetricLoss, MaskedBCEWithLogits, build_loss, pos_weight_from_labels


def _asl_by_hand(x: float, y: int, gamma_neg=4.0, gamma_pos=0.0, clip=0.05) -> float:
    p = 1 / (1 + math.exp(-x))
    if y == 1:
        return -((1 - p) ** gamma_pos) * math.log(p)
    pm = max(p - clip, 0.0)
    return -(pm ** gamma_neg) * math.log(1 - pm)


def test_asl_matches_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, float("nan")]])
    per_sample = [
        _asl_by_hand(2.0, 1) + _asl_by_hand(-1.0, 0) + _asl_by_hand(0.5, 0),
        _asl_by_hand(-3.0, 1) + _asl_by_hand(1.5, 0),  # the NaN target is left out
    ]
    expected = sum(per_sample) / 2  # mean over the batch of per-sample sums over known labels
    assert AsymmetricLoss()(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    # spot check one term: -log(sigmoid(2)) = 0.126928
    assert _asl_by_hand(2.0, 1) == pytest.approx(0.126928, abs=1e-6)
    # gradients: the focal weight is a constant for backprop, as in the official training script
    x = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    AsymmetricLoss()(x, torch.tensor([[1.0, 0.0, 0.0]])).backward()
    p = torch.sigmoid(x.detach())[0]
    pm = p[1:] - 0.05
    expected_grad = torch.cat([p[:1] - 1, pm ** 4 * p[1:] * (1 - p[1:]) / (1 - pm)])  # d/dz of -w log(1 - p_m)
    torch.testing.assert_close(x.grad[0], expected_grad)
    x.grad = None
    AsymmetricLoss(focal_grad=True)(x, torch.tensor([[1.0, 0.0, 0.0]])).backward()
    assert x.grad[0, 1] > 1.5 * expected_grad[1]  # the weight's own derivative adds to the push on negatives
    # a negative below the clip margin costs nothing
    assert AsymmetricLoss()(torch.tensor([[-4.0]]), torch.tensor([[0.0]])).item() == 0.0


@pytest.mark.parametrize("loss_fn", [AsymmetricLoss(), MaskedBCEWithLogits(torch.tensor([3.0, 1.0, 10.0, 2.0]))])
def test_nan_targets_contribute_no_value_and_no_gradient(loss_fn):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[1.0, float("nan"), 0.0, 1.0], [0.0, 0.0, float("nan"), 1.0], [1.0, 1.0, 0.0, 0.0]])
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0
    known = ~torch.isnan(targets)
    assert torch.all(logits.grad[known] != 0)
    # same value as the same batch with the unknown entries' logits changed wildly
    logits2 = logits.detach().clone()
    logits2[~known] = 1e4
    assert loss_fn(logits2, targets).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("loss_fn", [AsymmetricLoss(), MaskedBCEWithLogits(torch.full((3,), 10.0)),
                                     AsymmetricLoss(label_smooth=0.1)])
def test_losses_finite_for_fp16_extremes(loss_fn):
    logits = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4]], dtype=torch.float16, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, float("nan")]])  # right, right, wrong / wrong, right
    loss = loss_fn(logits, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.all(torch.isfinite(logits.grad))
    # logits produced by a layer under fp16 autocast (|z| = 4e4, near the fp16 limit)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.fill_(1e4)
        lin.bias.zero_()
    x = torch.ones(2, 4) * torch.tensor([[1.0], [-1.0]])
    with torch.autocast("cpu", dtype=torch.float16):
        z = lin(x)
    assert z.dtype == torch.float16
    loss = loss_fn(z, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(lin.weight.grad))
    # computed in float32: fp16 logits give the loss of the same values in float32, to float32 precision
    torch.manual_seed(0)
    z16 = (torch.randn(8, 3) * 3).half()
    t = (torch.rand(8, 3) < 0.3).float()
    assert loss_fn(z16, t).item() == pytest.approx(loss_fn(z16.float(), t).item(), rel=1e-6)


def test_masked_bce_matches_torch_with_pos_weight():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, float("nan")], [0, 0, 1]])
    pw = torch.tensor([2.0, 1.0, 5.0])
    got = MaskedBCEWithLogits(pw)(logits, targets)
    known = ~torch.isnan(targets)
    ref = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), pos_weight=pw, reduction="none")
    assert got.item() == pytest.approx(ref[known].sum().item() / 4, rel=1e-6)


def test_pos_weight_from_labels_clips_and_ignores_nan():
    nan = np.nan
    labels = np.array([
        # 50%   1/12    all pos  no pos  all NaN  2 of 6 known
        [1, 1, 1, 0, nan, 1],
        [0, 0, 1, 0, nan, 0],
        [1, 0, 1, 0, nan, 0],
        [0, 0, 1, 0, nan, 0],
    ] + [[1, 0, 1, 0, nan, nan], [0, 0, 1, 0, nan, nan]] * 4, dtype=np.float32)
    w = pos_weight_from_labels(labels)
    assert w.dtype == torch.float32
    # col 0: 6 pos / 6 neg -> 1; col 1: 1 pos / 11 neg -> 11 clipped to 10; col 2: 0 neg -> 0 clipped to 1;
    # col 3: no positive -> 10; col 4: unknown everywhere -> 1; col 5: 1 pos / 3 neg among the known -> 3
    torch.testing.assert_close(w, torch.tensor([1.0, 10.0, 1.0, 10.0, 1.0, 3.0]))


def test_label_smoothing_on_known_targets():
    torch.manual_seed(0)
    logits = torch.randn(3, 3)
    targets = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    smoothed = torch.where(torch.isnan(targets), targets, targets * 0.9 + 0.05)
    for smooth_fn, plain_fn in [(AsymmetricLoss(label_smooth=0.1), AsymmetricLoss()),
                                (MaskedBCEWithLogits(label_smooth=0.1), MaskedBCEWithLogits())]:
        a = smooth_fn(logits, targets).item()
        assert a == pytest.approx(plain_fn(logits, smoothed).item(), rel=1e-6)
        assert a != pytest.approx(plain_fn(logits, targets).item(), rel=1e-3)


def test_build_loss():
    labels = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    asl = build_loss("asl", labels)
    assert isinstance(asl, AsymmetricLoss) and (asl.gamma_neg, asl.gamma_pos, asl.clip) == (4.0, 0.0, 0.05)
    bce = build_loss("bce", labels, label_smooth=0.05)
    assert isinstance(bce, MaskedBCEWithLogits) and bce.label_smooth == 0.05
    torch.testing.assert_close(bce.pos_weight, torch.tensor([3.0, 3.0]))
    with pytest.raises(UserError, match="--loss"):
        build_loss("focal", labels)
    with pytest.raises(UserError, match="--label_smooth"):
        build_loss("asl", labels, label_smooth=1.5)
