"""benchmarks/folder_check.py must not rot: a tiny run, checked for its JSON schema and its decode counts (never
for speed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import folder_check as bench_test_check


@pytest.mark.slow
def test_bench_test_check_tiny_run(tmp_path):
    out = tmp_path / "check.json"
    assert bench_test_check.main(["--images", "6", "--distinct", "2", "--predict_images", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {r["images"] for r in res["torchrun_check"].values()} == {6}
    assert all(len(r["per_rank_s"]) == 2 for r in res["torchrun_check"].values())
    assert res["predict"]["2_fold"]["before"]["decodes_per_image"] == 3
    assert res["predict"]["2_fold"]["after"]["decodes_per_image"] == 1
    assert out.with_suffix(".md").read_text().startswith("# The test-folder check")
