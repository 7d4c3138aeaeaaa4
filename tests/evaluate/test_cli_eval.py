"""cxr-eval end to end, and its one-line errors (exit code 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_fast.cli.eval import main
from cxr_fast.evaluate.thresholds import write_thresholds
from tests.evaluate.conftest import LABELS, make_data, write_pred_truth
from tests.helpers import assert_user_error


def test_eval_writes_json_and_report(tmp_path, capsys):
    y, p = make_data(300, seed=4)
    y[:30, 2] = np.nan
    pred, truth = write_pred_truth(tmp_path, y, p)
    write_thresholds(tmp_path / "thr.json", y, np.round(p, 6), LABELS)
    rc = main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "200", "--out", str(tmp_path / "e.json"),
               "--report", str(tmp_path / "e.html"), "--thresholds", str(tmp_path / "thr.json")])
    assert rc == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["n"] == 300 and r["labels"] == LABELS and r["bootstrap"] == 200 and r["seed"] == 0
    p6 = pd.read_csv(pred)[LABELS].to_numpy()
    for j, name in enumerate(LABELS):
        k = ~np.isnan(y[:, j])
        assert r["per_label"][name]["auc"]["value"] == roc_auc_score(y[k, j], p6[k, j])
        lo, hi = r["per_label"][name]["auc"]["ci95"]
        assert lo < r["per_label"][name]["auc"]["value"] < hi
        assert r["per_label"][name]["at_threshold"]["sensitivity"] is not None
    assert r["per_label"]["Edema"]["n_pos"] + r["per_label"]["Edema"]["n_neg"] == 270
    assert r["macro_auc"]["value"] == pytest.approx(np.mean([r["per_label"][n]["auc"]["value"] for n in LABELS]))
    page = (tmp_path / "e.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "ECE" in page
    out = capsys.readouterr().out
    assert "macro-AUC" in out and "Cardiomegaly" in out


def test_one_label_dataset(tmp_path):
    y, p = make_data(200, seed=5, labels=["Edema"], ds=(1.0,))
    pred, truth = write_pred_truth(tmp_path, y, p, labels=["Edema"])
    main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "100", "--out", str(tmp_path / "e.json")])
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["macro_auc"] == r["per_label"]["Edema"]["auc"]


def _corrupt(kind: str, pred, truth):
    df = pd.read_csv(pred, dtype=str, keep_default_na=False)
    if kind == "pred_extra_name":
        df.loc[3, "Image_name"] = "ghost.png"
    elif kind == "truth_extra_name":
        df = df.drop(index=7)
    elif kind == "out_of_range":
        df.loc[5, "Edema"] = "1.5"
    elif kind == "non_numeric":
        df.loc[5, "Edema"] = "abc"
    elif kind == "duplicate":
        df.loc[4, "Image_name"] = df.loc[3, "Image_name"]
    elif kind == "missing_label":
        df = df.drop(columns=["Edema"])
    df.to_csv(pred, index=False)
    if kind == "non_utf8":
        pred.write_bytes(pred.read_bytes().replace(b"img_00001", b"img_\xff\xfe001"))


@pytest.mark.parametrize("kind,needle", [
    ("pred_extra_name", "ghost.png"), ("truth_extra_name", "img_00007.png"), ("out_of_range", "line 7"),
    ("non_numeric", "'Edema'"), ("duplicate", "img_00003.png"), ("missing_label", "Edema"),
    ("non_utf8", "UTF-8"),
])
def test_bad_inputs_exit_2_one_line_nothing_written(tmp_path, capsys, kind, needle):
    y, p = make_data(20, seed=6)
    pred, truth = write_pred_truth(tmp_path, y, p)
    _corrupt(kind, pred, truth)
    extra = ["--labels", ",".join(LABELS)] if kind == "missing_label" else []
    assert_user_error(lambda: main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "10", "--out",
                                    str(tmp_path / "e.json"), "--report", str(tmp_path / "e.html")] + extra), needle)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.html").exists()
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def test_labels_shared_by_default_and_fold_column_ignored(tmp_path, capsys):
    y, p = make_data(100, seed=7)
    pred, truth = write_pred_truth(tmp_path, y, p)
    df = pd.read_csv(pred)
    df.insert(1, "fold", 1)
    df["Extra"] = 0.5  # a prediction column the truth lacks: not evaluated
    df.to_csv(pred, index=False)
    main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "0", "--out", str(tmp_path / "e.json")])
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["labels"] == LABELS and r["macro_auc"]["ci95"] is None
    assert "Extra not in both files" in capsys.readouterr().err
