"""Version floors: an old DALI or torch fails at start-up with one line naming the installed and the needed version."""

from __future__ import annotations

import pytest

from cxr_fast import versions
from cxr_fast.errors import UserError


@pytest.mark.parametrize("v,want", [("2.4.0", (2, 4, 0)), ("2.5.1+cu121", (2, 5, 1)), ("2.6.0a0+git1234", (2, 6, 0)),
                                    ("1.38.0.dev20240101", (1, 38, 0)), ("2", (2,))])
def test_parse_version(v, want):
    assert versions.parse_version(v) == want


def test_at_least():
    assert versions.at_least("2.2", "2.2.0") and versions.at_least("2.10.0", "2.2")
    assert not versions.at_least("1.38.0", "2.2") and not versions.at_least("2.1.9", "2.2")


@pytest.mark.parametrize("old", ["1.38.0", "2.1.0"])
def test_check_dali_refuses_old(old):
    with pytest.raises(UserError) as e:
        versions.check_dali(old)
    msg = str(e.value)
    assert "\n" not in msg and old in msg and f"nvidia-dali-cuda120>={versions.DALI_MIN}" in msg


def test_check_torch_refuses_old():
    with pytest.raises(UserError) as e:
        versions.check_torch("2.3.1+cu121")
    msg = str(e.value)
    assert "\n" not in msg and "2.3.1+cu121" in msg and f"torch>={versions.TORCH_MIN}" in msg
    assert versions.check_torch() and versions.check_torch("2.4.0") == "2.4.0"


@pytest.mark.parametrize("cli", ["train", "predict"])
def test_train_and_predict_stop_at_start_up_on_an_old_torch(cli, monkeypatch, tmp_path, capsys):
    import importlib

    import torch

    main = importlib.import_module(f"cxr_fast.cli.{cli}").main
    monkeypatch.setattr(torch, "__version__", "2.1.2")
    argv = (["--train_csv", str(tmp_path / "t.csv"), "--train_dir", str(tmp_path)] if cli == "train"
            else ["--checkpoints", str(tmp_path / "x.pth"), "--test_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and f"needs torch>={versions.TORCH_MIN}" in err


def test_old_dali_fails_at_loader_build_not_in_the_graph(monkeypatch):
    """require_dali() (called first by build_dali_loader, build_pipeline and the CLIs) reads nvidia.dali.__version__:
    an old one stops there with the one-line error, before any operator is created."""
    dali = pytest.importorskip("nvidia.dali")
    from cxr_fast.pipelines.dali import require_dali

    assert require_dali() is dali
    monkeypatch.setattr(dali, "__version__", "1.30.0")
    with pytest.raises(UserError, match=r"NVIDIA DALI 1\.30\.0 is installed; --pipeline dali needs"):
        require_dali()


def test_old_dali_stops_build_dali_loader(monkeypatch, synth):
    dali = pytest.importorskip("nvidia.dali")
    import torch

    from cxr_fast.data.augment import AugmentSpec
    from cxr_fast.pipelines.dali import build_dali_loader

    monkeypatch.setattr(dali, "__version__", "2.1.0")
    with pytest.raises(UserError, match="2.1.0"):
        build_dali_loader(synth, AugmentSpec.for_training(16), 8, torch.device("cpu"))


@pytest.mark.parametrize("v,suspect", [("0.9.0", True), ("0.9.1.5", True), ("0.10.0", False), ("0.8.1", False),
                                       (None, False)])
def test_roi_decode_suspect(v, suspect):
    assert versions.roi_decode_suspect(v) is suspect
