"""cxr-explain: Grad-CAM of the refined logits lands on the finding (a number, on a model trained in the test), the
outputs have the promised shapes, and bad input is one line with nothing left behind."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_fast.cli import explain as explain_cli
from tests.helpers import assert_user_error

from .conftest import LABELS, make_checkpoint

FINDINGS = ["Left square", "Right square"]  # label k: a bright square somewhere in the left (k=0) / right half
NET, ORIG_H, ORIG_W = 64, 96, 120  # network input; the saved radiographs are larger and not square
STEPS, SEED = 60, 1  # seeds 0-5 at 60 or 80 steps all passed the check below (mean fraction 0.75-0.87)


def _draw(rng, n: int, h: int, w: int):
    """n noisy images (n, h, w) uint8 with labels (n, 2): each finding present with p = 0.5, a bright square of a
    sixth of the image's side anywhere in the outer three quarters of its half."""
    imgs = rng.normal(90, 20, (n, h, w))
    y = rng.random((n, 2)) < 0.5
    sh, sw = max(2, h // 6), max(2, w // 6)
    for i in range(n):
        for k in range(2):
            if y[i, k]:
                r = rng.integers(0, h - sh)
                c = rng.integers(0, w * 3 // 8 - sw) + (w * 5 // 8 if k else 0)  # well inside its half
                imgs[i, r:r + sh, c:c + sw] = 230
    return np.clip(imgs, 0, 255).astype(np.uint8), y.astype(np.float32)


def _train_locator(path: Path) -> None:
    """test_resnet + refiner trained for STEPS steps at 64 px on CPU (a few seconds), saved as a fold checkpoint."""
    from sklearn.metrics import roc_auc_score

    from cxr_fast.model import CXRClassifier
    from cxr_fast.model.backbone import create_backbone
    from cxr_fast.model.normalize import normalize
    from cxr_fast.model.refiner import LabelGraphRefiner
    from cxr_fast.train.checkpoint import best_checkpoint, save_atomic

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = CXRClassifier(create_backbone("test_resnet", 2, in_chans=1, pretrained=False, drop_rate=0.0),
                          LabelGraphRefiner(2, alpha=0.3))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(STEPS):
        x, y = _draw(rng, 16, NET, NET)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(normalize(torch.from_numpy(x)[:, None])),
                                                                    torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _draw(rng, 64, NET, NET)
    with torch.no_grad():
        p = torch.sigmoid(model(normalize(torch.from_numpy(x)[:, None]))).numpy()
    assert min(roc_auc_score(y[:, k], p[:, k]) for k in range(2)) > 0.9  # it learned to find them
    cfg = {"model": "test_resnet", "img_size": NET, "in_chans": 1, "drop_rate": 0.0, "refiner_alpha": 0.3}
    save_atomic(best_checkpoint(model.backbone.state_dict(), model.refiner.state_dict(), labels=FINDINGS, config=cfg,
                                fold=1, epoch=0, val_auc=1.0, val_auc_per_label={}), path)


def test_gradcam_mass_on_the_finding(tmp_path):
    _train_locator(tmp_path / "test_resnet_fold1.pth")
    images = tmp_path / "images"
    images.mkdir()
    x, y = _draw(np.random.default_rng(SEED + 100), 24, ORIG_H, ORIG_W)
    single = [i for i in range(len(x)) if y[i].sum() == 1]  # one finding: its map has one place to go
    for i in single:
        Image.fromarray(x[i]).save(images / f"case{i:02d}.png")
    out = tmp_path / "cam"
    assert explain_cli.main(["--checkpoint", str(tmp_path / "test_resnet_fold1.pth"), "--images", str(images),
                             "--out", str(out), "--device", "cpu"]) == 0
    fractions = []
    for i in single:
        k = int(np.argmax(y[i]))
        cam = np.load(out / f"case{i:02d}_{FINDINGS[k].replace(' ', '_')}.npy")
        assert cam.shape == (ORIG_H, ORIG_W) and cam.dtype == np.float32
        half = cam[:, :ORIG_W // 2] if k == 0 else cam[:, ORIG_W // 2:]
        fractions.append(half.sum() / max(cam.sum(), 1e-9))
    fractions = np.array(fractions)
    # 0.5 would be no localisation; a perfect 2x2 feature map, upsampled bilinearly, reaches about 0.88
    assert len(fractions) >= 8 and fractions.mean() > 0.7 and np.mean(fractions > 0.6) >= 0.8, fractions.round(2)


@pytest.fixture(scope="module")
def explained(run_dir, test_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "out"
    files = [str(test_images / "img 0.png"), str(test_images / "deep16.png"), str(test_images / "photo.jpg")]
    assert explain_cli.main(["--checkpoint", str(run_dir / "test_resnet_fold1.pth"), "--images", *files,
                             "--labels", "Pleural Effusion,Atelectasis", "--method", "gradcam++", "--out", str(out),
                             "--device", "cpu"]) == 0
    return out


def test_outputs(explained, test_images):
    out = explained
    for stem, name in [("img_0", "img 0.png"), ("deep16", "deep16.png"), ("photo", "photo.jpg")]:
        w, h = Image.open(test_images / name).size
        for label in ("Pleural_Effusion", "Atelectasis"):
            cam = np.load(out / f"{stem}_{label}.npy")
            assert cam.shape == (h, w) and cam.dtype == np.float32
            assert cam.min() >= 0.0 and cam.max() <= 1.0
            png = Image.open(out / f"{stem}_{label}.png")
            assert png.size == (w, h) and png.mode == "RGB"
        assert not (out / f"{stem}_No_Finding.npy").exists()
    page = (out / "index.html").read_text()
    assert len(re.findall(r"<img ", page)) == 6 and "p = 0." in page and "deep16.png" in page
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_eigencam_all_labels(run_dir, test_images, tmp_path):
    out = tmp_path / "eig"
    assert explain_cli.main(["--checkpoint", str(run_dir / "test_resnet_fold2.pth"), "--images",
                             str(test_images / "img 1.png"), "--method", "eigencam", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"img_1_{lb.replace(' ', '_')}.npy" for lb in LABELS)


def _fails(argv, out: Path, *needles):
    assert_user_error(lambda: explain_cli.main(argv), *needles)
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs(run_dir, test_images, tmp_path):
    ckpt = str(run_dir / "test_resnet_fold1.pth")
    out = tmp_path / "out"
    img = str(test_images / "img 0.png")
    _fails(["--checkpoint", ckpt, "--images", img, "--labels", "Edema", "--out", str(out)], out, "Edema")
    _fails(["--checkpoint", ckpt, "--images", str(tmp_path / "nope.png"), "--out", str(out)], out, "nope.png")
    vit = make_checkpoint(tmp_path / "vit" / "test_vit_fold1.pth", seed=1, model="test_vit", img_size=224)
    _fails(["--checkpoint", str(vit), "--images", img, "--out", str(out)], out, "test_vit", "CNN")
    # an undecodable image after a good one: nothing of the good one is left either
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes((test_images / "img 0.png").read_bytes())
    (bad / "b.png").write_bytes(b"\x89PNG not really")
    _fails(["--checkpoint", ckpt, "--images", str(bad), "--out", str(out)], out, "b.png")


def test_dicom_input(run_dir, tmp_path):
    """DICOM goes through the training reader; the map has the DICOM's own size."""
    pytest.importorskip("pydicom")
    dcm = Path(__file__).parents[1] / "assets" / "Fake_MONOHR1.dcm"
    out = tmp_path / "dcm"
    assert explain_cli.main(["--checkpoint", str(run_dir / "test_resnet_fold1.pth"), "--images", str(dcm),
                             "--labels", "No Finding", "--out", str(out), "--device", "cpu"]) == 0
    cam = np.load(out / "Fake_MONOHR1_No_Finding.npy")
    assert cam.shape == (1024, 1024) and 0.0 <= cam.min() and cam.max() <= 1.0
