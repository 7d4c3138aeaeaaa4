"""report.html: one self-contained page with every image embedded; missing parts are stated, never fatal."""

from __future__ import annotations

import base64
import re

from cxr_fast.cli.report import main
from cxr_fast.evaluate.run_report import write_report
from tests.evaluate.conftest import make_data, make_run, write_pred_truth

PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in PNG.findall(page)]


def test_full_run_report(run_dir):
    (run_dir / "thresholds.json").write_text(
        '{"version": 1, "labels": ["Atelectasis"], "operating_points": {"youden": {"Atelectasis": {"threshold": 0.4,'
        ' "sensitivity": 0.8, "specificity": 0.7}}, "sens90": {}}, "skipped": {"Edema": "one class <only>"}}')
    out = write_report(run_dir, n_boot=100)
    page = out.read_text()
    imgs = _images(page)
    assert len(imgs) == 3 == page.count("<img")  # training curves, OOF ROC, couplings heatmap
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 2000 for b in imgs)
    for text in ("Configuration", "fold", "95% CI", "strongest couplings", "Cardiomegaly (+0.3)", "mean img/s",
                 "Youden", "one class &lt;only&gt;", "No test-set evaluation"):
        assert text in page, text
    assert "could not be built" not in page and "src=\"http" not in page and "<script" not in page


def test_partial_run_states_each_missing_part(tmp_path):
    run = make_run(tmp_path / "run", folds_run=(1, 3), refiner=False)
    (run / "metrics.jsonl").write_text('{"fold": 1, "epoch": 1, "loss": 0.5, "lr": 0.001, "val_auc": 0.6}\nnot json\n')
    page = write_report(run, n_boot=50).read_text()
    assert "Fold(s) 2 of 3 were not run" in page
    assert "no label-coupling refiner (trained with --no-refiner)" in page
    assert "No thresholds.json" in page
    assert "1 unreadable line(s) of metrics.jsonl" in page
    assert len(_images(page)) == 2  # curves and ROC; no heatmap


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
    assert len(_images(page)) == 2 and "could not be built" not in page  # curves, ROC
    assert "A single label has no couplings" in page


def test_cxr_report_adds_test_evaluation(run_dir, tmp_path, capsys):
    y, p = make_data(150, seed=9)
    pred, truth = write_pred_truth(tmp_path, y, p)
    assert main([str(run_dir), "--pred", str(pred), "--truth", str(truth), "--bootstrap", "50"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Test-set metrics" in page and len(_images(page)) == 4
    assert "test macro-AUC" in capsys.readouterr().out

