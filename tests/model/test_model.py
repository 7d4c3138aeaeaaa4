"""Model pieces: refiner math and prox, classifier wrapper, EMA, losses, metrics, backbone factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cxr_fast.errors import UserError
from cxr_fast.evaluate.metrics import macro_auc
from cxr_fast.model import CXRClassifier, unwrap
from cxr_fast.model import backbone as backbone_mod
from cxr_fast.model.backbone import create_backbone
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.losses import AsymmetricLoss, MaskedBCEWithLogits, build_loss, pos_weight_from_labels
from cxr_fast.model.refiner import LabelGraphRefiner

C = 4


def tiny_classifier(name: str = "test_resnet", num_classes: int = C, refiner: bool = True) -> CXRClassifier:
    torch.manual_seed(0)
    bb = create_backbone(name, num_classes, in_chans=1, pretrained=False, drop_rate=0.0)
    return CXRClassifier(bb, LabelGraphRefiner(num_classes) if refiner else None)


# ---------------------------------------------------------------- refiner

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


# ---------------------------------------------------------------- EMA

def test_ema_warmup_formula():
    model = tiny_classifier()
    ema = ModelEma(model, decay=0.999)
    assert ema.get_decay(0) == pytest.approx(0.1)
    assert ema.get_decay(8) == pytest.approx(0.5)
    assert ema.get_decay(100) == pytest.approx(101 / 110)
    assert ema.get_decay(10**6) == 0.999
    assert ModelEma(model, decay=0.999, warmup=False).get_decay(0) == 0.999


def test_ema_covers_refiner_and_copies_integer_buffers():
    model = tiny_classifier()
    ema = ModelEma(model, decay=0.999)
    assert all(not p.requires_grad for p in ema.module.parameters())
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    name = next(n for n, m in model.named_modules() if m is bn)
    w0 = ema.module.state_dict()[f"{name}.running_mean"].clone()
    with torch.no_grad():
        model.refiner.A.fill_(1.0)
        bn.running_mean.add_(2.0)
        bn.num_batches_tracked.fill_(7)
    assert torch.equal(ema.module.refiner.A, torch.zeros(C, C))  # a deep copy, not shared storage
    ema.update(model, step=0)  # decay 0.1: ema = 0.1 * ema + 0.9 * model
    sd = ema.module.state_dict()
    torch.testing.assert_close(sd["refiner.A"], torch.full((C, C), 0.9))
    torch.testing.assert_close(sd[f"{name}.running_mean"], 0.1 * w0 + 0.9 * (w0 + 2.0))
    assert sd[f"{name}.num_batches_tracked"].item() == 7  # copied; an average would not be 7
    ema.update(model, step=10**6)  # decay 0.999
    torch.testing.assert_close(ema.module.refiner.A, torch.full((C, C), 0.999 * 0.9 + 0.001))


def test_ema_accepts_a_wrapped_model():
    model = tiny_classifier()
    ema = ModelEma(torch.nn.DataParallel(model))
    with torch.no_grad():
        model.refiner.A.fill_(1.0)
    ema.update(torch.nn.DataParallel(model), step=0)
    torch.testing.assert_close(ema.module.refiner.A, torch.full((C, C), 0.9))


# ---------------------------------------------------------------- losses

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


# ---------------------------------------------------------------- metrics

def test_macro_auc_skips_single_class_labels_and_nan_targets():
    rng = np.random.default_rng(0)
    n = 40
    y = np.stack([rng.integers(0, 2, n), np.zeros(n), rng.integers(0, 2, n), np.full(n, np.nan)], 1).astype(float)
    y[:10, 2] = np.nan
    y[10:, 1] = np.nan  # label 1: a single class among its known targets
    p = rng.random((n, 4))
    p[:10, 2] = 2.0  # would distort label 2's AUC if the NaN-target rows were kept
    macro, per, skipped = macro_auc(y, p, ["a", "b", "c", "d"])
    assert skipped == ["b", "d"]
    assert per["b"] is None and per["d"] is None
    assert per["a"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert per["c"] == pytest.approx(roc_auc_score(y[10:, 2], p[10:, 2]))
    assert macro == pytest.approx((per["a"] + per["c"]) / 2)


def test_macro_auc_all_skipped_is_nan_and_refuses_non_finite():
    y = np.ones((5, 2))
    macro, _, skipped = macro_auc(y, np.full((5, 2), 0.5), ["a", "b"])
    assert math.isnan(macro) and skipped == ["a", "b"]
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 0]], dtype=float)
    p = np.array([[0.1, 0.9], [np.nan, 0.2], [0.2, 0.8], [0.7, 0.1]])
    with pytest.raises(ValueError, match="non-finite predictions"):
        macro_auc(y, p, ["a", "b"])


# ---------------------------------------------------------------- backbone

def test_create_backbone_random_init():
    m = create_backbone("test_efficientnet", 5, in_chans=1, pretrained=False)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert m.drop_rate == 0.4


def test_create_backbone_unknown_name():
    with pytest.raises(UserError, match="--model 'test_resnett'.*test_resnet"):
        create_backbone("test_resnett", 3, pretrained=False)
    with pytest.raises(UserError, match="--model 'test_resnet.bogus'"):
        create_backbone("test_resnet.bogus", 3, pretrained=False)


def test_create_backbone_pretrained_offline(monkeypatch):
    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")
        return timm.create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbone_mod.timm, "create_model", offline)
    with pytest.raises(UserError) as ei:
        create_backbone("test_resnet", 3, pretrained=True)
    msg = str(ei.value)
    assert "--no-pretrained" in msg and "--weights" in msg and "\n" not in msg
    assert calls == [True]


def test_create_backbone_missing_weights_file(tmp_path):
    with pytest.raises(UserError, match="--weights .*no such file"):
        create_backbone("test_resnet", 3, weights=tmp_path / "nope.pth")


def test_create_backbone_loads_local_rgb_weights_into_a_grey_model(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", num_classes=1000, in_chans=3)
    sd = src.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    m = create_backbone("test_resnet", 5, in_chans=1, weights=tmp_path / "w.pth")
    got = m.state_dict()
    # timm's first-conv adaptation to one channel sums the RGB kernels
    torch.testing.assert_close(got["conv1.0.weight"], sd["conv1.0.weight"].sum(1, keepdim=True))
    assert m.fc.weight.shape == (5, sd["fc.weight"].shape[1])  # the 1000-class head is dropped
    same = [k for k in got if k not in ("conv1.0.weight", "fc.weight", "fc.bias")]
    assert len(same) > 20 and all(torch.equal(got[k], sd[k]) for k in same)
    assert "state_dict" not in m.pretrained_cfg  # the file is not kept alive inside the model


def test_create_backbone_loads_grey_safetensors_and_fold_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = create_backbone("test_efficientnet", 5, in_chans=1, pretrained=False)
    sd = src.state_dict()
    save_file(sd, str(tmp_path / "w.safetensors"))
    m3 = create_backbone("test_efficientnet", 5, in_chans=3, weights=tmp_path / "w.safetensors")
    assert m3.conv_stem.weight.shape[1] == 3
    # a cxr_fast fold checkpoint: {"model": backbone state_dict, "refiner": {...}}
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "refiner": {"A": torch.zeros(5, 5)},
                "labels": ["a", "b"], "epoch": 3}, tmp_path / "fold1.pth")
    m1 = create_backbone("test_efficientnet", 5, in_chans=1, weights=tmp_path / "fold1.pth")
    assert all(torch.equal(v, sd[k]) for k, v in m1.state_dict().items() if not k.startswith("classifier"))


def test_create_backbone_refuses_weights_of_another_model(tmp_path):
    sd = timm.create_model("test_resnet", num_classes=5, in_chans=1).state_dict()
    torch.save(sd, tmp_path / "resnet.pth")
    with pytest.raises(UserError, match="does not fit --model test_efficientnet"):
        create_backbone("test_efficientnet", 5, weights=tmp_path / "resnet.pth")
    # a file that loads without a size error but covers only part of the network would leave it mostly random
    partial = {k: v for i, (k, v) in enumerate(sd.items()) if i < 10}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="missing"):
        create_backbone("test_resnet", 5, weights=tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        create_backbone("test_resnet", 5, weights=tmp_path / "junk.pth")
