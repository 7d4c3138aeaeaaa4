"""The scale benchmark's smoke run (a few hundred rows): it cannot rot."""

from __future__ import annotations

import json

from benchmarks import scale


def test_scale_benchmark_smoke(tmp_path):
    res = scale.main(["--rows", "400", "--pipelines", "pil", "--workdir", str(tmp_path / "w"), "--results",
                      str(tmp_path / "scale"), "--workers", "2", "--batch_size", "32"])
    st = res["stages"]
    for name in ("folds (read CSV + 5 grouped folds)", "shard (fresh build)", "verify", "train 1 epoch (pil)"):
        assert "failed" not in st[name] and st[name]["seconds"] > 0 and st[name]["rss_mb"] > 0, (name, st[name])
    assert st["verify"]["problems"] == 0
    resume = st["shard resume (after kill)"]
    assert "note" in resume or (resume["identical_to_fresh"] and resume["ratio_to_fresh"] > 0)
    assert json.loads((tmp_path / "scale.json").read_text())["rows"] == 400
    assert "| shard (fresh build) |" in (tmp_path / "scale.md").read_text()


def test_jpeg_draft_benchmark_smoke(tmp_path):
    res = scale.main(["--mode", "jpeg-draft", "--images", "2", "--repeats", "1", "--jpeg_size", "1024x1228",
                      "--resize", "256", "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "jd")])
    assert res["img_per_s"]["before_full_decode"] > 0 and res["img_per_s"]["after_reduced_scale_decode"] > 0
    assert res["difference_grey_levels"]["mean_abs"] < 1.0 and res["machine"]["cores"] >= 1
    assert json.loads((tmp_path / "jd.json").read_text())["resize"] == 256
    assert "| after: DCT-scaled" in (tmp_path / "jd.md").read_text()
