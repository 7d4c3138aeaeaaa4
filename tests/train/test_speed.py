"""The GPU speed switches, checked on the CPU: channels_last (conv models only, batches follow the model's layout),
cudnn.benchmark, and an in-place torch.compile of the backbone that leaves checkpoints clean (skipped only where
torch.compile has no working C++ compiler)."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from cxr_fast.model import CXRClassifier, LabelGraphRefiner
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.losses import build_loss
from cxr_fast.model.normalize import normalize
from cxr_fast.train import speed
from cxr_fast.train.amp import Amp
from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
from cxr_fast.train.infer import validate
from tests.helpers import CPU, TensorLoader, toy_data, toy_model


class MlpBackbone(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


def _cl(w: torch.Tensor) -> bool:
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


# ---------------------------------------------------------------- channels_last

def test_channels_last_applies_only_to_conv_models_and_by_default_only_on_cuda():
    mlp = CXRClassifier(MlpBackbone(), LabelGraphRefiner(3))
    assert not speed.is_convolutional(mlp)
    assert speed.use_channels_last(mlp, "cuda", enabled=True) is False
    assert speed.model_memory_format(mlp) == torch.contiguous_format
    model = toy_model()
    assert speed.is_convolutional(nn.DataParallel(model))
    assert speed.use_channels_last(model, CPU) is False  # auto: off on the CPU
    assert speed.model_memory_format(model) == torch.contiguous_format
    assert speed.use_channels_last(model, CPU, enabled=False) is False
    keys = list(model.state_dict())
    assert speed.use_channels_last(model, "cuda") is True  # auto: on for a conv model on CUDA (decided, not moved)
    assert model.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(model.state_dict()) == keys
    # the toy's one conv has a single input channel, whose two layouts are the same bytes: nothing to convert
    assert speed.model_memory_format(model) == torch.contiguous_format
    conv = nn.Conv2d(3, 4, 3)
    assert speed.use_channels_last(conv, CPU, enabled=True) and _cl(conv.weight)
    assert speed.model_memory_format(conv) == torch.channels_last


class RgbTiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def test_a_channels_last_model_evaluates_like_the_contiguous_one_and_trains():
    images, labels = toy_data(n=32)
    loader = TensorLoader(images, labels, batch_size=8)
    torch.manual_seed(0)
    plain = CXRClassifier(RgbTiny(), LabelGraphRefiner(3))
    model = copy.deepcopy(plain)
    assert speed.use_channels_last(model, CPU, enabled=True) is True
    assert speed.model_memory_format(model) == torch.channels_last
    assert speed.model_memory_format(plain) == torch.contiguous_format
    assert list(model.state_dict()) == list(plain.state_dict())
    for m in (model, plain):  # some BatchNorm statistics first, so that eval mode is not trivial
        m.train()
        with torch.no_grad():
            m(normalize(images, 3, memory_format=speed.model_memory_format(m)))
    want, _, _ = validate(plain, loader, Amp(CPU, False), in_chans=3, tta=True)
    got, _, _ = validate(model, loader, Amp(CPU, False), in_chans=3, tta=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ema = ModelEma(model)
    opt = build_optimizer(model, 1e-2, 1e-4)
    stats = train_one_epoch(model, loader, build_loss("bce", labels.numpy()), opt, build_scheduler(opt, 1, 4),
                            Amp(CPU, False), ema=ema, in_chans=3, progress=False)
    assert stats["skipped_steps"] == 0 and math.isfinite(stats["loss"])
    assert _cl(model.backbone.features[3].weight) and _cl(ema.module.backbone.features[3].weight)
    assert not torch.equal(model.backbone.features[3].weight, plain.backbone.features[3].weight)


# ---------------------------------------------------------------- AMP dtype and cudnn

def test_configure_cuda_sets_cudnn_benchmark_for_fixed_sizes(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    speed.configure_cuda(fixed_size=True)
    assert torch.backends.cudnn.benchmark is True
    speed.configure_cuda(fixed_size=False)
    assert torch.backends.cudnn.benchmark is False


# ---------------------------------------------------------------- torch.compile

_COMPILER = re.compile(r"C\+\+ compiler|compiler\b.*\bnot found"
                       r"|\b(gcc|g\+\+|clang|cc|c\+\+)\b.*\b(not found|no such file)", re.IGNORECASE)


def _no_compiler(e: BaseException) -> bool:
    """Whether `e` is what torch.compile raises on a machine without a working C++ toolchain: inductor's
    InvalidCxxCompiler or CppCompileError, bare or wrapped in dynamo's BackendCompilerFailed (InductorError), or a
    RuntimeError whose message names the compiler. Anything else is a real failure of the compiled forward."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    inner = e.inner_exception if isinstance(e, BackendCompilerFailed) else e
    if isinstance(inner, (InvalidCxxCompiler, CppCompileError)):
        return True
    return isinstance(inner, RuntimeError) and bool(_COMPILER.search(str(inner)))


def test_only_a_missing_compiler_skips_the_compile_test():
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    def wrapped(inner: Exception) -> BackendCompilerFailed:
        return BackendCompilerFailed(lambda gm, ex: gm, inner, None)

    assert _no_compiler(InvalidCxxCompiler()) and _no_compiler(wrapped(InvalidCxxCompiler()))
    assert _no_compiler(wrapped(CppCompileError(["g++", "x.cpp"], "fatal error: Python.h: No such file")))
    assert _no_compiler(RuntimeError("Compiler: g++ is not found."))
    assert not _no_compiler(wrapped(AssertionError("a bad lowering")))
    assert not _no_compiler(wrapped(RuntimeError("shape mismatch in the compiled graph")))
    assert not _no_compiler(RuntimeError("expected a tensor"))
    assert not _no_compiler(TypeError("compiler says no"))  # only a RuntimeError may name the compiler



@pytest.mark.slow
def test_compiled_backbone_trains_and_saves_clean_keys():
    model = toy_model(blind=())
    keys, bb_keys = list(model.state_dict()), list(model.backbone.state_dict())
    assert speed.maybe_compile(model, enabled=False) is False
    assert speed.maybe_compile(model, enabled=True) is True
    try:  # compilation happens on the first call; it needs a working C++ toolchain on the CPU
        with torch.no_grad():
            model(torch.zeros(2, 1, 32, 32))
    except Exception as e:
        if not _no_compiler(e):
            raise  # a real failure of the compiled forward
        pytest.skip(f"torch.compile has no working C++ compiler here: {str(e).splitlines()[0][:200]}")
    ema = ModelEma(model)  # made after compiling: its copy runs eagerly
    assert getattr(ema.module.backbone, "_compiled_call_impl", None) is None
    images, labels = toy_data(n=16)
    opt = build_optimizer(model, 1e-2, 1e-4)
    before = model.backbone.head.weight.detach().clone()
    stats = train_one_epoch(model, TensorLoader(images, labels, batch_size=8), build_loss("bce", labels.numpy()), opt,
                            build_scheduler(opt, 1, 2), Amp(CPU, False), ema=ema, progress=False)
    assert stats["skipped_steps"] == 0 and math.isfinite(stats["loss"])
    assert not torch.equal(model.backbone.head.weight, before)
    assert list(model.state_dict()) == keys and list(model.backbone.state_dict()) == bb_keys
    assert list(ema.module.state_dict()) == keys
    assert not any("_orig_mod" in k for k in model.state_dict())
    assert not torch.equal(ema.module.backbone.head.weight, toy_model(blind=()).backbone.head.weight)
