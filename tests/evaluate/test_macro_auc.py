"""The one macro-AUC rule (cxr_fast.evaluate.metrics.macro_auc) that training and the evidence tools share: labels
with a single known class and NaN targets are skipped, non-finite predictions refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_fast.evaluate.metrics import macro_auc


def test_macro_auc_skips_single_class_labels_and_nan_targets():
    rng = np.random.default_rng(0)
    n = 40
    y = np.stack([rng.integers(0, 2, n), np.zeros(n), rng.integers(0, 2, n), np.full(n, np.nan)], 1).astype(float)
    y[:10, 2] = np.nan
    y[10:, 1] = np.nan  # label 1: a single class among its known targets
    p = rng.random((n, 4))
    p[:10, 2] = 2.0  # would distort label 2's AUC if the NaN-target rows were kept
    macro, per, skipped = macro_auc(y, p, ["a", "b", "c", "d"])
    assert skipped == ["b", "d"]
    assert per["b"] is None and per["d"] is None
    assert per["a"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert per["c"] == pytest.approx(roc_auc_score(y[10:, 2], p[10:, 2]))
    assert macro == pytest.approx((per["a"] + per["c"]) / 2)


def test_macro_auc_all_skipped_is_nan_and_refuses_non_finite():
    y = np.ones((5, 2))
    macro, _, skipped = macro_auc(y, np.full((5, 2), 0.5), ["a", "b"])
    assert math.isnan(macro) and skipped == ["a", "b"]
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 0]], dtype=float)
    p = np.array([[0.1, 0.9], [np.nan, 0.2], [0.2, 0.8], [0.7, 0.1]])
    with pytest.raises(ValueError, match="non-finite predictions"):
        macro_auc(y, p, ["a", "b"])
