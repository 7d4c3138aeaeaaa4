"""cxr-compare: a run against itself gives exactly 0 with both intervals [0, 0]; different folds are refused; old
compare.json readers still find `verdict`, `delta`, `per_fold`, `per_label`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_fast.cli.compare import main
from cxr_fast.evaluate.compare import compare_runs
from cxr_fast.evaluate.compare_stats import decide
from cxr_fast.evaluate.metrics import macro_point
from cxr_fast.evaluate.runs import read_run
from tests.evaluate.conftest import make_run
from tests.helpers import assert_user_error


def test_run_against_itself(run_dir, tmp_path, capsys):
    assert main([str(run_dir), str(run_dir), "--bootstrap", "200", "--out", str(tmp_path / "c.json")]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["delta"] == {"value": 0.0, "ci95": [0.0, 0.0], "t_ci95": [0.0, 0.0]}
    assert r["pooled"]["value"] == 0.0 and r["pooled"]["ci95"] == [0.0, 0.0]
    assert r["a_value"] == r["b_value"] and [f["delta"] for f in r["per_fold"]] == [0.0, 0.0, 0.0]
    assert all(d["delta"]["ci95"] == [0.0, 0.0] for d in r["per_label"].values())
    assert set(r) >= {"a", "b", "a_value", "b_value", "delta", "per_fold", "per_label", "verdict", "ci95", "t_ci95",
                      "pooled", "decided_by", "runs_a", "runs_b"}
    assert "not distinguishable from no effect" in capsys.readouterr().out


def test_paired_delta_and_per_fold(tmp_path):
    a = make_run(tmp_path / "outputs_refiner")
    b = make_run(tmp_path / "outputs_norefiner", refiner=False, noise=0.15)  # B: noisier scores, worse AUC
    r = compare_runs(a, b, n_boot=300, seed=0, progress=False)
    ra, rb = read_run(a), read_run(b)
    for f in r["per_fold"]:
        m = ra.folds == f["fold"]
        assert f["a"] == macro_point(ra.labels[m], ra.probs[m]) and f["b"] == macro_point(rb.labels[m], rb.probs[m])
    assert r["delta"]["value"] == pytest.approx(np.mean([f["a"] - f["b"] for f in r["per_fold"]]))
    assert r["pooled"]["value"] == pytest.approx(macro_point(ra.labels, ra.probs) - macro_point(rb.labels, rb.probs))
    lo, hi = r["delta"]["ci95"]
    assert 0 < lo < r["delta"]["value"] < hi
    assert r["t_ci95"][0] < r["delta"]["value"] < r["t_ci95"][1]


def test_verdict_wording():
    text, by, _ = decide("refiner", "none", 0.004, [-0.002, 0.010], [0.001, 0.007])
    assert text.endswith("not distinguishable from no effect (the bootstrap interval includes 0)") and by == ["ci95"]
    text, by, _ = decide("refiner", "none", 0.004, [0.002, 0.010], [-0.001, 0.009])
    assert "not distinguishable" in text and by == ["t_ci95"] and "t-interval includes 0" in text
    text, by, out = decide("a", "b", -0.02, [-0.03, -0.01], [-0.04, -0.001])
    assert "b better" in text and by == ["ci95", "t_ci95"] and out == "b"
    text, by, _ = decide("a", "b", 0.02, [0.01, 0.03], None)  # one fold, one run: no t-interval, never better
    assert "not distinguishable" in text and "no t-interval" in text and by == ["t_ci95"]


def test_different_folds_refused(tmp_path, capsys):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", fold_seed=1)
    assert_user_error(lambda: main([str(a), str(b), "--bootstrap", "10", "--out", str(tmp_path / "c.json")]),
                      "different folds")
    assert not (tmp_path / "c.json").exists()


def test_group_resampling(tmp_path):
    a = make_run(tmp_path / "a")
    df = __import__("pandas").read_csv(a / "oof_labels.csv")
    df["Patient ID"] = np.arange(len(df)) // 3
    df.to_csv(a / "oof_labels.csv", index=False)
    r = compare_runs(a, a, n_boot=50, seed=0, group_col="Patient ID", progress=False)
    assert r["resampling"] == "groups" and r["delta"]["ci95"] == [0.0, 0.0]
