"""The run logger: metrics.jsonl and TensorBoard are two sinks of the same records. A tiny real run's event files,
read back with tensorboard's EventAccumulator, carry metrics.jsonl's values at its epochs; per-step scalars every
--log_every steps; the coupling heatmap; the config. --no-tensorboard writes no tb/ folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_fast.cli import train as train_cli
from cxr_fast.errors import UserError
from cxr_fast.train import logger
from cxr_fast.train.logger import EPOCH_TAGS, STEP_TAGS, MetricsSink, RunLogger, TensorBoardSink
from tests.helpers import assert_user_error, train_pil

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LOG_EVERY = 2
STEPS_PER_EPOCH = 3  # tb_run: 24 training samples of fold 1, batch 8


def _events(path: Path) -> EventAccumulator:
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _series(ea: EventAccumulator, tag: str) -> tuple[list[int], np.ndarray]:
    events = ea.Scalars(tag)
    return [e.step for e in events], np.array([e.value for e in events])


@pytest.fixture(scope="module")
def tb_run(synth_data, tmp_path_factory) -> Path:
    """Fold 1 of the tiny PIL run, 2 epochs of 3 steps, per-step scalars every 2 steps."""
    out = tmp_path_factory.mktemp("tb_run")
    assert train_pil(synth_data, out, "--epochs", "2", "--folds_to_run", "1", "--lr", "1e-3",
                     "--log_every", str(LOG_EVERY), "--tensorboard") == 0
    return out


def test_epoch_scalars_match_metrics_jsonl(tb_run):
    recs = [json.loads(line) for line in (tb_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(r["fold"] == 1 for r in recs)
    ea = _events(tb_run / "tb" / "fold1")
    assert not (tb_run / "tb" / "fold2").exists()  # --folds_to_run 1
    tags = set(ea.Tags()["scalars"])
    pairs = [(key, tag, [r[key] for r in recs]) for key, tag in EPOCH_TAGS.items()]
    pairs += [(n, f"val_auc/{n}", [r["val_auc_per_label"][n] for r in recs]) for n in recs[0]["val_auc_per_label"]]
    pairs.append(("share", "speed/data_wait_share", [r["data_wait_s"] / r["train_s"] for r in recs]))
    for key, tag, want in pairs:
        epochs = [r["epoch"] for r, v in zip(recs, want) if v is not None]
        if not epochs:  # an undefined AUC is left out, never drawn as a number
            assert tag not in tags, tag
            continue
        steps, values = _series(ea, tag)
        assert steps == [STEPS_PER_EPOCH * e for e in epochs], (tag, steps)  # the optimiser step at the epoch's end
        np.testing.assert_allclose(values, [v for v in want if v is not None], rtol=1e-6, atol=1e-7, err_msg=tag)
    assert tags >= {"val/macro_auc", "refiner/sparsity", "speed/img_per_s", "epoch/loss", "val_auc/Edema"}


def test_step_scalars_every_log_every_steps(tb_run):
    recs = [json.loads(line) for line in (tb_run / "metrics.jsonl").read_text().splitlines()]
    total = torch.load(tb_run / "last.pth", weights_only=True)["step"]  # the fold's optimiser steps
    assert total == 2 * STEPS_PER_EPOCH
    assert total % LOG_EVERY == 0  # so the last step is logged (3 steps/epoch x 2 epochs)
    ea = _events(tb_run / "tb" / "fold1")
    for tag in STEP_TAGS.values():
        steps, values = _series(ea, tag)
        assert steps == list(range(LOG_EVERY, total + 1, LOG_EVERY)), (tag, steps)
        assert np.isfinite(values).all(), tag
    # the last step's lr and skipped count are the epoch record's (both read after the epoch's last step)
    assert _series(ea, "train/lr")[1][-1] == pytest.approx(recs[-1]["lr"], rel=1e-6)
    assert _series(ea, "train/skipped_steps")[1][-1] == recs[-1]["skipped_steps"]
    assert (_series(ea, "train/grad_norm")[1] > 0).all()


def test_couplings_image_and_config(tb_run):
    ea = _events(tb_run / "tb" / "fold1")
    images = ea.Images("refiner/A")
    assert [im.step for im in images] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert all(im.width > 100 and im.height > 100 for im in images)
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| log_every | {LOG_EVERY} |" in text and "| model | test_resnet |" in text
    assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")


def test_no_tensorboard_writes_no_tb_folder(synth_data, tmp_path):
    assert train_pil(synth_data, tmp_path, "--epochs", "1", "--folds_to_run", "1", "--img_size", "32",
                     "--no-tensorboard") == 0
    assert not (tmp_path / "tb").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_missing_package(monkeypatch, capsys, tmp_path):
    """--tensorboard without the package: one line, exit 2; the default: one note, then no TensorBoard."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now raises ImportError
    monkeypatch.setattr(logger, "_said_missing", False)
    assert_user_error(lambda: train_cli.main(["--train_csv", "x.csv", "--train_dir", "x", "--device", "cpu",
                                              "--pipeline", "pil", "--out_dir", str(tmp_path), "--tensorboard"]),
                      "--tensorboard", "cxr_fast[tensorboard]")
    assert not any(tmp_path.iterdir())  # stopped before anything was written
    capsys.readouterr()
    assert logger.tensorboard_wanted(None) is False and logger.tensorboard_wanted(None) is False
    assert capsys.readouterr().out.count(logger.TB_MISSING) == 1
    assert logger.tensorboard_wanted(False) is False
    with pytest.raises(UserError):
        logger.tensorboard_wanted(True)


def test_installed_default_is_on():
    assert logger.tensorboard_wanted(None) is True and logger.tensorboard_wanted(False) is False


def test_scalars_read_only_on_logged_steps():
    written, reads = [], []
    metrics = MetricsSink(written.append)
    assert RunLogger([metrics]).on_step is None  # nothing wants steps: the loop reads nothing

    class Steps(MetricsSink):
        takes_steps = True

        def step(self, step, scalars):
            written.append((step, scalars))

    log = RunLogger([metrics, Steps(written.append)], log_every=3)
    for step in range(1, 8):
        log.on_step(step, lambda s=step: reads.append(s) or {"loss": float(s)})
    assert reads == [3, 6] and written == [(3, {"loss": 3.0}), (6, {"loss": 6.0})]
    log.log_epoch({"fold": 1, "epoch": 1})
    assert written[-2:] == [{"fold": 1, "epoch": 1}] * 2  # the same record to both sinks


def test_resume_purges_what_runs_again(tmp_path):
    """A resumed fold (purge_step = steps done + 1) hides what the interrupted run logged after its last save."""
    first = TensorBoardSink(tmp_path, ["a"])
    for s in range(1, 7):
        first.step(s, {"loss": float(s)})
    first.close()
    again = TensorBoardSink(tmp_path, ["a"], purge_step=4)
    for s in range(4, 6):
        again.step(s, {"loss": 10.0 * s})
    again.close()
    steps, values = _series(_events(tmp_path), "train/loss")
    assert steps == [1, 2, 3, 4, 5] and values.tolist() == [1, 2, 3, 40, 50]


def test_resume_purges_an_epoch_logged_before_its_last_pth(tmp_path):
    """Killed between epoch 2's log and its last.pth (3 steps per epoch): the resume starts after step 3, and epoch
    2's records, at step 6, are hidden with the per-step ones; the re-run epoch 2 is drawn once."""
    rec = {"fold": 1, "loss": 0.5, "val_auc": 0.6, "val_auc_per_label": {"a": 0.6}}
    first = TensorBoardSink(tmp_path, ["a"])
    for epoch in (1, 2):
        first.epoch({**rec, "epoch": epoch, "val_auc": 0.1 * epoch}, None, 3 * epoch)
    first.close()
    again = TensorBoardSink(tmp_path, ["a"], purge_step=4)
    again.epoch({**rec, "epoch": 2, "val_auc": 0.9}, None, 6)
    again.close()
    for tag in ("val/macro_auc", "val_auc/a", "epoch/loss"):
        steps, _ = _series(_events(tmp_path), tag)
        assert steps == [3, 6], tag
    assert _series(_events(tmp_path), "val/macro_auc")[1].tolist() == pytest.approx([0.1, 0.9])


def test_resume_on_another_number_of_processes_continues_the_step_axis(synth_data, tmp_path):
    """last.pth as a 2-process run leaves it after epoch 1 (1 step per epoch; it had logged epoch 2 before the kill),
    resumed here on 1 process (3 steps per epoch): TensorBoard continues the old axis (epochs 1, 2, 3 at steps 1,
    1 + 3, 1 + 6), hides the old epoch 2, and last.pth keeps the offset for a later resume."""
    args = ("--epochs", "3", "--folds_to_run", "1", "--lr", "1e-3", "--tensorboard", "--patience", "0")
    assert train_pil(synth_data, tmp_path, *args) == 0
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["step"] == 9 and last["tb_offset"] == 0  # 3 steps per epoch on 1 process
    old = {**last, "epoch": 1, "step": 1, "world": 2, "rng_per_rank": [last["rng"]] * 2}
    torch.save(old, tmp_path / "last.pth")
    (tmp_path / "state" / "fold1.json").unlink()
    for p in (tmp_path / "tb" / "fold1").iterdir():
        p.unlink()
    before = TensorBoardSink(tmp_path / "tb" / "fold1", ["a"])  # what the 2-process run had drawn
    for epoch in (1, 2):
        before.epoch({"fold": 1, "epoch": epoch, "val_auc": 0.01 * epoch}, None, epoch)
    before.close()
    assert train_pil(synth_data, tmp_path, *args, "--resume") == 0
    steps, values = _series(_events(tmp_path / "tb" / "fold1"), "val/macro_auc")
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 4, 7] and values[0] == pytest.approx(0.01)
    np.testing.assert_allclose(values[1:], [r["val_auc"] for r in recs if r["epoch"] > 1], rtol=1e-6)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["tb_offset"] == -2  # 1 - 1 x 3
