"""Leakage is never silent: a patient column and no --group_col gives one warning naming the flag; none with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_fast.data.leakage import SILENCE_ENV, leakage_note, patient_columns


def _csv(tmp_path, **cols) -> str:
    n = 120
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"Image_name": [f"img{i}.png" for i in range(n)], "Edema": rng.integers(0, 2, n)})
    for k, v in cols.items():
        df[k] = v(n)
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    return str(path)


def test_named_patient_column_warns_once_with_the_flag(tmp_path):
    path = _csv(tmp_path, **{"Patient ID": lambda n: np.arange(n) // 3})  # integers: caught by the name
    note = leakage_note(path, image_col="Image_name", label_names=["Edema"], group_col=None)
    assert note is not None and len(note.splitlines()) == 1
    assert "'Patient ID'" in note and '--group_col "Patient ID"' in note and "different folds" in note
    assert leakage_note(path, image_col="Image_name", label_names=["Edema"], group_col="Patient ID") is None


def test_repeated_text_column_is_found_by_its_values(tmp_path):
    path = _csv(tmp_path, owner=lambda n: [f"p{i // 4:03d}" for i in range(n)],
                Sex=lambda n: np.where(np.arange(n) % 2, "M", "F"),
                Age=lambda n: 20 + np.arange(n) % 40, StudyDate=lambda n: [f"2020-01-{1 + i % 28:02d}" for i in range(n)])
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert patient_columns(df, ["Image_name", "Edema"]) == ["owner"]  # not Sex, Age or a date


def test_no_warning_without_patient_column_or_when_silenced(tmp_path, monkeypatch):
    path = _csv(tmp_path, Sex=lambda n: np.where(np.arange(n) % 2, "M", "F"))
    assert leakage_note(path, image_col="Image_name", label_names=["Edema"], group_col=None) is None
    path = _csv(tmp_path, subject_id=lambda n: np.arange(n) // 2)
    assert leakage_note(path, image_col="Image_name", label_names=["Edema"], group_col=None) is not None
    monkeypatch.setenv(SILENCE_ENV, "1")
    assert leakage_note(path, image_col="Image_name", label_names=["Edema"], group_col=None) is None


def test_shard_and_train_csv_say_it(tmp_path, capsys):
    from cxr_fast.train.run_data import from_csv

    rows = 24
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    for i in range(rows):
        (img_dir / f"img{i}.png").write_bytes(b"x")
    df = pd.DataFrame({"Image_name": [f"img{i}.png" for i in range(rows)], "Edema": np.arange(rows) % 2,
                       "Cardiomegaly": (np.arange(rows) // 2) % 2, "Patient ID": np.arange(rows) // 2})
    df.to_csv(tmp_path / "train.csv", index=False)
    logged: list[str] = []
    common = {"image_col": "Image_name", "labels": None, "uncertain": "zeros", "missing": "zeros", "folds": 3,
              "seed": 0, "log": logged.append}
    from_csv(tmp_path / "train.csv", img_dir, None, group_col=None, **common)
    assert sum("--group_col" in s for s in logged) == 1
    logged.clear()
    from_csv(tmp_path / "train.csv", img_dir, None, group_col="Patient ID", **common)
    assert not any("identifies patients" in s for s in logged)


@pytest.mark.parametrize("cmd", ["eval", "compare"])
def test_eval_and_compare_say_it(tmp_path, capsys, cmd):
    from tests.evaluate.conftest import make_data, make_run, write_pred_truth

    if cmd == "eval":
        from cxr_fast.cli.eval import main

        y, p = make_data(90, seed=2)
        pred, truth = write_pred_truth(tmp_path, y, p, groups=np.arange(90) // 3)
        main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "0"])
        assert capsys.readouterr().err.count("identifies patients") == 1
        main(["--pred", str(pred), "--truth", str(truth), "--bootstrap", "0", "--group_col", "Patient ID"])
    else:
        from cxr_fast.cli.compare import main

        run = make_run(tmp_path / "run", checkpoints=False)
        df = pd.read_csv(run / "oof_labels.csv")
        df["Patient ID"] = np.arange(len(df)) // 3
        df.to_csv(run / "oof_labels.csv", index=False)
        main([str(run), str(run), "--bootstrap", "0"])
        assert capsys.readouterr().err.count("identifies patients") == 1
        main([str(run), str(run), "--bootstrap", "0", "--group_col", "Patient ID"])
    assert "identifies patients" not in capsys.readouterr().err


def test_cxr_shard_says_it_once(tmp_path, capsys):
    from cxr_fast.cli.shard import main
    from tests.helpers import make_shard_data as make_data
    from tests.helpers import shard_cli_args as cli_args

    root = make_data(tmp_path, n=24, n_test=1)  # its train.csv has a "Patient" column, 3 images each
    main(cli_args(root, tmp_path / "out"))
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("column 'Patient' identifies patients") == 1
    main(cli_args(root, tmp_path / "out2", "--group_col", "Patient"))
    captured = capsys.readouterr()
    assert "identifies patients" not in captured.out + captured.err
