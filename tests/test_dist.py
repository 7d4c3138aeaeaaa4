"""cxr_fast.dist on 2 real gloo processes (torchrun): a rank-0 job longer than the group timeout, BatchNorm buffers
averaged over ranks, and the shared-storage check across two (simulated) nodes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

# every test here launches torchrun: the slow tier (make test-slow, run by .ci/run)
pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("dist_worker.py"))


def _torchrun(*args, nnodes=1, node_rank=0, nproc=2, port=None, cwd=None, env=None, timeout=120, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
           "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()),
           WORKER, *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env, check=False)


def test_wait_for_main_outlasts_the_group_timeout():
    short = {"CXR_FAST_DIST_TIMEOUT_S": "2"}
    r = _torchrun("wait_for_main", 6, env=short)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(re.findall(r"rank \d passed", r.stdout)) == ["rank 0 passed", "rank 1 passed"]
    # the same wait on the main group's barrier times out: the long-timeout group is what makes the difference
    r = _torchrun("plain_barrier", 6, env=short)
    assert r.returncode != 0 and "rank 1 passed" not in r.stdout


def test_average_buffers_makes_every_ranks_batchnorm_statistics_the_mean():
    r = _torchrun("average_buffers")
    assert r.returncode == 0, r.stderr[-2000:]
    # the ranks' lines may interleave on the shared stdout
    lines = sorted(re.findall(r"rank \d mean \[[^]]*\] var \[[^]]*\] batches \d+", r.stdout))
    assert lines == [f"rank {k} mean [0.5, 0.5, 0.5] var [2.0, 2.0, 2.0] batches 0" for k in (0, 1)]


def _two_nodes(tmp_path, out_dir):
    """Two torchrun launches, one process each, as two nodes; the second runs from another folder, so a relative
    --out_dir names two different places (storage the nodes do not share)."""
    port = free_port()
    cwds = [tmp_path / "node0", tmp_path / "node1"]
    for c in cwds:
        c.mkdir(exist_ok=True)
    procs = [_torchrun("check_shared", out_dir, nnodes=2, node_rank=i, nproc=1, port=port, cwd=cwds[i], wait=False)
             for i in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    return [p.returncode for p in procs], [o[0] for o in outs]


def test_check_shared_names_the_node_that_does_not_see_rank_0s_files(tmp_path):
    codes, outs = _two_nodes(tmp_path, "out")
    assert 0 not in codes, outs  # torchrun reports a worker's exit code 2 as its own 1
    for out in outs:  # every rank stops with the same line, naming the path and the node
        assert "out (--out_dir) is not shared between the nodes" in out and "node rank 1" in out
        assert str(tmp_path / "node1" / "out") in out  # the path as that node resolves it
    assert not (tmp_path / "node0" / "out" / ".cxr-shared-check").exists()


def test_check_shared_passes_on_shared_storage(tmp_path):
    codes, outs = _two_nodes(tmp_path, tmp_path / "shared_out")
    assert codes == [0, 0], outs
    assert "rank 0 shared" in outs[0] and "rank 1 shared" in outs[1]
