"""The training engine on CPU: optimiser groups, LR schedule, training steps (the refiner's couplings, the prox, EMA),
skipping non-finite steps, TTA and evaluation order. (normalize: tests/model/test_normalize.py; Amp: test_amp.py;
the prox threshold: test_step.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxr_fast.model import CXRClassifier
from cxr_fast.model.backbone import create_backbone
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.losses import build_loss
from cxr_fast.model.normalize import normalize
from cxr_fast.model.refiner import LabelGraphRefiner
from cxr_fast.train.amp import Amp
from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
from cxr_fast.train.infer import predict, validate
from tests.helpers import CPU, FlakyLoss, TensorLoader, TinyBackbone, toy_data, toy_model

# ---------------------------------------------------------------- optimiser and schedule

def test_optimizer_groups():
    model = CXRClassifier(create_backbone("test_resnet", 3, pretrained=False), LabelGraphRefiner(3))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.refiner.A)] == 0.0
    assert by_id[id(model.backbone.conv1[0].weight)] == 0.05
    assert by_id[id(model.backbone.fc.bias)] == 0.0
    assert by_id[id(model.backbone.bn1.weight)] == 0.0
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    no_ref = build_optimizer(CXRClassifier(TinyBackbone()), lr=1e-3, weight_decay=0.05)
    assert [g["name"] for g in no_ref.param_groups] == ["decay", "no_decay"]


def _lrs(opt, sched, n: int) -> list[float]:
    """The learning rate seen by each of n optimiser steps."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_schedule_shape():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    lrs = _lrs(opt, build_scheduler(opt, warmup_steps=5, total_steps=25), 26)
    assert lrs[0] == pytest.approx(2.0 / 5)  # starts at lr / warmup_steps, not 0
    assert np.allclose(np.diff(lrs[:5]), 2.0 / 5)  # linear warm-up
    assert max(lrs) == pytest.approx(2.0) and lrs[4] == pytest.approx(2.0) and lrs[5] == pytest.approx(2.0)
    after = np.array(lrs[5:])
    assert np.all(np.diff(after) <= 1e-12)  # monotone after warm-up
    assert lrs[15] == pytest.approx(1.0)  # cosine midpoint
    assert lrs[25] == pytest.approx(0.0, abs=1e-12) and lrs[24] > 0  # 0 at total_steps, not before


def test_lr_schedule_without_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = _lrs(opt, build_scheduler(opt, warmup_steps=0, total_steps=4), 5)
    assert lrs == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


# ---------------------------------------------------------------- training

def _train(model, loader, epochs, lr=1e-2, refiner_l1=1e-2, loss="bce", ema=None, **kw):
    labels = loader.labels.numpy()
    loss_fn = build_loss(loss, labels)
    opt = build_optimizer(model, lr=lr, weight_decay=1e-4)
    sched = build_scheduler(opt, warmup_steps=8, total_steps=epochs * len(loader))
    amp = Amp(CPU, enabled=False)
    stats, step = [], 0
    for _ in range(epochs):
        s = train_one_epoch(model, loader, loss_fn, opt, sched, amp, ema=ema, refiner_l1=refiner_l1, step=step,
                            progress=False, **kw)
        step = s["step"]
        stats.append(s)
    return stats


def test_training_learns_and_makes_couplings_sparse_where_labels_cooccur():
    images, labels = toy_data()
    loader = TensorLoader(images, labels, batch_size=32, shuffle=True)
    model = toy_model()
    ema = ModelEma(model, decay=0.999)
    stats = _train(model, loader, epochs=10, ema=ema)
    assert stats[-1]["loss"] < 0.75 * stats[0]["loss"]
    assert stats[-1]["step"] == 10 * len(loader) and stats[-1]["images"] == 256
    assert set(stats[-1]) >= {"loss", "lr", "images", "seconds", "img_per_s", "data_wait_s", "skipped_steps", "step",
                              "refiner_sparsity", "refiner_l1"}
    assert stats[-1]["skipped_steps"] == 0 and stats[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    A = model.refiner.A.detach()
    off = ~torch.eye(3, dtype=torch.bool)
    # the one useful coupling (label 0 -> label 1) is learnt and clearly the strongest ...
    assert A[0, 1] > 0.05
    assert A[0, 1] >= 3 * A[off].abs().sort().values[-2]
    # ... and the prox has set most of the others exactly to zero
    assert stats[-1]["refiner_sparsity"] >= 0.5
    assert stats[-1]["refiner_sparsity"] == pytest.approx((A[off] == 0).float().mean().item())
    assert stats[-1]["refiner_l1"] == pytest.approx(A.abs().sum().item(), rel=1e-5)
    # label 1 is predicted through the coupling alone; the EMA model (refiner included) predicts it too
    for m in (model, ema.module):
        probs, y, idx = validate(m, TensorLoader(images, labels, batch_size=64), Amp(CPU, False))
        assert np.array_equal(idx, np.arange(256)) and np.array_equal(y, labels.numpy())
        assert np.corrcoef(probs[:, 1], y[:, 1])[0, 1] > 0.8
    assert ema.module.refiner.A[0, 1] > 0.02
    # the averaged A keeps the live A's support (the checkpoint stores the EMA's A, so it is sparse too)
    ema_a = ema.module.refiner.A.detach()
    assert torch.all(ema_a[A == 0] == 0) and (ema_a[off] == 0).float().mean() >= 0.5


def test_without_the_l1_prox_couplings_stay_dense():
    images, labels = toy_data()
    model = toy_model()
    stats = _train(model, TensorLoader(images, labels, batch_size=32, shuffle=True), epochs=2, refiner_l1=0.0)
    assert stats[-1]["refiner_sparsity"] == 0.0


def _one_epoch(model, loss_fn, n_batches, ema=None, max_bad_steps=20):
    images, labels = toy_data(n=8 * n_batches)
    loader = TensorLoader(images, labels, batch_size=8)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.0)
    sched = build_scheduler(opt, 0, 100)
    return train_one_epoch(model, loader, loss_fn, opt, sched, Amp(CPU, False), ema=ema, max_bad_steps=max_bad_steps,
                           step=5, progress=False), opt


@pytest.mark.parametrize("grad", [False, True], ids=["nan-loss", "nan-grad"])
def test_non_finite_steps_are_skipped_without_touching_the_model(grad):
    model = toy_model(blind=())
    with torch.no_grad():
        model.refiner.A.fill_(0.5)
    ema = ModelEma(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats, opt = _one_epoch(model, FlakyLoss(bad=range(3), grad=grad), 3, ema=ema)
    assert stats["skipped_steps"] == 3 and stats["step"] == 8 and math.isnan(stats["loss"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no step, no prox
    assert all(torch.equal(v, before[k]) for k, v in ema.module.state_dict().items())
    assert opt.param_groups[0]["lr"] < 1e-2  # the schedule still advances


def test_skipping_then_recovering():
    model = toy_model(blind=())
    before = model.refiner.A.detach().clone()
    stats, _ = _one_epoch(model, FlakyLoss(bad={0, 1, 3, 4}), 6, max_bad_steps=2)
    assert stats["skipped_steps"] == 4 and math.isfinite(stats["loss"])
    assert not torch.equal(model.refiner.A.detach(), before)


def test_abort_after_max_bad_steps():
    model = toy_model()
    loss_fn = FlakyLoss(bad=range(100))
    with pytest.raises(RuntimeError, match="--no_amp"):
        _one_epoch(model, loss_fn, 6, max_bad_steps=2)
    assert loss_fn.calls == 3  # gave up at the third bad step in a row


def test_training_through_a_wrapper_applies_prox_and_ema():
    images, labels = toy_data(n=64)
    model = toy_model(blind=())
    ema = ModelEma(model)
    wrapped = nn.DataParallel(model)  # CPU-only: a plain `.module` wrapper, like DDP
    _train(wrapped, TensorLoader(images, labels, batch_size=16), epochs=1, refiner_l1=10.0, ema=ema)
    assert model.refiner.sparsity() == 1.0  # a huge l1: the prox reached the refiner through the wrapper
    assert not torch.equal(ema.module.backbone.head.weight, toy_model(blind=()).backbone.head.weight)


def test_timm_backbone_steps_with_bf16_autocast():
    torch.manual_seed(0)
    model = CXRClassifier(create_backbone("test_efficientnet", 3, pretrained=False), LabelGraphRefiner(3))
    images, labels = toy_data(n=8, size=64)
    labels[0, 2] = float("nan")
    loader = TensorLoader(images, labels, batch_size=4)
    amp = Amp(CPU, enabled=True, dtype="bf16")
    opt = build_optimizer(model, 1e-3, 1e-4)
    sched = build_scheduler(opt, 1, 2)
    before = model.backbone.conv_stem.weight.detach().clone()
    stats = train_one_epoch(model, loader, build_loss("asl", labels.numpy()), opt, sched, amp, in_chans=1,
                            progress=True, desc="test")
    assert stats["skipped_steps"] == 0 and math.isfinite(stats["loss"]) and stats["step"] == 2
    assert not torch.equal(model.backbone.conv_stem.weight, before)
    probs, idx = predict(model, loader, amp, tta=True)
    assert probs.shape == (8, 3) and probs.dtype == np.float32 and np.array_equal(idx, np.arange(8))


# ---------------------------------------------------------------- evaluation

def test_tta_is_the_mean_of_the_flip_pair():
    torch.manual_seed(0)
    model = toy_model(blind=())
    with torch.no_grad():
        model.refiner.A.normal_()
    images, labels = toy_data(n=10)
    loader = TensorLoader(images, labels, batch_size=4)
    model.train()
    probs_tta, y, idx = validate(model, loader, Amp(CPU, False), tta=True)
    assert model.training  # the caller's mode is restored
    probs, _, _ = validate(model, loader, Amp(CPU, False), tta=False)
    with torch.no_grad():
        model.eval()
        x = normalize(images, 1)
        plain = torch.sigmoid(model(x))
        flipped = torch.sigmoid(model(x.flip(-1)))
    np.testing.assert_allclose(probs, plain.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs_tta, (0.5 * (plain + flipped)).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(probs_tta - probs).max() > 1e-4  # the toy model is not flip-invariant
    assert np.array_equal(idx, np.arange(10)) and np.array_equal(y, labels.numpy())
    p2, idx2 = predict(model, loader, Amp(CPU, False), tta=True)
    np.testing.assert_array_equal(p2, probs_tta)
    np.testing.assert_array_equal(idx2, idx)


def test_evaluate_keeps_loader_order_and_index():
    images, labels = toy_data(n=12)
    loader = TensorLoader(images, labels, batch_size=5, shuffle=True, seed=3)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3)).numpy()
    probs, y, idx = validate(toy_model(), loader, Amp(CPU, False))
    assert np.array_equal(idx, order) and np.array_equal(y, labels.numpy()[order])
    assert probs.shape == (12, 3)
