"""cxr_fast.train.checkpoint.load_checkpoint: what a file's problem is called. A damaged file is one line naming it
and what to do; a file that cannot be read, or a device out of memory, is not called damaged."""

from __future__ import annotations

import pytest
import torch

from cxr_fast.errors import UserError
from cxr_fast.train import checkpoint
from cxr_fast.train.checkpoint import load_checkpoint


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m_fold1.pth"
    torch.save({"model": {"w": torch.ones(3)}, "labels": ["a"]}, path)
    return path


def test_a_good_checkpoint_loads(saved):
    assert load_checkpoint(saved)["labels"] == ["a"]


def test_truncated_is_damaged_with_the_hint(saved, tmp_path):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(saved.read_bytes()[:-300])
    with pytest.raises(UserError, match=r"cut\.pth: damaged or not a checkpoint .*retrain it"):
        load_checkpoint(bad, hint="retrain it")


def test_missing_and_not_a_dict(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="top level is list"):
        load_checkpoint(tmp_path / "list.pth")


def test_unreadable_is_not_called_damaged(saved, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.torch, "load", denied)
    with pytest.raises(UserError) as e:
        load_checkpoint(saved)
    assert str(e.value) == f"{saved}: cannot read the checkpoint (Permission denied)"


def test_device_out_of_memory_is_not_called_damaged(saved, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(checkpoint.torch, "load", oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        load_checkpoint(saved, map_location="cuda")
