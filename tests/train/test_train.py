"""cxr-train / cxr-predict / cxr-couplings end to end on the PIL pipeline, with a tiny timm model."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_fast.cli import couplings as couplings_cli
from cxr_fast.cli import predict as predict_cli
from cxr_fast.cli import train as train_cli
from cxr_fast.data.table import CHEXPERT_LABELS
from tests.helpers import assert_user_error
from tests.helpers import train_pil as _train


def test_outputs_and_checkpoint_keys(pil_run):
    data, out = pil_run
    train = pd.read_csv(data / "train.csv")
    for k in (1, 2):
        ckpt = torch.load(out / f"test_resnet_fold{k}.pth", map_location="cpu", weights_only=True)
        assert {"model", "refiner", "labels", "config", "fold", "epoch", "val_auc", "val_auc_per_label"} <= set(ckpt)
        assert ckpt["labels"] == CHEXPERT_LABELS and ckpt["fold"] == k and ckpt["epoch"] in (1, 2)
        a = ckpt["refiner"]["A"]
        assert a.shape == (14, 14) and torch.all(torch.diagonal(a) == 0)
        assert ckpt["config"]["model"] == "test_resnet" and ckpt["config"]["in_chans"] == 1
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["Image_name"]) == sorted(train["Image_name"])  # every training row exactly once
    assert list(oof.columns) == ["Image_name", "fold", *CHEXPERT_LABELS]
    folds = pd.read_csv(out / "folds.csv")
    assert dict(zip(folds["Image_name"], folds["fold"])) == dict(zip(oof["Image_name"], oof["fold"]))
    probs = oof[CHEXPERT_LABELS].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    for f in summary["folds"]:  # the fold summary describes the saved best checkpoint
        ckpt = torch.load(out / f"test_resnet_fold{f['fold']}.pth", weights_only=True)
        assert f["best_epoch"] == ckpt["epoch"] and f["val_auc_per_label"] == ckpt["val_auc_per_label"]
        a = ckpt["refiner"]["A"]
        assert f["refiner_sparsity"] == pytest.approx((a[~torch.eye(14, dtype=torch.bool)] == 0).float().mean())
    assert summary["mean_auc"] == pytest.approx(np.mean([f["val_auc"] for f in summary["folds"]]))
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["fold"], r["epoch"]) for r in lines] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["img_per_s"] > 0 and r["data_wait_s"] >= 0 for r in lines)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["labels"] == CHEXPERT_LABELS and cfg["tta"] and cfg["ema"]


def test_oof_auc_matches_fold_checkpoints(pil_run):
    """The OOF probabilities are the best epoch's validation predictions: recomputing each fold's macro-AUC from
    oof.csv gives the AUC stored in that fold's checkpoint."""
    from cxr_fast.evaluate.metrics import macro_auc

    data, out = pil_run
    oof = pd.read_csv(out / "oof.csv")
    truth = pd.read_csv(data / "train.csv").set_index("Image_name").loc[oof["Image_name"], CHEXPERT_LABELS]
    for k in (1, 2):
        m = (oof["fold"] == k).to_numpy()
        auc, _, _ = macro_auc(truth.to_numpy(np.float32)[m], oof[CHEXPERT_LABELS].to_numpy()[m], CHEXPERT_LABELS)
        ckpt = torch.load(out / f"test_resnet_fold{k}.pth", weights_only=True)
        assert auc == pytest.approx(ckpt["val_auc"], abs=1e-4)


def test_submission_and_predict_agree(pil_run, tmp_path):
    data, out = pil_run
    sub = pd.read_csv(out / "submission.csv")
    test_names = sorted(p.name for p in (data / "test").iterdir())
    assert sub["Image_name"].tolist() == test_names
    assert list(sub.columns) == ["Image_name", *CHEXPERT_LABELS]
    rc = predict_cli.main(["--checkpoints", str(out / "test_resnet_fold*.pth"), "--test_dir", str(data / "test"),
                           "--out_csv", str(tmp_path / "p.csv"), "--num_workers", "0", "--no-progress",
                           "--device", "cpu"])
    assert rc == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    assert pred["Image_name"].tolist() == test_names
    np.testing.assert_allclose(pred[CHEXPERT_LABELS].to_numpy(), sub[CHEXPERT_LABELS].to_numpy(), atol=2e-6)


def test_predict_is_the_mean_of_single_folds_with_tta(pil_run, tmp_path):
    """Fold ensemble = arithmetic mean of each fold's probabilities; TTA changes the numbers (flip is applied)."""
    data, out = pil_run
    common = ["--test_dir", str(data / "test"), "--num_workers", "0", "--no-progress", "--device", "cpu"]
    for k in (1, 2):
        predict_cli.main(["--checkpoints", str(out / f"test_resnet_fold{k}.pth"), "--out_csv",
                          str(tmp_path / f"f{k}.csv"), *common])
    predict_cli.main(["--checkpoints", str(out / "test_resnet_fold1.pth"), "--out_csv", str(tmp_path / "nt.csv"),
                      "--no-tta", *common])
    f1, f2 = (pd.read_csv(tmp_path / f"f{k}.csv")[CHEXPERT_LABELS].to_numpy() for k in (1, 2))
    sub = pd.read_csv(out / "submission.csv")[CHEXPERT_LABELS].to_numpy()
    np.testing.assert_allclose(sub, (f1 + f2) / 2, atol=2e-6)
    assert not np.allclose(pd.read_csv(tmp_path / "nt.csv")[CHEXPERT_LABELS].to_numpy(), f1, atol=1e-7)


def test_seed_readme_snippet_runs_unchanged(pil_run, monkeypatch):
    """The original README's "Visualize Learned Couplings" code, with only the checkpoint path changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    _, out = pil_run
    snippet = f'''
import torch, matplotlib.pyplot as plt
import pandas as pd

ckpt = torch.load("{out}/test_resnet_fold1.pth", map_location="cpu")
A = ckpt["refiner"]["A"].numpy()  # shape (C, C)
labels = [
  'Atelectasis','Cardiomegaly','Consolidation','Edema','Enlarged Cardiomediastinum',
  'Fracture','Lung Lesion','Lung Opacity','No Finding','Pleural Effusion',
  'Pleural Other','Pneumonia','Pneumothorax','Support Devices'
]
plt.imshow(A, cmap="bwr"); plt.colorbar(); plt.xticks(range(len(labels)), labels, rotation=90); plt.yticks(range(len(labels)), labels); plt.title("Learned label couplings (A)"); plt.tight_layout(); plt.show()
import numpy as np
for i, li in enumerate(labels):
    idx = np.argsort(-np.abs(A[i]))
    print(li, "→", [(labels[j], float(A[i,j])) for j in idx[:5] if j!=i])
'''
    exec(compile(snippet, "seed_snippet", "exec"), {})  # noqa: S102 - the seed README's own code, on purpose


def test_couplings_cli(pil_run, tmp_path, capsys):
    _, out = pil_run
    png = tmp_path / "c.png"
    assert couplings_cli.main([str(out / "test_resnet_fold1.pth"), str(out / "test_resnet_fold2.pth"),
                               "--out", str(png), "--top", "3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads(png.with_suffix(".json").read_text())
    a1 = torch.load(out / "test_resnet_fold1.pth", weights_only=True)["refiner"]["A"].numpy()
    a2 = torch.load(out / "test_resnet_fold2.pth", weights_only=True)["refiner"]["A"].numpy()
    np.testing.assert_allclose(np.array(js["A"]), (a1 + a2) / 2, atol=1e-6)
    assert set(js["top"]) == set(CHEXPERT_LABELS) and all(len(v) <= 3 for v in js["top"].values())
    assert "Cardiomegaly →" in capsys.readouterr().out


def test_ablation_flags(synth_data, tmp_path):
    """--no-ema --no-tta --no-refiner: a plain backbone, no refiner in the checkpoint; couplings then refuses."""
    assert _train(synth_data, tmp_path, "--epochs", "1", "--folds_to_run", "2", "--no-ema", "--no-tta",
                  "--no-refiner", "--loss", "bce") == 0
    ckpt = torch.load(tmp_path / "test_resnet_fold2.pth", weights_only=True)
    assert ckpt["refiner"] is None and not ckpt["config"]["ema"] and not ckpt["config"]["tta"]
    assert not (tmp_path / "test_resnet_fold1.pth").exists()
    assert len(pd.read_csv(tmp_path / "oof.csv")) == int((pd.read_csv(tmp_path / "folds.csv")["fold"] == 2).sum())
    assert_user_error(lambda: couplings_cli.main([str(tmp_path / "test_resnet_fold2.pth")]), "refiner")


QUICK_START = """--train_csv /path/train.csv --train_dir /path/train_images --test_dir /path/test_images
  --out_csv ./submission.csv
  --labels "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
  --model tf_efficientnet_b4_ns
  --img_size 380 --epochs 3 --batch_size 24 --lr 2e-4 --weight_decay 1e-4
  --warmup_epochs 1 --folds 3 --seed 42 --loss asl --ema --tta --num_workers 4 --color_jitter"""


def test_seed_quick_start_and_defaults_parse():
    a = train_cli.build_parser().parse_args(shlex.split(QUICK_START))
    assert (a.model, a.img_size, a.epochs, a.batch_size, a.lr, a.folds, a.loss) == (
        "tf_efficientnet_b4_ns", 380, 3, 24, 2e-4, 3, "asl")
    assert a.ema and a.tta and a.color_jitter and not a.no_amp and a.labels.split(",") == CHEXPERT_LABELS
    d = train_cli.build_parser().parse_args([])
    assert (d.out_csv, d.out_dir, d.model, d.img_size, d.epochs, d.batch_size, d.lr, d.weight_decay,
            d.warmup_epochs, d.folds, d.seed, d.label_smooth, d.loss, d.ema, d.tta, d.num_workers, d.color_jitter,
            d.no_amp) == ("./submission.csv", "./outputs", "seresnext101_32x4d", 380, 3, 24, 2e-4, 1e-4, 1, 3, 42,
                          0.0, "asl", True, True, 4, False, False)
    n = train_cli.build_parser().parse_args(["--no-ema", "--no-tta", "--no-refiner", "--no-pretrained"])
    assert not (n.ema or n.tta or n.refiner or n.pretrained)


@pytest.mark.parametrize("bad, needle", [
    (["--labels", "Atelectasis,Nope"], "Nope"),
    (["--folds", "1"], "--folds"),
    (["--folds_to_run", "3"], "--folds_to_run"),
    (["--model", "no_such_model_xyz"], "no_such_model_xyz"),
])
def test_bad_input_exits_2_with_one_line(synth_data, tmp_path, bad, needle):
    assert_user_error(lambda: _train(synth_data, tmp_path, "--epochs", "1", *bad), needle)


def test_zero_sizes_rejected(synth_data, tmp_path):
    for flag in ("--img_size", "--batch_size"):
        with pytest.raises(SystemExit) as e:
            _train(synth_data, tmp_path, flag, "0")
        assert e.value.code == 2
