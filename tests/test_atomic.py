"""The atomic-write helpers: all or nothing, and no temporary file left behind either way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_fast.atomic import atomic_path, write_json_atomic, write_text_atomic
from cxr_fast.evaluate.couplings import plot_heatmap


def test_write_text_and_json(tmp_path):
    write_text_atomic(tmp_path / "sub" / "a.txt", "hello\n")
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello\n"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.json", "sub"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": ')  # half a file, then the writer fails
        json.dumps({"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"v": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_heatmap_format_follows_the_suffix(tmp_path, suffix, magic):
    out = tmp_path / f"A{suffix}"
    plot_heatmap(np.array([[0.0, 0.1], [-0.2, 0.0]]), ["a", "b"], out)
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_checkpoint_round_trip_keeps_structure_and_state_dict_metadata(tmp_path):
    import torch

    from cxr_fast.train.checkpoint import load_checkpoint, save_atomic

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    sd = net.state_dict()
    obj = {"model": sd, "rng": {"cuda": [], "python": (3, (1, 2), None)}, "list": [torch.ones(2), 1.5]}
    save_atomic(obj, tmp_path / "c.pth")
    back = load_checkpoint(tmp_path / "c.pth")
    assert back["model"]._metadata == sd._metadata  # module versions survive the copy to CPU
    assert all(torch.equal(back["model"][k], v) for k, v in sd.items())
    assert back["rng"] == obj["rng"] and torch.equal(back["list"][0], obj["list"][0]) and back["list"][1] == 1.5
    torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).load_state_dict(back["model"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_full_disk_mid_write_keeps_the_old_file_and_no_temp(tmp_path):
    import errno

    path = tmp_path / "last.pth"
    path.write_bytes(b"old")
    with pytest.raises(OSError) as ei, atomic_path(path) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")  # what the next write() says on a full disk
    assert ei.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"] and path.read_bytes() == b"old"
