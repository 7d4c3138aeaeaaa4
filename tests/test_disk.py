"""A full disk as one line: ENOSPC/EDQUOT and torch.save's zip-writer failures recognised, needed vs free named,
and no partial file under the final name (on a real 2 MB tmpfs where the test may mount one)."""

from __future__ import annotations

import errno

import pytest

from cxr_fast.atomic import atomic_path, write_bytes_atomic
from cxr_fast.disk import check_free_space, disk_full, free_bytes, human_bytes, on_disk_full
from cxr_fast.errors import UserError
from tests.shards.tmpfs import small_tmpfs


def _chained() -> BaseException:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as e:
        return e


@pytest.mark.parametrize("e, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), True),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), True),
    (_chained(), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (RuntimeError("CUDA out of memory"), False),
    (ValueError("x"), False),
])
def test_disk_full_recognises_the_ways_a_write_runs_out_of_space(e, full):
    assert disk_full(e) is full


def test_human_bytes():
    assert [human_bytes(n) for n in (12, 1536, 3.2e9, 5e15)] == ["12 B", "1.5 KB", "3.2 GB", "5000.0 TB"]


def test_check_free_space_names_needed_and_free(tmp_path):
    check_free_space(tmp_path / "not" / "yet", 1, "a checkpoint")  # fits; the nearest existing folder is asked
    with pytest.raises(UserError) as ei:
        check_free_space(tmp_path, 10**18, "the fold 1 checkpoint")
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path) in msg and "the fold 1 checkpoint" in msg and "needs ~1000000.0 TB" in msg
    assert human_bytes(free_bytes(tmp_path))[:-3] in msg


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError), on_disk_full(tmp_path / "x", "x"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_real_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    with small_tmpfs(tmp_path / "small", "2m") as disk:
        (disk / "keep.bin").write_bytes(b"old")
        with pytest.raises(UserError) as ei, on_disk_full(disk / "keep.bin", "the test blob", needed=3_000_000):
            write_bytes_atomic(disk / "keep.bin", bytes(3_000_000))
        msg = str(ei.value)
        assert "\n" not in msg and str(disk / "keep.bin") in msg and "the test blob" in msg
        assert "needs ~3.0 MB" in msg and " free there now" in msg
        assert [p.name for p in disk.iterdir()] == ["keep.bin"] and (disk / "keep.bin").read_bytes() == b"old"


def test_real_full_disk_during_torch_save(tmp_path):
    torch = pytest.importorskip("torch")
    with small_tmpfs(tmp_path / "small", "2m") as disk:
        with pytest.raises(UserError, match="no space left .* writing the fold 1 checkpoint to"), \
                on_disk_full(disk / "m_fold1.pth", "the fold 1 checkpoint"), atomic_path(disk / "m_fold1.pth") as tmp:
            torch.save({"w": torch.zeros(1_000_000)}, tmp)  # 4 MB: torch's zip writer fails ("unexpected pos")
        assert list(disk.iterdir()) == []
