"""The timm backbone factory: random init, unknown names, offline pretrained weights, local weight files (RGB into
grey, safetensors, fold checkpoints) and weights of another model refused."""

from __future__ import annotations

import pytest
import timm
import torch

from cxr_fast.errors import UserError
from cxr_fast.model import backbone as backbone_mod
from cxr_fast.model.backbone import create_backbone


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
