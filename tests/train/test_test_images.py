"""The test-folder check under torchrun: rank 0 alone decodes, every rank gets its names, and a bad image stops
every rank with the same one line (`dist.run_on_main`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fast import dist
from cxr_fast.errors import UserError
from tests.helpers import free_port

ENTRY = str(Path(__file__).with_name("check_entry.py"))


def _folder(root: Path, n: int, bad: int | None = None) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(root / f"img{i}.png")
    if bad is not None:
        p = root / f"img{bad}.png"
        p.write_bytes(p.read_bytes()[:70])  # truncated: only a full decode finds it
    return root


def test_run_on_main_without_torchrun_just_calls():
    assert dist.run_on_main(lambda: [1, 2]) == [1, 2]
    with pytest.raises(UserError, match="x.png: bad"):
        dist.run_on_main(lambda: (_ for _ in ()).throw(UserError("x.png: bad")))


@pytest.mark.slow
def test_only_rank_0_decodes_and_a_bad_image_stops_both_ranks(tmp_path):
    good, bad = _folder(tmp_path / "good", 6), _folder(tmp_path / "bad", 5, bad=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), ENTRY, str(good), f"{bad}:skip", str(bad)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    # (the two ranks' lines may interleave without a newline between them: match the names, not up to a space)
    lines = sorted(re.findall(r"rank \d decoded \d+ got (?:img\d+\.png,?)*", r.stdout))
    all6, four = ",".join(f"img{i}.png" for i in range(6)), ",".join(f"img{i}.png" for i in (0, 1, 3, 4))
    assert lines == sorted([f"rank 0 decoded 6 got {all6}", f"rank 0 decoded 11 got {four}",  # 6, then 6 + 5
                            f"rank 1 decoded 0 got {all6}", f"rank 1 decoded 0 got {four}"]), r.stdout + r.stderr
    assert r.stdout.count("--skip_bad: left out 1 unreadable test image(s): img2.png") == 1  # said once, by rank 0
    errors = re.findall(r"error: .*?to leave them out\)", r.stderr)  # (interleaving-proof, as above)
    assert len(errors) == 2 and errors[0] == errors[1], r.stderr[-3000:]  # both ranks, the same line
    assert f"{bad / 'img2.png'}:" in errors[0] and "--skip_bad" in errors[0]
    assert r.returncode != 0 and "UserError" not in r.stderr  # (torchrun's own failure summary has a traceback)
