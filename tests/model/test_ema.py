"""ModelEma: the decay warm-up, the cached update against the reference formula per tensor (refiner and integer
buffers included), wrapped models, memory layout and stale caches."""

from __future__ import annotations

import pytest
import torch

from cxr_fast.model.ema import ModelEma
from tests.helpers import tiny_classifier

C = 4


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


@torch.no_grad()
def _perturb(model: torch.nn.Module, g: torch.Generator) -> None:
    """Move every float tensor of the live model and bump the BatchNorm counters, in place (as training does)."""
    for v in model.state_dict().values():
        if v.is_floating_point():
            v.add_(torch.randn(v.shape, generator=g))
        else:
            v.add_(int(torch.randint(1, 5, (), generator=g)))


def test_ema_equals_the_reference_lerp_after_several_updates():
    model = tiny_classifier()
    ema = ModelEma(model, decay=0.9)
    ref = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert any(not v.is_floating_point() for v in ref.values())  # num_batches_tracked is covered
    g = torch.Generator().manual_seed(1)
    for step in (0, 1, 5, 50, 10**6):
        _perturb(model, g)
        ema.update(model, step)
        w = 1.0 - ema.get_decay(step)
        for k, v in model.state_dict().items():
            ref[k] = torch.lerp(ref[k], v, w) if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    assert list(got) == list(ref)
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6, msg=k)
        if not v.is_floating_point():
            assert torch.equal(got[k], v), k  # copied, not averaged


def test_cache_follows_in_place_changes_and_refresh_picks_up_replaced_tensors():
    model = tiny_classifier()
    ema = ModelEma(model, decay=0.5)
    ema.update(model, None)
    other = tiny_classifier(seed=3)
    model.load_state_dict(other.state_dict())  # copies into the same tensors: the cache stays valid
    target = ema.module.refiner.A.clone()
    ema.update(model, None)
    torch.testing.assert_close(ema.module.refiner.A, 0.5 * target + 0.5 * other.refiner.A)
    target = ema.module.refiner.A.clone()
    model.refiner.A.data = torch.ones(C, C)  # new storage, same Parameter object: seen without a refresh
    ema.update(model, None)
    torch.testing.assert_close(ema.module.refiner.A, 0.5 * target + 0.5)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    name = next(n for n, m in model.named_modules() if m is bn)
    old = ema.module.state_dict()[f"{name}.running_mean"].clone()
    bn.running_mean = torch.full_like(bn.running_mean, 8.0)  # a new tensor object: the cache cannot see it
    ema.refresh()
    ema.update(model, None)
    torch.testing.assert_close(ema.module.state_dict()[f"{name}.running_mean"], 0.5 * old + 4.0)


def test_ema_takes_the_live_models_memory_layout():
    model = tiny_classifier()
    ema = ModelEma(model, decay=0.5)  # made before channels_last, as a caller may do
    model.to(memory_format=torch.channels_last)
    ema.update(model, None)  # the first update pairs the tensors and re-lays the copy's out
    convs = [m.weight for m in ema.module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(isinstance(w, torch.nn.Parameter) and not w.requires_grad for w in convs)
    assert list(ema.module.state_dict()) == list(model.state_dict())
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, model.state_dict()[k], msg=k)  # identical start: the average is the model
