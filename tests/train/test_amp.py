"""Amp, the one AMP code path: off on the CPU unless bf16, fp16 with a scaler on CUDA, "auto" = bf16 where the GPU
has it natively (checked on the CPU with a patched torch.cuda), its state_dict."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cxr_fast.train.amp import Amp
from tests.helpers import CPU


def test_amp_on_cpu_is_off_unless_bf16():
    lin = nn.Linear(4, 4)
    for amp in (Amp(CPU, enabled=True), Amp(CPU, enabled=True, dtype="fp16"), Amp(CPU, enabled=False, dtype="bf16")):
        assert not amp.enabled and not amp.scaler.is_enabled()
        with amp.autocast():
            assert lin(torch.randn(2, 4)).dtype == torch.float32
        assert amp.state_dict() == {}
    amp = Amp(CPU, enabled=True, dtype="bf16")
    assert amp.enabled and not amp.scaler.is_enabled()
    with amp.autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    loss = torch.tensor(3.0)
    assert amp.scaler.scale(loss) is loss  # a disabled scaler passes through: one code path
    with pytest.raises(ValueError):
        Amp(CPU, dtype="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda():
    amp = Amp(torch.device("cuda"), enabled=True, dtype="fp16")  # "auto" is bf16 on Ampere+: see below
    assert amp.dtype == torch.float16 and amp.scaler.is_enabled()
    auto = Amp(torch.device("cuda"), enabled=True)
    assert auto.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16)
    assert auto.scaler.is_enabled() is (auto.dtype == torch.float16)
    state = amp.state_dict()
    assert "scale" in state
    amp2 = Amp(torch.device("cuda"), enabled=True, dtype="fp16")
    amp2.load_state_dict({**state, "scale": 1024.0})
    assert amp2.scaler.get_scale() == 1024.0
    bf = Amp(torch.device("cuda"), enabled=True, dtype="bf16")
    assert bf.dtype == torch.bfloat16 and not bf.scaler.is_enabled()
    assert not Amp(torch.device("cuda"), enabled=False).enabled


@pytest.mark.parametrize("native_bf16, dtype, scaler", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_amp_auto_picks_bf16_where_the_gpu_has_it(monkeypatch, native_bf16, dtype, scaler):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler("cuda") warns (and disables itself) on a machine without CUDA
        amp = Amp("cuda", enabled=True, dtype="auto")
        assert Amp("cuda", enabled=True, dtype="fp16").dtype == torch.float16
        assert Amp("cuda", enabled=True, dtype="bf16").dtype == torch.bfloat16
        assert not Amp("cuda", enabled=False).enabled
    assert amp.dtype == dtype and asked == {"including_emulation": False}  # emulated bf16 does not count
    if torch.cuda.is_available():
        assert amp.scaler.is_enabled() is scaler
    assert Amp(CPU, enabled=True, dtype="auto").dtype is None  # the CPU keeps AMP off unless bf16
