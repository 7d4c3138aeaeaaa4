"""cxr-compare: a run against itself gives exactly 0 with a CI of [0, 0]; different folds are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_fast.cli.compare import main
from cxr_fast.evaluate.compare import compare_runs, verdict
from cxr_fast.evaluate.metrics import macro_point
from cxr_fast.evaluate.runs import read_run
from tests.evaluate.conftest import make_run


def test_run_against_itself(run_dir, tmp_path, capsys):
    assert main([str(run_dir), str(run_dir), "--bootstrap", "200", "--out", str(tmp_path / "c.json")]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["delta"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert r["a_value"] == r["b_value"] and [f["delta"] for f in r["per_fold"]] == [0.0, 0.0, 0.0]
    assert all(d["delta"]["ci95"] == [0.0, 0.0] for d in r["per_label"].values())
    assert set(r) >= {"a", "b", "a_value", "b_value", "delta", "per_fold", "per_label"}
    assert "not distinguishable from no effect" in capsys.readouterr().out


def test_paired_delta_and_per_fold(tmp_path):
    a = make_run(tmp_path / "outputs_refiner")
    b = make_run(tmp_path / "outputs_norefiner", refiner=False, noise=0.15)  # B: noisier scores, worse AUC
    r = compare_runs(a, b, n_boot=300, seed=0, progress=False)
    ra, rb = read_run(a), read_run(b)
    assert r["a_value"] == macro_point(ra.labels, ra.probs) and r["b_value"] == macro_point(rb.labels, rb.probs)
    assert r["delta"]["value"] == pytest.approx(r["a_value"] - r["b_value"])
    lo, hi = r["delta"]["ci95"]
    assert 0 < lo < r["delta"]["value"] < hi
    assert r["verdict"].endswith("outputs_refiner better")
    for f in r["per_fold"]:
        m = ra.folds == f["fold"]
        assert f["a"] == macro_point(ra.labels[m], ra.probs[m])


def test_verdict_wording():
    assert verdict("refiner", "none", 0.004, [-0.002, 0.010]) == (
        "refiner - none: +0.004 macro-AUC, 95% CI [-0.002, +0.010]: not distinguishable from no effect")
    assert verdict("a", "b", -0.02, [-0.03, -0.01]).endswith("b better")


def test_different_folds_refused(tmp_path, capsys):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", fold_seed=1)
    with pytest.raises(SystemExit) as e:
        main([str(a), str(b), "--bootstrap", "10", "--out", str(tmp_path / "c.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different folds" in err
    assert not (tmp_path / "c.json").exists()


def test_group_resampling(tmp_path):
    a = make_run(tmp_path / "a")
    df = __import__("pandas").read_csv(a / "oof_labels.csv")
    df["Patient ID"] = np.arange(len(df)) // 3
    df.to_csv(a / "oof_labels.csv", index=False)
    r = compare_runs(a, a, n_boot=50, seed=0, group_col="Patient ID", progress=False)
    assert r["resampling"] == "groups" and r["delta"]["ci95"] == [0.0, 0.0]
