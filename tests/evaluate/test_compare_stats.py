"""The within-fold statistic of cxr-compare: calibration per fold cannot move it, a real win is called, the corrected
t-interval is the hand formula, several runs per arm are paired by position, one fold and one run is never better."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr_fast.cli.compare import main
from cxr_fast.evaluate.compare import compare_runs
from cxr_fast.evaluate.compare_stats import t_interval
from tests.evaluate.conftest import LABELS, make_run
from tests.helpers import assert_user_error


def rewrite_probs(src, dst, fn) -> None:
    """Copy run folder `src` to `dst` with oof.csv's probabilities replaced by fn(probs, folds) (full precision)."""
    shutil.copytree(src, dst)
    oof = pd.read_csv(dst / "oof.csv")
    oof[LABELS] = fn(oof[LABELS].to_numpy(), oof["fold"].to_numpy())
    oof.to_csv(dst / "oof.csv", index=False)


def recalibrate(p: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """A monotone, different transform per fold: the ranking within each fold is unchanged."""
    logit = np.log(p.clip(1e-6, 1 - 1e-6) / (1 - p.clip(1e-6, 1 - 1e-6)))
    scale, shift = {1: 0.3, 2: 1.0, 3: 2.5}, {1: -2.0, 2: 0.0, 3: 1.5}
    s = np.array([scale[k] for k in folds])[:, None]
    c = np.array([shift[k] for k in folds])[:, None]
    return 1.0 / (1.0 + np.exp(-(logit * s + c)))


def noisy(seed: int, sd: float):
    def fn(p: np.ndarray, folds: np.ndarray) -> np.ndarray:
        return np.clip(p + np.random.default_rng(seed).normal(0, sd, p.shape), 0, 1)
    return fn


def test_per_fold_calibration_gives_zero(tmp_path):
    a = make_run(tmp_path / "a", checkpoints=False)
    rewrite_probs(a, tmp_path / "b", recalibrate)
    r = compare_runs(a, tmp_path / "b", n_boot=200, seed=0, progress=False)
    assert r["delta"]["value"] == 0.0 and [f["delta"] for f in r["per_fold"]] == [0.0, 0.0, 0.0]
    assert r["ci95"] == [0.0, 0.0] and r["t_ci95"] == [0.0, 0.0]
    assert "better" not in r["verdict"] and r["outcome"] == "none"
    assert abs(r["pooled"]["value"]) > 0.01  # what the old pooled headline would have claimed


def test_better_in_every_fold(tmp_path):
    a = make_run(tmp_path / "a", n=400, n_folds=5, folds_run=(1, 2, 3, 4, 5), checkpoints=False)
    rewrite_probs(a, tmp_path / "b", noisy(7, 0.5))
    r = compare_runs(a, tmp_path / "b", n_boot=300, seed=0, progress=False)
    assert all(f["delta"] > 0 for f in r["per_fold"])
    assert r["ci95"][0] > 0 and r["t_ci95"][0] > 0
    assert r["outcome"] == "a" and "a better (both intervals exclude 0)" in r["verdict"]
    assert r["decided_by"] == ["ci95", "t_ci95"]


def test_t_interval_by_hand():
    t = t_interval([0.01, 0.02, 0.03, 0.00], 0.25)
    # mean 0.015; S^2 = (2 * 0.005^2 + 2 * 0.015^2) / 3; factor 1/4 + 0.25; t(0.975, 3 dof) = 3.182446305
    half = 3.182446305284263 * np.sqrt(0.5 * (2 * 0.005**2 + 2 * 0.015**2) / 3)
    assert t["ci95"] == pytest.approx([0.015 - half, 0.015 + half], abs=1e-12)
    assert t["dof"] == 3 and t["factor"] == 0.5
    assert t_interval([0.02], 0.5)["ci95"] is None and "needs 2" in t_interval([0.02], 0.5)["why"]


def test_two_runs_per_arm(tmp_path, capsys):
    a1 = make_run(tmp_path / "a1", checkpoints=False)
    rewrite_probs(a1, tmp_path / "a2", noisy(1, 0.02))
    rewrite_probs(a1, tmp_path / "b1", noisy(2, 0.2))
    rewrite_probs(a1, tmp_path / "b2", noisy(3, 0.2))
    out = tmp_path / "c.json"
    args = ["--a", str(a1), str(tmp_path / "a2"), "--b", str(tmp_path / "b1"), str(tmp_path / "b2")]
    assert main(args + ["--bootstrap", "100", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["runs_a"] == [str(a1), str(tmp_path / "a2")] and len(r["per_fold"]) == 6
    assert {f["pair"] for f in r["per_fold"]} == {1, 2} and r["t_test"]["dof"] == 5
    d = np.array([f["delta"] for f in r["per_fold"]])
    folds = pd.read_csv(a1 / "folds.csv")["fold"].to_numpy()
    n_val = np.mean([(folds == k).sum() for k in (1, 2, 3)])
    half = 2.570581835636314 * np.sqrt((1 / 6 + n_val / (len(folds) - n_val)) * d.var(ddof=1))
    assert r["delta"]["value"] == pytest.approx(d.mean())
    assert r["t_ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    printed = capsys.readouterr().out
    assert "run 2 fold 3" in printed and "pooled OOF delta" in printed and r["verdict"] in printed
    assert_user_error(lambda: main(["--a", str(a1), "--b", str(tmp_path / "b1"), str(tmp_path / "b2")]),
                      "paired by position")


def test_one_fold_one_run_never_better(tmp_path):
    a = make_run(tmp_path / "a", n=600, folds_run=(1,), checkpoints=False)
    rewrite_probs(a, tmp_path / "b", noisy(5, 0.6))
    r = compare_runs(a, tmp_path / "b", n_boot=200, seed=0, progress=False)
    assert r["ci95"][0] > 0 and r["t_ci95"] is None
    assert r["outcome"] == "none" and "no t-interval" in r["verdict"]
