"""Study-level scoring: the AUC equals sklearn's on a hand-aggregated table; the bootstrap counts studies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_fast.cli.eval import main
from cxr_fast.evaluate.study import aggregate
from tests.evaluate.conftest import LABELS, make_data, write_pred_truth
from tests.helpers import assert_user_error


def test_aggregate_rules():
    y = np.array([[0.0], [1.0], [np.nan], [np.nan], [0.0]])
    p = np.array([[0.2], [0.6], [0.9], [0.1], [0.4]])
    names, t, pm, first = aggregate(list("abcde"), y, p, np.array(["s1", "s1", "s2", "s2", "s3"]), "max")
    assert names == ["s1", "s2", "s3"] and list(first) == [0, 2, 4]
    assert t[0, 0] == 1.0 and np.isnan(t[1, 0]) and t[2, 0] == 0.0  # any positive; unknown only if all unknown
    assert pm[:, 0].tolist() == [0.6, 0.9, 0.4]
    _, _, pmean, _ = aggregate(list("abcde"), y, p, np.array(["s1", "s1", "s2", "s2", "s3"]), "mean")
    assert pmean[:, 0] == pytest.approx([0.4, 0.5, 0.4])


@pytest.mark.parametrize("agg", ["max", "mean"])
def test_study_auc_equals_sklearn_on_hand_aggregated_table(tmp_path, agg, capsys):
    y, p = make_data(300, seed=3)
    y[:20, 1] = np.nan
    pred, truth = write_pred_truth(tmp_path, y, p)
    studies = [f"st{i // 3:04d}" for i in range(300)]  # 3 images per study
    df = pd.read_csv(truth, dtype=str, keep_default_na=False)
    df["Study"] = studies
    df.to_csv(truth, index=False)
    assert main(["--pred", str(pred), "--truth", str(truth), "--study_col", "Study", "--study_agg", agg,
                 "--bootstrap", "50", "--out", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["level"] == "study" and r["n"] == 100 and r["n_images"] == 300 and r["study_col_from"] == str(truth)
    p6 = pd.read_csv(pred)[LABELS].to_numpy()
    table = pd.DataFrame(p6, columns=LABELS).assign(Study=studies)
    hand_p = table.groupby("Study", sort=False)[LABELS].agg(agg)
    hand_y = pd.DataFrame(y, columns=LABELS).assign(Study=studies).groupby("Study", sort=False)[LABELS].max()
    for name in LABELS:
        known = hand_y[name].notna()
        assert r["per_label"][name]["auc"]["value"] == pytest.approx(
            roc_auc_score(hand_y[name][known], hand_p[name][known]), abs=1e-12)
    assert "Study" not in r["labels"] and "100 studies from 300 images" in capsys.readouterr().out


def test_missing_study_column_is_one_line(tmp_path):
    y, p = make_data(60, seed=1)
    pred, truth = write_pred_truth(tmp_path, y, p)
    assert_user_error(lambda: main(["--pred", str(pred), "--truth", str(truth), "--study_col", "Study",
                                    "--bootstrap", "0"]), "--study_col 'Study'")


def test_predict_study_csv(tmp_path):
    from cxr_fast.errors import UserError
    from cxr_fast.evaluate.study import check_study_names, study_map, write_study_predictions

    pd.DataFrame({"Image_name": ["a.png", "b.png", "c.png"], "study": ["s1", "s1", "s2"]}).to_csv(
        tmp_path / "map.csv", index=False)
    ids = study_map(tmp_path / "map.csv", "study", "Image_name")
    with pytest.raises(UserError, match="go together"):
        study_map(tmp_path / "map.csv", None, "Image_name")
    with pytest.raises(UserError, match="'d.png'"):
        check_study_names(ids, ["a.png", "d.png"], tmp_path / "map.csv")
    out = write_study_predictions(tmp_path / "sub.csv", ["a.png", "b.png", "c.png"], ["Edema"],
                                  np.array([[0.2], [0.7], [0.1]]), ids, "study")
    assert out == tmp_path / "sub_studies.csv"
    df = pd.read_csv(out)
    assert df["study"].tolist() == ["s1", "s2"] and df["Edema"].tolist() == [0.7, 0.1]


def test_an_image_listed_twice_in_the_study_csv_is_one_line(tmp_path):
    from cxr_fast.errors import UserError
    from cxr_fast.evaluate.study import study_map

    pd.DataFrame({"Image_name": ["a.png", "b.png", "a.png"], "study": ["s1", "s1", "s2"]}).to_csv(
        tmp_path / "map.csv", index=False)
    with pytest.raises(UserError, match=r"image 'a.png' is listed more than once .* lines 2, 4"):
        study_map(tmp_path / "map.csv", "study", "Image_name")
