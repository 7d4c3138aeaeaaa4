"""The label-coupling refiner: its formula (diagonal ignored, alpha, float32 under autocast), gradients, the L1 prox
(exact zeros, per-entry thresholds), its state_dict; and the classifier wrapper around it (no refiner, unwrap)."""

from __future__ import annotations

import pytest
import torch

from cxr_fast.model import unwrap
from cxr_fast.model.refiner import LabelGraphRefiner
from tests.helpers import tiny_classifier

C = 4


def test_refiner_forward_matches_formula_and_ignores_diagonal():
    torch.manual_seed(0)
    ref = LabelGraphRefiner(C, alpha=0.3)
    with torch.no_grad():
        ref.A.copy_(torch.randn(C, C))
        ref.A.fill_diagonal_(5.0)  # must have no effect
    z = torch.randn(6, C)
    off = ref.A.detach().clone()
    off.fill_diagonal_(0.0)
    expected = z + 0.3 * torch.sigmoid(z) @ off
    torch.testing.assert_close(ref(z), expected)
    with torch.no_grad():
        ref.A.fill_diagonal_(-7.0)
    torch.testing.assert_close(ref(z), expected)


def test_refiner_alpha_scales_the_correction():
    torch.manual_seed(1)
    z = torch.randn(5, C)
    A = torch.randn(C, C)
    outs = {}
    for alpha in (0.0, 0.3, 0.6):
        ref = LabelGraphRefiner(C, alpha=alpha)
        with torch.no_grad():
            ref.A.copy_(A)
        outs[alpha] = ref(z) - z
    assert torch.equal(outs[0.0], torch.zeros_like(z))
    torch.testing.assert_close(outs[0.6], 2 * outs[0.3])
    assert outs[0.3].abs().max() > 0.1


def test_refiner_is_float32_under_autocast():
    ref = LabelGraphRefiner(C)
    with torch.no_grad():
        ref.A.copy_(torch.randn(C, C) * 1e-3)  # small couplings: bf16 would round the correction badly
    z = torch.randn(3, C).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ref(z)
    assert out.dtype == torch.float32
    zf = z.float()
    off = ref.A.detach().clone()
    off.fill_diagonal_(0.0)
    torch.testing.assert_close(out, zf + 0.3 * torch.sigmoid(zf) @ off, rtol=0, atol=1e-6)


def test_gradient_reaches_refiner_and_backbone():
    model = tiny_classifier()
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, C) and out.dtype == torch.float32
    (out * torch.arange(1.0, C + 1)).sum().backward()
    g = model.refiner.A.grad
    assert g is not None
    assert torch.all(torch.diagonal(g) == 0)
    off = ~torch.eye(C, dtype=torch.bool)
    assert torch.all(g[off] != 0)
    bb_grads = [p.grad for p in model.backbone.parameters()]
    assert all(gr is not None for gr in bb_grads)
    assert sum(gr.abs().sum().item() for gr in bb_grads) > 0


def test_prox_makes_exact_zeros_and_shrinks_by_exactly_t():
    ref = LabelGraphRefiner(3)
    A = torch.tensor([[0.9, 0.5, -0.2], [-0.75, 0.1, 0.25], [0.3, -0.5, 2.0]])
    with torch.no_grad():
        ref.A.copy_(A)
    ref.prox_(0.25)
    expected = torch.tensor([[0.0, 0.25, 0.0], [-0.5, 0.0, 0.0], [0.05, -0.25, 0.0]])
    torch.testing.assert_close(ref.A.detach(), expected, rtol=0, atol=1e-7)
    assert ref.A[0, 2].item() == 0.0 and ref.A[1, 2].item() == 0.0  # exactly zero, not tiny
    assert torch.all(torch.diagonal(ref.A) == 0)
    assert ref.sparsity() == pytest.approx(2 / 6)
    assert ref.l1() == pytest.approx(0.25 + 0.5 + 0.05 + 0.25)


def test_prox_accepts_a_per_entry_threshold():
    ref = LabelGraphRefiner(2)
    with torch.no_grad():
        ref.A.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    ref.prox_(torch.tensor([[0.0, 0.4], [2.0, 0.0]]))
    torch.testing.assert_close(ref.A.detach(), torch.tensor([[0.0, 0.6], [0.0, 0.0]]))


def test_refiner_state_dict_has_key_A():
    ref = LabelGraphRefiner(C)
    assert list(ref.state_dict()) == ["A"]
    assert torch.equal(ref.state_dict()["A"], torch.zeros(C, C))


def test_classifier_without_refiner_and_unwrap():
    model = tiny_classifier(refiner=False)
    assert model.refiner is None
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(model(x), model.backbone(x).float())
    assert unwrap(torch.nn.DataParallel(model)) is model
    assert unwrap(torch.compile(model)) is model  # compile is lazy: wrapping costs nothing
    assert unwrap(model) is model
