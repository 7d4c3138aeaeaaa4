"""The shard tar writer's fast headers: byte-identical to what `tarfile` writes for the same members."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from cxr_fast.shards import format as fmt
from cxr_fast.shards.tars import Member, TarTask, _tarinfo, ustar_header, write_tar


@pytest.mark.parametrize("name, size", [("s00000000.jpg", 0), ("s00000042.labels", 28), ("t12345678.index", 8),
                                        ("s99999999.png", 8 ** 11 - 1), ("s00000001.json", 511), ("é.json", 3),
                                        ("x" * 95 + ".jpg", 5)])
def test_header_equals_tarfile(name, size):
    want = _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    assert ustar_header(name, size) == want


def test_tar_equals_tarfile_addfile(tmp_path):
    rng = np.random.default_rng(0)
    spool = tmp_path / "c000000.bin"
    images = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 511, 512, 513, 5000, 10240)]
    spool.write_bytes(b"".join(images))
    samples, off = [], 0
    for i, img in enumerate(images):
        small = {"index": np.array([i], fmt.INDEX_DTYPE).tobytes(), "json": b'{"name":"a"}',
                 "labels": np.array([1, np.nan], fmt.LABEL_DTYPE).tobytes()}
        samples.append(Member(fmt.sample_key("fold1", i), small, str(spool), off, len(img)))
        off += len(img)
    stem, shard, kept = write_tar(TarTask(str(tmp_path), "fold1-00000", "fold1", "jpg", samples, None))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m, img in zip(samples, images):
            comps = {**m.small, "jpg": img}
            for ext in sorted(comps):
                tar.addfile(_tarinfo(f"{m.key}.{ext}", len(comps[ext])), io.BytesIO(comps[ext]))
    assert (tmp_path / "fold1-00000.tar").read_bytes() == buf.getvalue()
    assert (tmp_path / "fold1-00000.idx").read_text() == fmt.index_text(fmt.tar_members(tmp_path / "fold1-00000.tar"))
    assert not kept and shard["bytes"] == len(buf.getvalue()) and shard["samples"] == len(images)
    # a rerun that the journal says finished this tar only checks it
    assert write_tar(TarTask(str(tmp_path), stem, "fold1", "jpg", [], shard)) == (stem, shard, True)
