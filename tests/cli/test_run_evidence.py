"""What a finished cxr-train run leaves for the evidence tools (oof_labels.csv, thresholds.json, report.html), and
cxr-predict's decisions at those thresholds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_fast.cli import predict as predict_cli
from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.evaluate.thresholds import compute_thresholds
from tests.helpers import assert_user_error


def test_oof_labels_and_thresholds_come_from_the_oof_rows(pil_run):
    data, out = pil_run
    oof = pd.read_csv(out / "oof.csv")
    truth = pd.read_csv(out / "oof_labels.csv")
    assert truth["Image_name"].tolist() == oof["Image_name"].tolist()
    train = pd.read_csv(data / "train.csv").set_index("Image_name").loc[oof["Image_name"], CHEXPERT_LABELS]
    np.testing.assert_array_equal(truth[CHEXPERT_LABELS].to_numpy(), train.to_numpy())
    doc = json.loads((out / "thresholds.json").read_text())
    again = compute_thresholds(truth[CHEXPERT_LABELS].to_numpy(np.float64), oof[CHEXPERT_LABELS].to_numpy(),
                               CHEXPERT_LABELS)
    # the file is what the OOF predictions give (oof.csv holds them to 9 significant digits)
    assert doc["skipped"] == again["skipped"]
    for op, per_label in again["operating_points"].items():
        assert list(doc["operating_points"][op]) == list(per_label)
        for name, want in per_label.items():
            got = doc["operating_points"][op][name]
            assert got["threshold"] == pytest.approx(want["threshold"], abs=1e-7)
            assert (got["sensitivity"], got["specificity"]) == (want["sensitivity"], want["specificity"])
    assert set(doc["operating_points"]) == {"youden", "sens90"}
    assert "<html" in (out / "report.html").read_text().lower()


def _predict(out, data, tmp_path, *extra):
    return predict_cli.main(["--checkpoints", str(out / "test_resnet_fold*.pth"), "--test_dir", str(data / "test"),
                             "--out_csv", str(tmp_path / "p.csv"), "--num_workers", "0", "--no-progress",
                             "--device", "cpu", *extra])


@pytest.mark.parametrize("op", ["youden", "sens90"])
def test_predict_writes_decisions_at_the_runs_thresholds(pil_run, tmp_path, op):
    data, out = pil_run
    doc = json.loads((out / "thresholds.json").read_text())
    labels = [n for n in CHEXPERT_LABELS if n in doc["operating_points"][op]]
    if len(labels) < len(CHEXPERT_LABELS):  # a label without both classes in the OOF rows has no threshold
        with pytest.raises(SystemExit):
            _predict(out, data, tmp_path, "--thresholds", str(out / "thresholds.json"), "--operating_point", op)
        pytest.skip(f"tiny run: only {len(labels)} labels have thresholds")
    assert _predict(out, data, tmp_path, "--thresholds", str(out / "thresholds.json"), "--operating_point", op) == 0
    probs = pd.read_csv(tmp_path / "p.csv")
    dec = pd.read_csv(tmp_path / "p_decisions.csv")
    assert dec["Image_name"].tolist() == probs["Image_name"].tolist()
    cut = np.array([doc["operating_points"][op][n]["threshold"] for n in CHEXPERT_LABELS])
    np.testing.assert_array_equal(dec[CHEXPERT_LABELS].to_numpy(),
                                  (probs[CHEXPERT_LABELS].to_numpy() >= cut).astype(int))


def test_predict_refuses_thresholds_of_other_labels_before_inference(pil_run, tmp_path):
    data, out = pil_run
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"version": 1, "labels": ["A"], "operating_points": {"youden": {}, "sens90": {}}}))
    assert_user_error(lambda: _predict(out, data, tmp_path, "--thresholds", str(bad)), "no entry for label(s)")
    assert not (tmp_path / "p.csv").exists()
    assert_user_error(lambda: _predict(out, data, tmp_path, "--out_decisions", str(tmp_path / "d.csv")),
                      "--out_decisions needs --thresholds")
