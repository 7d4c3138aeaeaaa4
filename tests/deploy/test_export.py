"""cxr-export: the exported ONNX / TorchScript ensemble equals cxr-predict --pipeline pil (with and without flip TTA)
within 1e-4 on the same images, carries its metadata, and refuses bad input with one line and no file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_fast.cli import export as export_cli
from cxr_fast.cli import predict as predict_cli
from cxr_fast.deploy.ensemble import preprocess_file
from cxr_fast.deploy.export import read_metadata, run_exported
from tests.helpers import assert_user_error

from .conftest import LABELS, SIZE, THRESHOLDS, make_checkpoint


def _readme_snippet() -> str:
    """docs/deploy.md's onnxruntime example (the python block after its `onnx-example` marker), run as written."""
    text = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = text[text.index("<!-- onnx-example"):]
    return block[block.index("```python\n") + 10:block.index("\n```", block.index("```python"))] + "\n"


README_SNIPPET = _readme_snippet()


def _predict(run_dir: Path, images: Path, out_csv: Path, tta: bool) -> pd.DataFrame:
    argv = ["--checkpoints", str(run_dir / "*_fold*.pth"), "--test_dir", str(images), "--out_csv", str(out_csv),
            "--pipeline", "pil", "--device", "cpu", "--num_workers", "0", "--batch_size", "4", "--no-progress",
            "--tta" if tta else "--no-tta"]
    assert predict_cli.main(argv) == 0
    return pd.read_csv(out_csv)


def _batch(images: Path, names) -> np.ndarray:
    return np.stack([preprocess_file(images / n, SIZE)[0] for n in names])[:, None]


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """{(format, tta): path} for ONNX without and with TTA and TorchScript without TTA."""
    out = tmp_path_factory.mktemp("exported")
    files = {}
    for fmt, tta, name in [("onnx", False, "m.onnx"), ("onnx", True, "m_tta.onnx"), ("torchscript", False, "m.pt")]:
        argv = ["--checkpoints", str(run_dir / "*_fold*.pth"), "--format", fmt, "--out", str(out / name)]
        assert export_cli.main([*argv, "--tta" if tta else "--no-tta"]) == 0
        files[fmt, tta] = out / name
    return files


@pytest.mark.parametrize("fmt,tta", [("onnx", False), ("onnx", True), ("torchscript", False)])
def test_export_matches_predict(exported, run_dir, test_images, tmp_path, fmt, tta):
    df = _predict(run_dir, test_images, tmp_path / "pred.csv", tta)
    assert len(df) == 6 and list(df.columns) == ["Image_name", *LABELS]
    got = run_exported(fmt, exported[fmt, tta], _batch(test_images, df["Image_name"]))
    assert got.dtype == np.float32 and got.shape == (6, len(LABELS))
    want = df[LABELS].to_numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want - 0.5).max() > 0.1 and want.std(0).min() > 1e-3  # the images get different numbers
    # dynamic batch: one image at a time gives the same numbers
    one = run_exported(fmt, exported[fmt, tta], _batch(test_images, df["Image_name"][:1]))
    assert one.shape == (1, len(LABELS)) and np.abs(one[0] - want[0]).max() < 1e-4


def test_three_channel_network(tmp_path, test_images):
    """An in_chans=3 checkpoint: the grey input is expanded and ImageNet-RGB normalised inside the graph."""
    run = tmp_path / "rgb"
    make_checkpoint(run / "test_resnet_fold1.pth", seed=5, in_chans=3)
    out = tmp_path / "rgb.pt"
    assert export_cli.main(["--checkpoints", str(run / "*.pth"), "--format", "torchscript", "--out", str(out)]) == 0
    df = _predict(run, test_images, tmp_path / "pred.csv", tta=False)
    got = run_exported("torchscript", out, _batch(test_images, df["Image_name"]))
    assert np.abs(got - df[LABELS].to_numpy()).max() < 1e-4
    assert read_metadata("torchscript", out)["in_chans"] == "3"


def test_tta_changes_the_numbers(exported, run_dir, test_images):
    x = _batch(test_images, ["img 0.png", "img 2.png"])
    assert np.abs(run_exported("onnx", exported["onnx", True], x)
                  - run_exported("onnx", exported["onnx", False], x)).max() > 1e-3


@pytest.mark.parametrize("fmt,tta", [("onnx", False), ("onnx", True), ("torchscript", False)])
def test_metadata(exported, fmt, tta):
    meta = read_metadata(fmt, exported[fmt, tta])
    assert json.loads(meta["labels"]) == LABELS
    assert (meta["img_size"], meta["in_chans"], meta["model"], meta["folds"]) == (str(SIZE), "1", "test_resnet", "2")
    assert json.loads(meta["tta"]) is tta
    assert json.loads(meta["thresholds"]) == THRESHOLDS


def test_readme_snippet(exported, run_dir, test_images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(exported["onnx", False], tmp_path / "model.onnx")
    shutil.copy(test_images / "img 3.png", tmp_path / "chest.png")
    assert len(README_SNIPPET.strip().splitlines()) == 10
    exec(compile(README_SNIPPET, "readme", "exec"), {})  # noqa: S102 - our own snippet
    printed = {ln[:28].strip(): float(ln[28:]) for ln in capsys.readouterr().out.splitlines()}
    want = _predict(run_dir, test_images, tmp_path / "p.csv", tta=False).set_index("Image_name").loc["img 3.png"]
    assert set(printed) == set(LABELS)
    assert all(abs(printed[lb] - want[lb]) < 2e-3 for lb in LABELS)  # printed to 3 decimals


def test_older_opset(run_dir, tmp_path, capsys):
    """Below opset 18 the TorchScript-based exporter writes the file; it is checked like any other."""
    import onnx

    out = tmp_path / "m17.onnx"
    argv = ["--checkpoints", str(run_dir / "*_fold*.pth"), "--tta", "--opset", "17", "--out", str(out)]
    assert export_cli.main(argv) == 0
    assert "opset 17" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert json.loads(read_metadata("onnx", out)["labels"]) == LABELS


def _fails(argv: list[str], out: Path, *needles: str) -> None:
    assert_user_error(lambda: export_cli.main(argv), *needles)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temporary left


@pytest.mark.parametrize("change,needle", [({"img_size": 48}, "img_size"), ({"in_chans": 3}, "in_chans"),
                                           ({"labels": ["Atelectasis", "Edema", "No Finding"]}, "labels")])
def test_disagreeing_checkpoints(run_dir, tmp_path, change, needle):
    odd = make_checkpoint(tmp_path / "other" / "test_resnet_fold3.pth", seed=3, **change)
    out = tmp_path / "model.onnx"
    _fails(["--checkpoints", str(run_dir / "*_fold*.pth"), str(odd), "--out", str(out)], out, needle,
           "disagree" if needle != "labels" else "differ")


def test_bad_inputs(run_dir, tmp_path):
    out = tmp_path / "model.onnx"
    _fails(["--checkpoints", str(tmp_path / "nothing*.pth"), "--out", str(out)], out, "not found")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    _fails(["--checkpoints", str(tmp_path / "junk.pth"), "--out", str(out)], out, "junk.pth")
    _fails(["--checkpoints", str(run_dir / "*_fold1.pth"), "--format", "torchscript", "--opset", "17",
                    "--out", str(out)], out, "--opset")
    _fails(["--checkpoints", str(run_dir / "*_fold1.pth"), "--tta", "--opset", "9", "--out", str(out)], out,
           "opset 9", "test_resnet")  # flip needs opset 10
    bad_run = tmp_path / "run"
    make_checkpoint(bad_run / "test_resnet_fold1.pth", seed=1)
    (bad_run / "thresholds.json").write_text(json.dumps({**THRESHOLDS, "labels": ["X", "Y", "Z"]}))
    _fails(["--checkpoints", str(bad_run / "*.pth"), "--out", str(out)], out, "thresholds.json")


def test_mismatch_is_an_error(run_dir, tmp_path, monkeypatch):
    """A file whose numbers drift from PyTorch's by more than 1e-4 is refused and removed."""
    import cxr_fast.deploy.export as ex

    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda fmt, path, images: real(fmt, path, images) + 3e-4)
    out = tmp_path / "model.pt"
    _fails(["--checkpoints", str(run_dir / "*_fold1.pth"), "--format", "torchscript", "--out", str(out)],
           out, "differ from PyTorch", "nothing written")
