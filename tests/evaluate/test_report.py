"""report.html: one self-contained page with every image embedded; missing parts are stated, never fatal."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from cxr_fast.cli.report import main
from cxr_fast.evaluate.eval_page import eval_summary_html
from cxr_fast.evaluate.metrics import evaluate
from cxr_fast.evaluate.run_report import write_report
from cxr_fast.evaluate.run_sections import coupling_words
from tests.evaluate.conftest import LABELS, make_data, make_run, write_pred_truth
from tests.helpers import assert_user_error

PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in PNG.findall(page)]


def _h2s(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_full_run_report(run_dir):
    (run_dir / "thresholds.json").write_text(
        '{"version": 1, "labels": ["Atelectasis"], "operating_points": {"youden": {"Atelectasis": {"threshold": 0.4,'
        ' "sensitivity": 0.8, "specificity": 0.7}}, "sens90": {}}, "skipped": {"Edema": "one class <only>"}}')
    out = write_report(run_dir, n_boot=100)
    page = out.read_text()
    imgs = _images(page)
    assert len(imgs) == 4 == page.count("<img")  # training curves, OOF ROC, OOF calibration, couplings heatmap
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 2000 for b in imgs)
    for text in ("Configuration", "fold", "95% CI", "strongest couplings", "mean img/s", "Youden",
                 "Edema: one class &lt;only&gt;; no threshold", "No test-set evaluation", "No comparison given",
                 "<h3>Calibration (out-of-fold)</h3>", "optimistic"):
        assert text in page, text
    # alpha x A in logit units: A[0, 1] = 0.3 with the refiner's default alpha 0.3 (not in this config) -> +0.09
    assert "a certain Atelectasis raises Cardiomegaly&#x27;s logit</td><td class=\"num\">+0.09</td>" in page
    assert "a certain Cardiomegaly lowers Atelectasis&#x27;s logit" in page
    h2 = _h2s(page)
    assert h2[0] == "Summary" and h2[-1] == "Configuration", h2  # results first, the configuration last, folded
    assert h2.index("Training curves") + 1 == h2.index("Throughput")
    assert "<details><summary>All 5 settings" in page
    assert "could not be built" not in page and "src=\"http" not in page and "<script" not in page


def test_partial_run_states_each_missing_part(tmp_path):
    run = make_run(tmp_path / "run", folds_run=(1, 3), refiner=False)
    (run / "metrics.jsonl").write_text('{"fold": 1, "epoch": 1, "loss": 0.5, "lr": 0.001, "val_auc": 0.6}\nnot json\n')
    page = write_report(run, n_boot=50).read_text()
    assert "Fold(s) 2 of 3 were not run" in page
    assert "no label-coupling refiner (trained with --no-refiner)" in page
    assert "No thresholds.json" in page
    assert "1 unreadable line(s) of metrics.jsonl" in page
    assert len(_images(page)) == 3  # curves, ROC and calibration; no heatmap


def test_empty_or_broken_folder_never_raises(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    page = write_report(run, n_boot=10).read_text()
    for text in ("No config.json", "No cv_summary.json", "No metrics.jsonl", "No oof.csv", "No fold checkpoints",
                 "No thresholds.json"):
        assert text in page, text
    (run / "cv_summary.json").write_text("{broken")
    (run / "tiny_fold1.pth").write_bytes(b"not a checkpoint")
    page = write_report(run, n_boot=10).read_text()
    assert page.count("This section could not be built") == 2


def test_one_label_run(tmp_path):
    run = make_run(tmp_path / "run", labels=["Edema"])
    page = write_report(run, n_boot=50).read_text()
    assert len(_images(page)) == 3 and "could not be built" not in page  # curves, ROC, calibration
    assert "A single label has no couplings" in page


def test_cxr_report_adds_test_evaluation(run_dir, tmp_path, capsys):
    y, p = make_data(150, seed=9)
    pred, truth = write_pred_truth(tmp_path, y, p)
    assert main([str(run_dir), "--pred", str(pred), "--truth", str(truth), "--bootstrap", "50"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Test-set metrics" in page and len(_images(page)) == 6  # + test ROC and calibration
    assert "test macro-AUC" in capsys.readouterr().out
    assert "(seed 0)" in page  # the run's own seed (make_run's config: seed 0)



def test_run_from_shards_names_its_data(run_dir, tmp_path):
    """A run trained from shards: the data summary and the config name the shards and the CSV they came from, the
    rejected images are listed, and patients per fold are counted from the training CSV's group column."""
    shards = tmp_path / "shards"
    shards.mkdir()
    csv = tmp_path / "train.csv"
    names = pd.read_csv(run_dir / "folds.csv")["Image_name"]
    pd.DataFrame({"Image_name": names, "Patient ID": [f"p{i // 3}" for i in range(len(names))], "Age": 50,
                  **{lb: 0 for lb in LABELS}}).to_csv(csv, index=False)
    (shards / "manifest.json").write_text(json.dumps({
        "source": {"train_csv": str(csv), "train_dir": "/data/imgs"}, "group_col": "Patient ID",
        "rejected": [{"name": "bad.png", "split": "train", "reason": "truncated <file>"}]}))
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg.update(train_csv=None, train_dir=None, shards=str(shards), labels=LABELS, group_col="Patient ID")
    (run_dir / "config.json").write_text(json.dumps(cfg))
    page = write_report(run_dir, n_boot=20).read_text()
    assert f"Trained from the shards in {shards}, built by cxr-shard from {csv}" in page
    assert f"null: trained from the shards {shards}, built from {csv}" in page  # train_csv in the config table
    assert "Images skipped (cxr-shard --skip_bad): 1: bad.png (train: truncated &lt;file&gt;)" in page
    assert "Age (not a label" in page and "Patient ID (the group (patient) column)" in page
    folds = pd.read_csv(run_dir / "folds.csv")
    pats = folds.assign(p=[f"p{i // 3}" for i in range(len(folds))]).groupby("fold")["p"].nunique()
    rows = re.findall(r"<tr><td class=\"num\">(\d)</td><td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>",
                      page)
    assert [(int(k), int(n), int(p)) for k, n, p in rows[:3]] == [
        (k, int((folds["fold"] == k).sum()), int(pats[k])) for k in (1, 2, 3)]
    assert "20 bootstrap resamples of groups" in page  # grouped run: the OOF CIs resample patients


def test_compare_section(run_dir, tmp_path):
    doc = {"verdict": "run - ablation: +0.021 macro-AUC: run better (both intervals exclude 0)",
           "delta": {"value": 0.021, "ci95": [0.005, 0.04], "t_ci95": [0.002, 0.045]}, "a_value": 0.73,
           "b_value": 0.709, "runs_a": [str(run_dir)], "runs_b": ["/x/ablation"], "decided_by": ["ci95", "t_ci95"],
           "per_fold": [{"pair": 1, "fold": k, "n": 100, "a": 0.7, "b": 0.68, "delta": 0.02} for k in (1, 2, 3)],
           "pooled": {"a_value": 0.72, "b_value": 0.71, "value": 0.01, "ci95": [-0.01, 0.03], "note": "not <it>"}}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(doc))
    assert main([str(run_dir), "--compare", str(path), "--bootstrap", "20"]) == 0
    page = (run_dir / "report.html").read_text()
    sec = page[page.index("<h2>Refiner / ablation comparison</h2>"):page.index("<h2>Configuration</h2>")]
    for text in ("run better (both intervals exclude 0)", "+0.021", "[+0.005, +0.040]", "[+0.002, +0.045]",
                 "This run is arm A", "<h3>Per-fold deltas</h3>",
                 "delta +0.010 (bootstrap 95% CI [-0.010, +0.030]): not &lt;it&gt;"):
        assert text in sec, text
    assert sec.count("+0.020") == 3 and "Comparison: run - ablation" in page  # per fold; verdict in the summary
    path.write_text('{"delta": 1}')
    assert_user_error(lambda: main([str(run_dir), "--compare", str(path)]), "compare.json", "verdict")


def test_few_positives_and_grouped_skip_notes():
    res = evaluate(*make_data(200, seed=3), LABELS, n_boot=20)
    res["per_label"]["Edema"].update(n_pos=3)
    why = "only negatives among its 10 known rows: no AUC"
    res["skipped"] = {"A": why, "B": why}
    page = eval_summary_html(res)
    assert page.count("too few positives for a stable AUC") == 1 and "1 label(s) have fewer than 10" in page
    assert page.count("only negatives") == 1 and "A, B: only negatives" in page


def test_coupling_words_in_logit_units():
    effect = np.array([[0.0, 0.12, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    rows = coupling_words(effect, ["Edema", "Cardiomegaly", "Effusion"], {"Edema": 2.0, "Cardiomegaly": 1.2})
    assert rows == [["a certain Cardiomegaly lowers Edema's logit", "-0.5", 2.0, 0.25],
                    ["a certain Edema raises Cardiomegaly's logit", "+0.12", 1.2, pytest.approx(0.1)]]
