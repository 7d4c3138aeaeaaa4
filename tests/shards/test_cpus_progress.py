"""The worker default follows the CPUs this process may use (affinity, cgroup v2/v1 quota), and long steps report
progress as a few plain lines (count, rate, ETA) when stderr is not a terminal."""

from __future__ import annotations

import io
import os
import re

import pytest

from cxr_fast import progress
from cxr_fast.shards import cpus


@pytest.fixture
def six_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    return tmp_path


@pytest.mark.parametrize("cpu_max, want", [("max 100000", 6), ("200000 100000", 2), ("150000 100000", 2),
                                           ("50000 100000", 1), ("1600000 100000", 6), (None, 6)])
def test_cgroup_v2_quota(six_cpus, cpu_max, want):
    if cpu_max is not None:
        (six_cpus / "cpu.max").write_text(cpu_max + "\n")
    assert cpus.usable_cpus() == want
    assert cpus.default_workers() == want  # every usable core, no cap at 8


@pytest.mark.parametrize("quota, want", [("-1", 6), ("300000", 3), ("25000", 1)])
def test_cgroup_v1_quota(six_cpus, quota, want):
    (six_cpus / "cpu").mkdir()
    (six_cpus / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (six_cpus / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.usable_cpus() == want


def test_affinity_counts_and_cpu_count_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert cpus.default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cpus.default_workers() == 3  # the affinity mask wins over the machine's count

    def no_affinity(pid):
        raise AttributeError("not on this platform")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    assert cpus.default_workers() == 64
    (tmp_path / "cpu.max").write_text("400000 100000")
    assert cpus.default_workers() == 4


def test_shard_writer_uses_the_default(monkeypatch, tmp_path):
    from cxr_fast.shards.writer import write_shards
    from tests.helpers import make_shard_data as make_data

    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one usable CPU: inline, no pool
    root = make_data(tmp_path / "d", n=12, n_test=0)
    logs: list[str] = []
    write_shards(root / "train.csv", root / "train", tmp_path / "out", folds=2, progress=False, log=logs.append)
    assert "with 1 worker;" in logs[-1]


def test_line_progress_is_a_few_lines_with_rate_and_eta():
    buf = io.StringIO()
    bar = progress.LineProgress(100_000, "encode", "img", file=buf)
    for _ in range(100_000):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10, lines  # one per 10%, not one per item
    assert re.fullmatch(r"encode:  10% 10000/100000 img, [\d.]+ img/s, 0:\d\d elapsed, ETA \d+:\d\d", lines[0])
    assert lines[-1].startswith("encode: 100% 100000/100000 img") and lines[-1].endswith("done")


def test_line_progress_big_steps_and_unknown_total():
    buf = io.StringIO()
    with progress.LineProgress(7, "write", "shard", file=buf) as bar:
        bar.update(3)  # 42%: one line, not four
        bar.set_postfix(loss="0.5")
        bar.update(4)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and " 42% 3/7 shard" in lines[0] and lines[1].endswith("done (loss=0.5)")
    buf = io.StringIO()
    with progress.LineProgress(None, "eval", "batch", file=buf) as bar:
        for _ in range(100):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 8 and lines[-1].startswith("eval: 100 batch")  # at 1, 2, 4, .., 64, and the end


def test_progress_bar_without_a_terminal_prints_lines(capsys):
    bar = progress.progress_bar(50, "verify", True, unit="shard")
    assert isinstance(bar, progress.LineProgress)  # pytest's captured stderr is not a terminal
    bar.update(50)
    bar.close()
    assert capsys.readouterr().err.startswith("verify: 100% 50/50 shard")
    off = progress.progress_bar(50, "verify", False)
    off.update(5)
    off.close()
    assert capsys.readouterr().err == ""
