"""benchmarks/throughput.py must not rot: a tiny run of every CPU row, checked for its JSON schema and delivered
image counts (never for speed: timings on a shared CI machine mean nothing)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("nvidia.dali")

from benchmarks import throughput

N, B = 32, 8
CPU_ROWS = ["pil-files", "pil-shards", "dali-cpu", "dali-cpu-exact", "decode-ceiling"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    args = throughput.parse_args([
        "--synthetic", str(N), "--source_size", "96", "--shard_size", "64", "--img_size", "48",
        "--batch_size", str(B), "--device", "cpu", "--workers", "2", "--repeats", "1", "--pipelines", *CPU_ROWS,
        "--model", "test_resnet", "--e2e_img_size", "48", "--out", str(tmp / "out"), "--cache", str(tmp / "cache"),
        "--settle", "0", "--breakdown_images", "4", "--name", "smoke"])
    res, paths = throughput.run(args, log=lambda msg: None)
    return res, paths


def test_outputs_written(run):
    res, paths = run
    assert set(paths) == {"json", "md", "png"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0 and p.stem == "smoke"
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(res))
    md = paths["md"].read_text()
    assert all(f"| {name} |" in md for name in CPU_ROWS)


def test_render_adds_notes_without_measuring(run, tmp_path):
    res, paths = run
    notes = tmp_path / "notes.md"
    notes.write_text("Tried: nothing, this is a test.\n")
    again, paths2 = throughput.rerender(paths["json"], notes)
    assert paths2 == paths and again["notes"].startswith("Tried")
    assert again["loader"] == json.loads(json.dumps(res["loader"]))
    assert "Tried: nothing" in paths["md"].read_text()


def test_schema_and_machine_block(run):
    res, _ = run
    assert {"schema_version", "date", "machine", "config", "data", "loader", "end_to_end", "packing", "breakdown",
            "targets", "notes", "seconds_total"} <= set(res)
    m = res["machine"]
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert isinstance(m["cores"], int) and m["cores"] >= 1
    assert len(m["load_avg_start"]) == 3 and len(m["load_avg_end"]) == 3
    assert m["gpu"] is None or isinstance(m["gpu"], str)
    for lib in ("torch", "dali", "pillow", "pillow_simd", "timm", "numpy"):
        assert lib in m["versions"]
    assert isinstance(m["versions"]["torch"], str) and isinstance(m["versions"]["pillow_simd"], bool)
    assert res["data"]["images"] == N and res["config"]["batch_size"] == B
    p = res["packing"]
    assert p["images"] == N and p["img_per_s"] > 0
    per = res["breakdown"]["per_pipeline"]
    assert set(per) == set(CPU_ROWS) and all(p["total"] > 0 for p in per.values())
    assert all(isinstance(s["ms"], float) for s in res["breakdown"]["stages"])


def _check_stats(s: dict, repeats: int = 1):
    assert set(s) == {"median", "min", "max", "all"} and len(s["all"]) == repeats
    assert all(isinstance(v, float) and v > 0 for v in s["all"])
    assert s["min"] <= s["median"] <= s["max"]


def test_loader_rows_deliver_every_image(run):
    res, _ = run
    assert list(res["loader"]) == CPU_ROWS
    for name, row in res["loader"].items():
        _check_stats(row["img_per_s"])
        assert row["expected_per_epoch"] == (N // B) * B, name
        assert row["delivered_per_epoch"] == [row["expected_per_epoch"]], name
        assert row["batches_per_epoch"] == [N // B], name


def test_end_to_end_rows(run):
    res, _ = run
    e2e = res["end_to_end"]
    assert e2e["model"] == "test_resnet" and e2e["img_size"] == 48 and e2e["device"] == "cpu"
    assert list(e2e["rows"]) == ["pil-files", "pil-shards", "dali-cpu", "bound"]
    for name, row in e2e["rows"].items():
        _check_stats(row["img_per_s"])
        assert row["delivered_per_epoch"] == [(N // B) * B], name
        assert 0 <= row["data_wait_frac"]["median"] <= 1 and row["fraction_of_bound"] > 0
    assert e2e["rows"]["bound"]["fraction_of_bound"] == pytest.approx(1.0)


def test_targets_recorded(run):
    res, _ = run
    by_id = {t["target"]: t for t in res["targets"]}
    assert len(by_id) == 7
    for t in by_id.values():
        assert t["status"] in ("pass", "FAIL", "n/a", "not measured here") and isinstance(t["applies_here"], bool)
        # a target for another machine class is never judged here, even where a stand-in row gives a ratio
        assert (t["status"] == "not measured here") == (not t["applies_here"])
    if res["machine"]["gpu"] is None:
        assert by_id["dali-gpu >= 10x pil-files"]["status"] == "not measured here"
        assert by_id["DALI training >= 95% of fixed-tensor bound"]["status"] == "not measured here"
    assert isinstance(by_id["dali-cpu >= 3x pil-files"]["ratio"], float)


def test_bad_flags_are_user_errors(tmp_path):
    from cxr_fast.errors import UserError

    with pytest.raises(UserError, match="--batch_size"):
        throughput.parse_args(["--batch_size", "0"])
    with pytest.raises(UserError, match="--synthetic"):
        throughput.run(throughput.parse_args(["--synthetic", "2", "--cache", str(tmp_path)]), log=lambda m: None)
