"""Version floors: an old DALI or torch fails at start-up with one line naming the installed and the needed version."""

from __future__ import annotations

import pytest

from cxr_fast import versions
from cxr_fast.errors import UserError
from tests.helpers import assert_user_error


@pytest.mark.parametrize("v,want", [("2.4.0", (2, 4, 0)), ("2.5.1+cu121", (2, 5, 1)), ("2.6.0a0+git1234", (2, 6, 0)),
                                    ("1.38.0.dev20240101", (1, 38, 0)), ("2", (2,))])
def test_parse_version(v, want):
    assert versions.parse_version(v) == want


def test_at_least():
    assert versions.at_least("2.2", "2.2.0") and versions.at_least("2.10.0", "2.2")
    assert not versions.at_least("1.38.0", "2.2") and not versions.at_least("2.1.9", "2.2")


@pytest.mark.parametrize("old", ["1.38.0", "2.1.0"])
def test_check_dali_refuses_old(old, monkeypatch):
    monkeypatch.setattr(versions, "_dist_version", lambda name: old if name == "nvidia-dali-cuda120" else None)
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
    assert_user_error(lambda: main(argv), f"needs torch>={versions.TORCH_MIN}")


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


@pytest.mark.parametrize("cuda,extra", [("13.0", "dali-cu13"), ("13.2", "dali-cu13"), ("12.8", "dali-cu12"),
                                        ("12.1", "dali-cu12"), (None, "dali-cu12")])
def test_dali_extra_follows_torch_cuda_major(cuda, extra):
    assert versions.dali_extra(cuda) == extra == versions.install_choice("dali-extra", cuda)


def test_install_choice_removes_the_other_build_first(monkeypatch):
    """`make install`: with the other build installed, every DALI build goes (they share nvidia/dali/), then the
    wanted one is installed clean; DALI_EXTRA forces a build or (none) leaves DALI alone."""
    have = {"nvidia-dali-cuda120": "2.4.0"}
    monkeypatch.setattr(versions, "_dist_version", lambda name: have.get(name))
    assert versions.install_choice("dali-remove", "13.0") == "nvidia-dali-cuda120"
    assert versions.install_choice("dali-remove", "12.4") == ""  # the wanted build is already the only one
    assert versions.install_choice("dali-remove", None) == ""
    have["nvidia-dali-cuda130"] = "2.4.0"
    assert versions.install_choice("dali-remove", "13.0") == "nvidia-dali-cuda120 nvidia-dali-cuda130"
    assert versions.install_choice("dali-extra", "13.0", forced="dali-cu12") == "dali-cu12"
    assert versions.install_choice("dali-extra", "13.0", forced="none") == ""
    assert versions.install_choice("dali-remove", "13.0", forced="none") == ""
    with pytest.raises(UserError, match="DALI_EXTRA must be one of dali-cu12, dali-cu13 or none"):
        versions.install_choice("dali-extra", "13.0", forced="cu13")


def test_install_choice_command_line():
    """What the Makefile runs: one word on stdout, from the torch installed here."""
    import subprocess
    import sys

    import torch

    r = subprocess.run([sys.executable, "-m", "cxr_fast.versions", "dali-extra"], capture_output=True, text=True,
                       check=True, env={"PATH": "/usr/bin:/bin", "DALI_EXTRA": ""})
    assert r.stdout.strip() == versions.dali_extra(torch.version.cuda)


def test_nvimgcodec_version_reads_pip_metadata(monkeypatch):
    monkeypatch.setattr(versions, "_dist_version", lambda name: {"nvidia-nvimgcodec-cu13": "0.9.0.20"}.get(name))
    assert versions.nvimgcodec_version() == "0.9.0.20"
    monkeypatch.setattr(versions, "_dist_version", lambda name: None)
    assert versions.nvimgcodec_version() is None


@pytest.mark.parametrize("v", ["0.9.0.20", "0.9.1"])
def test_crop_on_cuda_is_refused_with_an_affected_nvimgcodec(v, monkeypatch):
    from cxr_fast.pipelines.dali_graph import resolve_decode

    monkeypatch.setattr(versions, "nvimgcodec_version", lambda: v)
    with pytest.raises(UserError) as e:
        resolve_decode("crop", gpu=True)
    msg = str(e.value)
    assert "\n" not in msg and v in msg and "--dali_decode full or auto" in msg and "nvImageCodec#55" in msg
    assert resolve_decode("crop", gpu=False) == "crop" and resolve_decode("auto", gpu=True) == "full"
    assert resolve_decode("full", gpu=True) == "full"
    monkeypatch.setattr(versions, "nvimgcodec_version", lambda: "0.10.0")
    assert resolve_decode("crop", gpu=True) == "crop"


def test_crop_refusal_stops_the_cli_check_before_any_loader(monkeypatch):
    """require_dali(decode, gpu): what a CLI calls at start-up (before shards or processes) refuses the form too."""
    pytest.importorskip("nvidia.dali")
    from cxr_fast.pipelines.dali import require_dali

    monkeypatch.setattr(versions, "nvimgcodec_version", lambda: "0.9.0.20")
    with pytest.raises(UserError, match="--dali_decode crop on CUDA"):
        require_dali("crop", gpu=True)
    assert require_dali("crop", gpu=False) and require_dali("auto", gpu=True) and require_dali()
