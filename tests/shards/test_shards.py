"""cxr-shard and the shard format: write, read back (webdataset, DALI, our helpers), verify, and fail loudly."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_fast.cli.shard import main
from cxr_fast.data.table import read_table
from cxr_fast.errors import UserError
from cxr_fast.shards import format as fmt
from cxr_fast.shards import read as rd
from cxr_fast.shards.verify import verify_shards
from cxr_fast.shards.writer import write_shards, write_test_shards
from tests.helpers import ODD_NAMES, assert_user_error
from tests.helpers import SHARD_LABELS as LABELS
from tests.helpers import make_shard_data as make_data
from tests.helpers import shard_cli_args as cli_args
from tests.helpers import shard_pixels as _pixels


def build(root: Path, out: Path, **kw) -> dict:
    kw = {"uncertain": "ignore", "missing": "ignore", "samples_per_shard": 7, "workers": 1, "progress": False,
          "log": None, **kw}
    return write_shards(root / "train.csv", root / "train", out, test_dir=root / "test", **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_data(tmp_path_factory.mktemp("data"))
    out = root / "shards"
    return root, out, build(root, out)


def _tars(out: Path, manifest: dict, splits=None) -> list[Path]:
    return [out / s["tar"] for s in manifest["shards"] if splits is None or s["split"] in splits]


# ------------------------------------------------------------------------------------------------ round trip


def test_roundtrip_webdataset(built):
    import webdataset as wds

    root, out, man = built
    table = read_table(root / "train.csv", labels=LABELS, uncertain="ignore", missing="ignore")
    folds = pd.read_csv(out / "folds.csv")
    seen = Counter()
    ds = wds.WebDataset([str(t) for t in _tars(out, man)], shardshuffle=False, empty_check=False)
    for s in ds:
        meta = json.loads(s["json"])
        index = int(np.frombuffer(s["index"], "<i8")[0])
        assert s["__key__"] == fmt.sample_key(meta["split"], index)
        img = Image.open(io.BytesIO(s["jpg"]))
        assert (img.format, img.mode, img.size) == ("JPEG", "L", (64, 64))
        assert (meta["width"], meta["height"], meta["bit_depth"]) == (64, 64, 8)
        if meta["split"] == "test":
            assert meta["name"] == f"t{index:02d}.png" and meta["fold"] is None
            assert np.isnan(np.frombuffer(s["labels"], "<f4")).all()
            seen[("test", index)] += 1
            continue
        assert meta["name"] == table.names[index]
        assert meta["split"] == f"fold{meta['fold']}" and folds["fold"][index] == meta["fold"]
        assert s["labels"] == table.labels[index].astype("<f4").tobytes()  # byte-exact, NaN included
        if meta["name"].endswith(".png"):  # JPEG q95 of the same picture
            assert np.abs(np.asarray(img, np.int16) - _pixels(index)).mean() < 3
        seen[("train", index)] += 1
    assert np.isnan(table.labels).any()
    assert seen == Counter({("train", i): 1 for i in range(40)} | {("test", j): 1 for j in range(6)})
    assert sum(man["counts"][f"fold{k}"]["samples"] for k in (1, 2, 3)) == 40 == man["totals"]["train_rows"]


def test_roundtrip_dali_cpu(built):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    root, out, man = built
    table = read_table(root / "train.csv", labels=LABELS, uncertain="ignore", missing="ignore")
    folds = [f"fold{k}" for k in (1, 2, 3)]
    pairs = rd.split_shards(out, man, "fold1") + rd.split_shards(out, man, "fold2") + \
        rd.split_shards(out, man, "fold3")

    @dali.pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        img, lab, idx, meta = fn.readers.webdataset(
            paths=[str(t) for t, _ in pairs], index_paths=[str(i) for _, i in pairs],
            ext=["jpg", "labels", "index", "json"], dtypes=[types.UINT8, types.FLOAT, types.INT64, types.UINT8],
            missing_component_behavior="error", pad_last_batch=True, name="r")
        return fn.decoders.image(img, device="cpu", output_type=types.GRAY), lab, idx, meta

    p = pipe()
    p.build()
    n = p.epoch_size("r")
    assert n == 40
    got = {}
    for _ in range((n + 7) // 8):
        imgs, labs, idxs, metas = p.run()
        for b in range(len(idxs)):
            i = int(np.asarray(idxs[b])[0])
            meta = json.loads(bytes(np.asarray(metas[b])))
            assert meta["split"] in folds and meta["name"] == table.names[i]
            assert np.asarray(imgs[b]).shape == (64, 64, 1)
            assert np.asarray(labs[b]).astype("<f4").tobytes() == table.labels[i].astype("<f4").tobytes()
            got[i] = got.get(i, 0) + 1
    assert set(got) == set(range(40))  # padding repeats the last sample only
    # the order DALI reads equals the order sample_set promises to the loaders
    ss = rd.sample_set(out, man, folds)
    assert [t for t, _ in ss.shards] == [t for t, _ in pairs] and len(ss) == 40
    np.testing.assert_array_equal(ss.labels, table.labels[ss.index])


def test_samples_csv_and_sample_set_follow_tar_order(built):
    import webdataset as wds

    _, out, man = built
    for splits in (["fold2", "fold1"], ["test"]):
        ss = rd.sample_set(out, man, splits)
        order = [int(np.frombuffer(s["index"], "<i8")[0])
                 for s in wds.WebDataset([str(t) for t, _ in ss.shards], shardshuffle=False, empty_check=False)]
        assert order == ss.index.tolist()
        assert ss.image_hint == (64, 64) and ss.labels.dtype == np.float32
    df = rd.read_samples(out)
    assert set(ODD_NAMES) <= set(df["name"])
    assert df.loc[df["split"] == "test", "fold"].isna().all()


def test_idx_equals_wds2idx(built, tmp_path, monkeypatch):
    import wds2idx

    _, out, man = built
    for tar in _tars(out, man):
        ours = tar.with_suffix(".idx").read_bytes()
        with wds2idx.IndexCreator(str(tar), str(tmp_path / "gnu.idx"), verbose=False) as ic:  # GNU tar path
            ic.create_index()
        assert (tmp_path / "gnu.idx").read_bytes() == ours, tar.name
    monkeypatch.setattr(wds2idx, "which", lambda _: None)  # its tarfile fallback must agree too
    tar = _tars(out, man)[0]
    with wds2idx.IndexCreator(str(tar), str(tmp_path / "py.idx"), verbose=False) as ic:
        ic.create_index()
    assert (tmp_path / "py.idx").read_bytes() == tar.with_suffix(".idx").read_bytes()
    assert fmt.index_text(fmt.tar_members(tar)).encode() == tar.with_suffix(".idx").read_bytes()


def test_jpeg_is_baseline_8bit_gray(built):
    _, out, man = built
    import tarfile

    with tarfile.open(_tars(out, man)[0]) as tf:
        data = next(tf.extractfile(m).read() for m in tf if m.name.endswith(".jpg"))
    sof = data.find(b"\xff\xc0")  # SOF0 = baseline DCT
    assert sof > 0 and b"\xff\xc2" not in data[:sof]  # no progressive SOF2 before it
    precision, components = data[sof + 4], data[sof + 9]
    assert (precision, components) == (8, 1)


def test_verify_clean_output(built, capsys):
    _, out, _ = built
    assert main(["verify", str(out), "--workers", "1"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


# -------------------------------------------------------------------------------------- format details


def test_resize_longest_side_never_upscale(tmp_path):
    root = make_data(tmp_path, n=6, n_test=1, size=32)
    Image.fromarray(_pixels(0, 200, 300)).save(root / "train" / ODD_NAMES[1])  # 300 wide x 200 high
    man = build(root, tmp_path / "out", resize=100, folds=2, image_format="png")
    df = rd.read_samples(tmp_path / "out")
    sizes = {}
    import webdataset as wds

    for s in wds.WebDataset([str(t) for t in _tars(tmp_path / "out", man)], shardshuffle=False, empty_check=False):
        sizes[json.loads(s["json"])["name"]] = Image.open(io.BytesIO(s["png"])).size
    assert sizes[ODD_NAMES[1]] == (100, 67)
    assert sizes[ODD_NAMES[0]] == (32, 32)  # never upscaled
    assert man["image"]["max_width"] == 100 and len(df) == 7


def test_16bit_png_is_windowed_not_truncated(tmp_path):
    root = make_data(tmp_path, n=6, n_test=1)
    narrow = (1000 + _pixels(5).astype(np.uint16)).astype(np.uint16)  # values 1000..1239: dark if truncated
    Image.fromarray(narrow).save(root / "train" / "p5/img_005.png")
    man = build(root, tmp_path / "out", folds=2, image_format="png")
    import webdataset as wds

    for s in wds.WebDataset([str(t) for t in _tars(tmp_path / "out", man)], shardshuffle=False, empty_check=False):
        meta = json.loads(s["json"])
        if meta["name"] == "p5/img_005.png":
            a = np.asarray(Image.open(io.BytesIO(s["png"])))
            assert meta["bit_depth"] == 16 and a.dtype == np.uint8
            assert (a.min(), a.max()) == (0, 255)
            lo, hi = narrow.min(), narrow.max()
            np.testing.assert_array_equal(a, np.rint((narrow - lo) * (255.0 / (hi - lo))).astype(np.uint8))
            break
    else:
        pytest.fail("16-bit sample not found")


def test_group_col_keeps_groups_in_one_fold(tmp_path):
    root = make_data(tmp_path, n=30, n_test=1)
    build(root, tmp_path / "out", group_col="Patient")
    df = rd.read_samples(tmp_path / "out")
    groups = pd.read_csv(root / "train.csv")["Patient"].to_numpy()
    per_group = df[df["split"] != "test"].assign(g=lambda d: groups[d["index"]]).groupby("g")["fold"].nunique()
    assert (per_group == 1).all() and len(per_group) == 10


def test_deterministic_and_independent_of_workers(tmp_path):
    root = make_data(tmp_path, n=24, n_test=3)
    m1 = build(root, tmp_path / "a", workers=1)
    m2 = build(root, tmp_path / "b", workers=2)
    assert m1["shards"] == m2["shards"]  # sha256 of every tar and idx
    for s in m1["shards"]:
        assert (tmp_path / "a" / s["tar"]).read_bytes() == (tmp_path / "b" / s["tar"]).read_bytes()
    assert (tmp_path / "a" / "samples.csv").read_bytes() == (tmp_path / "b" / "samples.csv").read_bytes()


def test_test_only_shards(tmp_path):
    root = make_data(tmp_path, n=3, n_test=5)
    man = write_test_shards(root / "test", tmp_path / "out", LABELS, samples_per_shard=2, workers=1, progress=False,
                            log=None)
    assert man["folds"] == 0 and rd.manifest_splits(man) == ["test"] and len(man["shards"]) == 3
    ss = rd.sample_set(tmp_path / "out", man, ["test"])
    assert sorted(ss.index.tolist()) == list(range(5)) and np.isnan(ss.labels).all()
    assert verify_shards(tmp_path / "out", workers=1)[0] == []


# -------------------------------------------------------------------------------- reruns, atomicity


def _state(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir())}


def test_rerun_is_noop_and_changed_args_refused(tmp_path, capsys):
    root = make_data(tmp_path, n=20, n_test=2)
    out = tmp_path / "out"
    assert main(cli_args(root, out)) == 0
    before = _state(out)
    time.sleep(0.01)
    assert main(cli_args(root, out)) == 0
    assert "up to date" in capsys.readouterr().out
    assert _state(out) == before

    assert_user_error(lambda: main(cli_args(root, out, "--seed", "7")), "seed", "--overwrite")
    assert _state(out) == before

    # --overwrite replaces everything: 20 rows in shards of 3 make more tars than before, none left over
    assert main(cli_args(root, out, "--seed", "7", "--samples_per_shard", "3", "--overwrite")) == 0
    man = rd.load_manifest(out)
    assert man["seed"] == 7
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == sorted(s["tar"] for s in man["shards"])
    assert verify_shards(out, workers=1)[0] == []


def test_kill_9_leaves_no_manifest_and_rerun_completes(tmp_path):
    root = make_data(tmp_path, n=120, n_test=0, size=96)
    shutil.rmtree(root / "test")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cxr_fast.cli.shard", "--train_csv", str(root / "train.csv"), "--train_dir",
           str(root / "train"), "--out", str(out), "--samples_per_shard", "1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        # kill once shards are being written: the most output an interrupted run can leave
        if out.is_dir() and len([p for p in out.iterdir() if ".tar" in p.name]) >= 5:
            break
        time.sleep(0.002)
    assert proc.poll() is None, f"cxr-shard finished before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert [p for p in out.iterdir() if p.suffix == ".tar"]  # it did leave shards behind
    with pytest.raises(UserError, match="manifest.json: not found"):
        rd.load_manifest(out)
    logs = []
    man = write_shards(root / "train.csv", root / "train", out, samples_per_shard=1, workers=1, progress=False,
                       log=logs.append)
    assert any("incomplete earlier run" in m for m in logs), logs
    assert verify_shards(out, workers=1)[0] == []
    assert sorted(p.name for p in out.iterdir() if ".tar" in p.name) == sorted(s["tar"] for s in man["shards"])
    assert not list(out.glob("*.tmp")) and not (out / fmt.SPOOL_DIR).exists()


# ------------------------------------------------------------------------------------------- bad input


def _break(root: Path, kind: str) -> str:
    name = "p4/img_004.png"
    p = root / "train" / name
    if kind == "missing":
        p.unlink()
    elif kind == "zero-byte":
        p.write_bytes(b"")
    else:  # corrupt: a valid header, then garbage (the decoder fails mid-way)
        data = bytearray(p.read_bytes())
        data[60:] = np.random.default_rng(0).integers(0, 256, len(data) - 60, dtype=np.uint8).tobytes()
        p.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("kind", ["missing", "zero-byte", "corrupt"])
def test_bad_image_stops_before_writing(tmp_path, capsys, kind):
    root = make_data(tmp_path, n=12, n_test=1)
    name = _break(root, kind)
    out = tmp_path / "out"
    assert_user_error(lambda: main(cli_args(root, out, "--folds", "2")), "1 of 13 images", name, "--skip_bad")
    assert not out.exists()

    assert main(cli_args(root, out, "--folds", "2", "--skip_bad")) == 0
    man = rd.load_manifest(out)
    assert [(r["name"], r["row"], r["split"]) for r in man["rejected"]] == [(name, 4, "train")]
    t = man["totals"]
    assert t["train_written"] + t["train_rejected"] == t["train_rows"] == 12 and t["train_written"] == 11
    assert name not in pd.read_csv(out / "folds.csv")["Image_name"].tolist()
    assert 4 not in rd.read_samples(out)["index"].tolist()
    assert verify_shards(out, workers=1)[0] == []


def test_bad_inputs_counted_and_listed(tmp_path, capsys):
    root = make_data(tmp_path, n=12, n_test=2)
    (root / "train" / "p4/img_004.png").unlink()
    (root / "train" / "p5/img_005.png").write_bytes(b"")
    (root / "test" / "t01.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        main(cli_args(root, tmp_path / "out", "--folds", "2"))
    err = capsys.readouterr().err
    assert "3 of 14 images" in err and "t01.png (test image)" in err and "row 5" in err


# ------------------------------------------------------------------------------------ verify, version


def test_verify_catches_tampered_image(built, tmp_path, capsys):
    _, src, man = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shard = man["shards"][1]
    line = (out / shard["idx"]).read_text().splitlines()[1].split()
    off, size = next((int(line[i + 1]), int(line[i + 2])) for i in range(0, len(line), 4) if line[i] == "jpg")
    data = bytearray((out / shard["tar"]).read_bytes())
    data[off + size // 2: off + size // 2 + 64] = bytes(64)
    (out / shard["tar"]).write_bytes(bytes(data))
    assert main(["verify", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{shard['tar']}: sha256 differs" in err


def test_verify_names_sample_with_wrong_labels(built, tmp_path):
    """A tar edited consistently (sha256 updated) still fails: its labels disagree with samples.csv."""
    _, src, man = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shard = man["shards"][0]
    line = (out / shard["idx"]).read_text().splitlines()[1].split()
    off = next(int(line[i + 1]) for i in range(0, len(line), 4) if line[i] == "labels")
    key = line[3].split(".")[0]
    data = bytearray((out / shard["tar"]).read_bytes())
    data[off: off + 4] = np.array([0.5], "<f4").tobytes()
    (out / shard["tar"]).write_bytes(bytes(data))
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["sha256"] = __import__("hashlib").sha256(bytes(data)).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    problems, _ = verify_shards(out, workers=1)
    assert len(problems) == 1 and f"sample {key}" in problems[0] and "labels differ" in problems[0]


def test_unknown_manifest_version_refused(built, tmp_path, capsys):
    root, src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    m = json.loads((out / "manifest.json").read_text())
    m["version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"manifest\.json: shard format 'cxr_fast-shards' version 99"):
        rd.load_manifest(out)
    assert_user_error(lambda: main(["verify", str(out)]), "version 99")
    with pytest.raises(UserError, match="--overwrite"):
        build(root, out)
