"""Bootstrap metrics: sklearn equality, CIs that bracket a known AUC, whole-group resampling, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_fast.evaluate.bootstrap import SortedLabel, resample_counts, weighted_auc_ap
from cxr_fast.evaluate.metrics import evaluate
from tests.evaluate.conftest import binormal, true_auc


def test_point_equals_sklearn_and_ci_brackets_known_auc():
    rng = np.random.default_rng(3)
    d = 1.0
    y, p = binormal(3000, d, 0.3, rng)
    r = evaluate(y[:, None], p[:, None], ["L"], n_boot=400, seed=0)
    auc = r["per_label"]["L"]["auc"]
    assert auc["value"] == roc_auc_score(y, p)
    assert r["per_label"]["L"]["ap"]["value"] == average_precision_score(y, p)
    lo, hi = auc["ci95"]
    assert lo < true_auc(d) < hi          # 0.760
    assert 0.02 < hi - lo < 0.06          # about 4 standard errors of an AUC on 3000 rows
    assert r["macro_auc"]["value"] == auc["value"]  # one label: macro = that label's AUC
    assert r["macro_auc"]["ci95"] == auc["ci95"]
    assert r["per_label"]["L"]["n_pos"] == int(y.sum()) and r["per_label"]["L"]["n_neg"] == int((1 - y).sum())


def test_ci_coverage_is_roughly_95_percent():
    d, hits, runs = 0.8, 0, 40
    for s in range(runs):
        y, p = binormal(400, d, 0.4, np.random.default_rng(100 + s))
        lo, hi = evaluate(y[:, None], p[:, None], ["L"], n_boot=200, seed=s)["per_label"]["L"]["auc"]["ci95"]
        hits += lo <= true_auc(d) <= hi
    assert hits >= 32  # 95% nominal; 32/40 leaves room for chance (P(<32 | 0.95) < 0.1%)


@pytest.mark.parametrize("ties", [False, True])
def test_resample_auc_ap_equal_sklearn_on_the_drawn_rows(ties):
    rng = np.random.default_rng(0)
    y, p = binormal(250, 1.0, 0.3, rng)
    if ties:
        p = np.round(p, 1)
    counts = resample_counts(len(y), None, 15, rng)
    auc, ap = weighted_auc_ap(SortedLabel(y, p, np.arange(len(y))), np.ascontiguousarray(counts.T))
    for b in range(15):
        rows = np.repeat(np.arange(len(y)), counts[b])
        assert auc[b] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[rows], p[rows]), abs=1e-12)


def test_group_bootstrap_keeps_groups_whole():
    groups = np.repeat(np.arange(30), 4)[np.random.default_rng(0).permutation(120)]
    counts = resample_counts(120, groups, 50, np.random.default_rng(1))
    for g in range(30):
        rows = counts[:, groups == g]
        assert (rows == rows[:, :1]).all()  # every row of a group is drawn as often as the group
    assert (counts.sum(1) % 4 == 0).all() and counts.sum(1).mean() == pytest.approx(120, rel=0.1)
    assert (counts == 0).any() and (counts > 1).any()


def test_group_ci_wider_than_row_ci_when_groups_are_correlated():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(60), 10)
    y = np.repeat((rng.random(60) < 0.4).astype(float), 10)   # the label is a patient property
    p = 1 / (1 + np.exp(-(np.repeat(rng.normal(0, 1, 60), 10) + 0.8 * y)))
    rows = evaluate(y[:, None], p[:, None], ["L"], n_boot=300, seed=0)["per_label"]["L"]["auc"]["ci95"]
    grp = evaluate(y[:, None], p[:, None], ["L"], groups=g, n_boot=300, seed=0)["per_label"]["L"]["auc"]["ci95"]
    assert grp[1] - grp[0] > 1.5 * (rows[1] - rows[0])


def test_unknown_rows_excluded_and_single_class_label_skipped():
    rng = np.random.default_rng(2)
    y, p = binormal(500, 1.0, 0.3, rng)
    y2 = y.copy()
    y2[:100] = np.nan
    labels = np.stack([y2, np.zeros(500)], 1)
    probs = np.stack([p, p], 1)
    r = evaluate(labels, probs, ["A", "B"], n_boot=50, seed=0)
    assert r["per_label"]["A"]["auc"]["value"] == roc_auc_score(y[100:], p[100:])
    assert r["per_label"]["A"]["n_pos"] + r["per_label"]["A"]["n_neg"] == 400
    assert r["per_label"]["B"]["auc"]["value"] is None and "B" in r["skipped"]
    assert r["macro_auc"]["value"] == r["per_label"]["A"]["auc"]["value"]


def test_seeded():
    """The same seed gives the same CIs (its speed is a benchmark's business, not a test's)."""
    rng = np.random.default_rng(0)
    y = (rng.random((5000, 14)) < 0.2).astype(float)
    p = rng.random((5000, 14))
    a = evaluate(y, p, [str(i) for i in range(14)], n_boot=200, seed=7)
    b = evaluate(y, p, [str(i) for i in range(14)], n_boot=200, seed=7)
    assert a == b
