"""cxr-predict over a test folder decodes each image once: the prediction pass is the check (a bad image stops it
before any output, or with --skip_bad is left out and named), and one pass serves every fold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cxr_fast.cli import predict as predict_cli
from cxr_fast.images import check
from cxr_fast.pipelines import pil
from tests.helpers import assert_user_error


@pytest.fixture()
def decodes(monkeypatch) -> Counter:
    """Every read_gray8 call of the check and of the PIL loader, by file name (num_workers 0: in this process)."""
    seen: Counter = Counter()
    real = pil.read_gray8

    def counting(path, *args, **kwargs):
        seen[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pil, "read_gray8", counting)
    monkeypatch.setattr(check, "read_gray8", counting)
    return seen


def _argv(run: Path, test_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoints", str(run / "test_resnet_fold*.pth"), "--test_dir", str(test_dir), "--out_csv", str(out),
            "--pipeline", "pil", "--num_workers", "0", "--no-progress", "--device", "cpu", *extra]


def test_each_test_image_is_decoded_once_for_every_fold(pil_run, tmp_path, decodes):
    data, run = pil_run
    out = tmp_path / "pred.csv"
    assert len(list(run.glob("test_resnet_fold*.pth"))) == 2
    assert predict_cli.main(_argv(run, data / "test", out)) == 0  # 2 folds, flip TTA
    names = sorted(p.name for p in (data / "test").iterdir())
    assert dict(decodes) == dict.fromkeys(names, 1)  # was 3 each: the check, then one pass per fold
    assert pd.read_csv(out)["Image_name"].tolist() == names
    # the one pass equals the mean of the folds: tests/train/test_train.py test_predict_is_the_mean_of_single_folds


@pytest.fixture()
def bad_test_dir(pil_run, tmp_path) -> tuple[Path, str]:
    data, _ = pil_run
    d = tmp_path / "test"
    d.mkdir()
    for p in sorted((data / "test").iterdir()):
        (d / p.name).write_bytes(p.read_bytes())
    bad = sorted(d.iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:80])  # truncated: only a full decode finds it
    return d, bad.name


def test_a_bad_image_stops_predict_before_any_output(pil_run, bad_test_dir, tmp_path, decodes):
    _, run = pil_run
    test_dir, bad = bad_test_dir
    out = tmp_path / "pred.csv"
    msg = assert_user_error(lambda: predict_cli.main(_argv(run, test_dir, out, "--batch_size", "2")),
                            str(test_dir / bad), "--skip_bad")
    assert not out.exists() and not list(tmp_path.glob(".*")), msg  # no output, no temporary file left
    assert decodes[bad] == 1 and max(decodes.values()) == 1  # stopped by the pass itself, no check before it


def test_skip_bad_leaves_the_image_out_and_names_it(pil_run, bad_test_dir, tmp_path, decodes, capsys):
    _, run = pil_run
    test_dir, bad = bad_test_dir
    out = tmp_path / "pred.csv"
    assert predict_cli.main(_argv(run, test_dir, out, "--skip_bad", "--batch_size", "3")) == 0
    said = capsys.readouterr().out
    assert f"--skip_bad: left out 1 unreadable test image(s): {bad}: " in said
    good = sorted(p.name for p in test_dir.iterdir() if p.name != bad)
    assert pd.read_csv(out)["Image_name"].tolist() == good
    assert all(decodes[n] == 1 for n in good) and decodes[bad] == 2  # the pass, then once more for the reason
