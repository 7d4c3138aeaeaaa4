"""ModelEma's cached update: the reference formula per tensor, integer buffers, memory layout, stale caches; and a
tiny run of benchmarks/bench_ema.py so it cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cxr_fast.model import CXRClassifier, LabelGraphRefiner
from cxr_fast.model.backbone import create_backbone
from cxr_fast.model.ema import ModelEma

C = 4
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def bn_classifier(seed: int = 0) -> CXRClassifier:
    torch.manual_seed(seed)
    return CXRClassifier(create_backbone("test_resnet", C, in_chans=1, pretrained=False, drop_rate=0.0),
                         LabelGraphRefiner(C))


@torch.no_grad()
def _perturb(model: torch.nn.Module, g: torch.Generator) -> None:
    """Move every float tensor of the live model and bump the BatchNorm counters, in place (as training does)."""
    for v in model.state_dict().values():
        if v.is_floating_point():
            v.add_(torch.randn(v.shape, generator=g))
        else:
            v.add_(int(torch.randint(1, 5, (), generator=g)))


def test_ema_equals_the_reference_lerp_after_several_updates():
    model = bn_classifier()
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
    model = bn_classifier()
    ema = ModelEma(model, decay=0.5)
    ema.update(model, None)
    other = bn_classifier(seed=3)
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
    model = bn_classifier()
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


def test_bench_ema_tiny_run(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_ema
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "ema.json"
    assert bench_ema.main(["--model", "test_resnet", "--repeats", "2", "--calls", "1", "--warmup", "1",
                           "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"lerp", "update", "update_state_dict"}
    assert res["tensors"]["float"] > 0 and res["tensors"]["integer"] > 0
    assert all(r["host_ms"]["median"] > 0 for r in res["rows"].values())
    assert set(res["ratio_to_lerp"]) == {"update", "update_state_dict"}
    assert isinstance(res["target"]["met"], bool)  # recorded, never asserted: timings on CI mean nothing
