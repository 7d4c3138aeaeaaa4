"""PNG shards on CUDA: DALI's "mixed" decoder decodes PNG on its CPU threads, so a CUDA run reading PNG shards gets
one start-up warning naming the cost and `--format jpg` (issue 21, item 3). Read from the shard indexes alone."""

from __future__ import annotations

from pathlib import Path

from cxr_fast.pipelines import dali as dali_loader
from cxr_fast.pipelines.dali_graph import png_warning


def shard(tmp: Path, name: str, ext: str) -> tuple[Path, Path]:
    idx = tmp / f"{name}.idx"
    idx.write_text(f"v1.2 2\n{ext} 512 900 000001.{ext} labels 1536 56 000001.labels index 2048 8 000001.index\n"
                   f"{ext} 2560 900 000002.{ext} labels 3584 56 000002.labels index 4096 8 000002.index\n")
    return tmp / f"{name}.tar", idx


def test_png_shards_on_cuda_warn(tmp_path):
    shards = [shard(tmp_path, "a", "png"), shard(tmp_path, "b", "jpg")]
    msg = png_warning(shards, gpu=True)
    assert msg and "1 of 2 shard(s) hold PNG" in msg and "CPU threads" in msg and "--format jpg" in msg
    assert "\n" not in msg
    assert png_warning(shards, gpu=False) is None
    assert png_warning([shard(tmp_path, "c", "jpg")], gpu=True) is None
    assert png_warning([(tmp_path / "x.tar", tmp_path / "missing.idx")], gpu=True) is None  # the reader reports it


def test_warning_printed_once_per_process_from_rank_0(capsys, monkeypatch):
    monkeypatch.setattr(dali_loader, "_warned", set())
    dali_loader.warn_once("png:/s", "PNG is slow", rank=1)
    assert capsys.readouterr().err == ""
    dali_loader.warn_once("png:/s", "PNG is slow")
    dali_loader.warn_once("png:/s", "PNG is slow")
    dali_loader.warn_once("png:/t", None)
    assert capsys.readouterr().err == "warning: PNG is slow\n"
