"""cxr-synth: determinism, file formats, planted label structure, anatomy and findings, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.cli.synth import main
from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8
from cxr_fast.synth import write as synth
from tests.helpers import assert_user_error

L = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
SMALL = {"n_train": 40, "n_test": 12, "size": 64, "seed": 3, "progress": False}


def _labels(*names: str) -> np.ndarray:
    row = np.zeros(len(CHEXPERT_LABELS), dtype=np.int8)
    for n in names:
        row[L[n]] = 1
    row[L["No Finding"]] = int(not names)
    return row


def _render(seed: int, *names: str, size: int = 128) -> np.ndarray:
    return synth.render(_labels(*names), synth.image_rng(seed, "train", 0), size)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth.generate(out, workers=1, **SMALL)
    return out


def test_deterministic_across_runs_and_worker_counts(small, tmp_path):
    synth.generate(tmp_path / "again", workers=2, **SMALL)
    a, b = _files(small), _files(tmp_path / "again")
    assert a.keys() == b.keys() and len(a) == SMALL["n_train"] + SMALL["n_test"] + 3
    assert [k for k in a if a[k] != b[k]] == []
    synth.generate(tmp_path / "other", workers=1, **{**SMALL, "seed": 4})
    assert (tmp_path / "other" / "train" / "00000.png").read_bytes() != a["train/00000.png"]


def test_csv_format_and_names(small):
    for csv, folder, n in (("train.csv", "train", SMALL["n_train"]), ("test_labels.csv", "test", SMALL["n_test"])):
        df = pd.read_csv(small / csv)
        assert list(df.columns) == ["Image_name", *CHEXPERT_LABELS] and len(df) == n
        assert set(np.unique(df[CHEXPERT_LABELS].values)) <= {0, 1}
        assert list(df.Image_name) == sorted(p.name for p in (small / folder).iterdir())
        others = df[[c for c in CHEXPERT_LABELS if c != "No Finding"]].values.sum(1)
        assert (df["No Finding"].values == (others == 0)).all()


def test_images_match_regenerated_renders(small):
    """Each file is the render of its (seed, split, index) and its CSV row: the dataset checks itself."""
    df = pd.read_csv(small / "test_labels.csv")
    for i in (0, 7):
        want = np.rint(synth.render(df.iloc[i, 1:].values, synth.image_rng(3, "test", i), 64) * 255)
        got = np.asarray(Image.open(small / "test" / df.Image_name[i]))
        assert got.dtype == np.uint8 and got.shape == (64, 64)
        assert np.array_equal(got, want.astype(np.uint8))


def test_couplings_json_records_planted_structure(small):
    meta = json.loads((small / "couplings.json").read_text())
    assert meta["labels"] == CHEXPERT_LABELS and meta["generator"]["seed"] == 3
    assert meta["faint"][0]["label"] == "Pneumonia" and meta["faint"][0]["partner"] == "Consolidation"
    assert meta["faint"][0]["p_partner_given_label"] > 0.8
    assert meta["exclusive"]["label"] == "No Finding" and len(meta["exclusive"]["excludes"]) == 13
    assert all(pair["lift"] > 1.5 for pair in meta["cooccur"])
    train = pd.read_csv(small / "train.csv")
    assert meta["sample_prevalence"]["Edema"] == round(float(train["Edema"].mean()), 4)


def test_label_sampler_plants_cooccurrence():
    y = synth.sample_labels(5000, np.random.default_rng(0)).astype(bool)
    assert y.shape == (5000, 14)

    def p(b, given=None):
        rows = y[:, L[given]] if given else slice(None)
        return y[rows, L[b]].mean()

    assert p("Pleural Effusion", "Edema") > 2.5 * p("Pleural Effusion")
    assert p("Cardiomegaly", "Edema") > 2.5 * p("Cardiomegaly")
    assert p("Edema", "Cardiomegaly") > 2.5 * p("Edema")
    assert p("Consolidation", "Pneumonia") > 0.85
    others = np.delete(y, L["No Finding"], axis=1).any(1)
    assert (y[:, L["No Finding"]] == ~others).all()
    prev = y.mean(0)
    assert prev.min() > 0.01 and prev.min() < 0.04 and 0.3 < prev.max() < 0.45


def test_bit_depths_and_formats(tmp_path):
    kw = {"n_train": 3, "n_test": 1, "size": 64, "workers": 1, "progress": False}
    synth.generate(tmp_path / "p16", bit_depth=16, **kw)
    with Image.open(tmp_path / "p16" / "train" / "00000.png") as im:
        assert im.mode == "I;16"
        a = np.asarray(im).astype(np.int64)
    assert a.max() - a.min() > 60000 and (a % 256).any()  # the full 16-bit range, not 8-bit values scaled up
    arr, info = read_gray8(tmp_path / "p16" / "train" / "00000.png")  # the package's own reader accepts it
    assert info.bit_depth == 16 and arr.shape == (64, 64) and arr.max() == 255
    synth.generate(tmp_path / "j8", fmt="jpg", **kw)
    with Image.open(tmp_path / "j8" / "test" / "00000.jpg") as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (64, 64)
    assert pd.read_csv(tmp_path / "j8" / "train.csv").Image_name[0] == "00000.jpg"
    with pytest.raises(UserError, match="jpg"):
        synth.generate(tmp_path / "bad", fmt="jpg", bit_depth=16, **kw)


def test_images_look_like_chest_radiographs():
    n = 128
    for seed in range(4):
        img = _render(seed, size=n)
        band = slice(int(0.38 * n), int(0.48 * n))
        right_lung, left_lung = img[band, int(0.25 * n):int(0.33 * n)], img[band, int(0.67 * n):int(0.75 * n)]
        mediastinum = img[band, int(0.47 * n):int(0.53 * n)]
        assert right_lung.mean() + 0.15 < mediastinum.mean() and left_lung.mean() + 0.15 < mediastinum.mean()
        assert img[: n // 10, :n // 10].mean() < 0.15  # air above the shoulder
        assert np.corrcoef(img[:, :-1].ravel(), img[:, 1:].ravel())[0, 1] > 0.95  # smooth, not noise


def _run_length(profile: np.ndarray, threshold: float) -> int:
    """Length of the above-threshold run through the centre column (the heart/mediastinum shadow)."""
    above, c = profile > threshold, len(profile) // 2
    left = c - np.argmin(above[c::-1]) if not above[c::-1].all() else 0
    right = c + np.argmin(above[c:]) if not above[c:].all() else len(profile)
    return int(right - left)


def test_cardiomegaly_widens_heart_shadow():
    n = 128
    rows = slice(int(0.54 * n), int(0.62 * n))  # heart level
    for seed in range(4):
        normal, big = _render(seed, size=n)[rows].mean(0), _render(seed, "Cardiomegaly", size=n)[rows].mean(0)
        lo, hi = np.percentile(normal[n // 8:-n // 8], [10, 90])  # lung vs heart brightness
        w_normal, w_big = _run_length(normal, (lo + hi) / 2), _run_length(big, (lo + hi) / 2)
        assert 0.15 * n < w_normal < 0.35 * n and w_big > 1.3 * w_normal, (w_normal, w_big)


def test_every_finding_changes_the_image_and_the_faint_one_barely():
    diff = {}
    for name in CHEXPERT_LABELS:
        if name != "No Finding":
            diff[name] = np.mean([np.abs(_render(s, name, size=64) - _render(s, size=64)).mean() for s in range(3)])
    assert min(diff.values()) > 0.0005, diff
    strong = np.median(list(diff.values()))
    assert diff["Pneumonia"] < 0.25 * diff["Consolidation"] and diff["Pneumonia"] < 0.25 * strong


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--n_train", "10", "--n_test", "2", "--size", "48", "--workers", "1", "--no_progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for name in ("train.csv", "test_labels.csv", "couplings.json", "train", "test"):
        assert str(out / name) in printed
    assert_user_error(lambda: main(args), "--overwrite")  # refuses to overwrite an existing dataset
    assert main([*args[:3], "5", *args[4:], "--overwrite"]) == 0  # fewer images: stale files are removed
    assert len(list((out / "train").iterdir())) == 5 and len(pd.read_csv(out / "train.csv")) == 5


@pytest.mark.parametrize("bad", [
    ["--format", "jpg", "--bit_depth", "16"], ["--format", "bmp"], ["--bit_depth", "12"], ["--size", "8"],
    ["--n_train", "0"], ["--workers", "0"], ["--seed", "-1"],
])
def test_cli_bad_args_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "x"), "--no_progress", *bad])
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x" / "train.csv").exists()
