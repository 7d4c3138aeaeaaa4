"""The run configuration: cxr-train's flags, --config files (JSON, YAML, a run's own config.json), the resume rule
(every setting that changes results must match, named by its flag), and the schedule seek used by --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr_fast.cli.train import build_parser, parse_config
from cxr_fast.errors import UserError
from cxr_fast.train.config import RESUME_MAY_CHANGE, TrainConfig, config_differences
from cxr_fast.train.engine import build_scheduler
from cxr_fast.train.outputs import RunFolder
from cxr_fast.train.resume import seek_schedule

BASE = ["--train_csv", "t.csv", "--train_dir", "imgs"]


def test_every_flag_is_a_config_field_and_defaults_agree():
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests == set(TrainConfig.field_names())
    cfg = parse_config(BASE)
    assert {k: v for k, v in cfg.to_dict().items() if k not in ("train_csv", "train_dir")} == \
        {k: v for k, v in TrainConfig.defaults().items() if k not in ("train_csv", "train_dir")}
    # the seed's defaults keep their values
    assert (cfg.model, cfg.img_size, cfg.epochs, cfg.batch_size, cfg.folds) == ("seresnext101_32x4d", 380, 3, 24, 3)


def test_eval_batch_defaults_to_twice_the_training_batch():
    assert parse_config([*BASE, "--batch_size", "12"]).eval_batch == 24
    assert parse_config([*BASE, "--batch_size", "12", "--eval_batch_size", "7"]).eval_batch == 7


def test_json_config_file_gives_defaults_and_the_command_line_wins(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"lr": 0.01, "epochs": 9, "labels": ["A", "B"], "refiner": False}))
    cfg = parse_config([*BASE, "--config", str(f), "--epochs", "2"])
    assert (cfg.lr, cfg.epochs, cfg.labels, cfg.refiner) == (0.01, 2, ["A", "B"], False)


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "run.yaml"
    f.write_text("model: resnet18\nimg_size: 256\nlabels: [Effusion]\npipeline: pil\n")
    cfg = parse_config([*BASE, "--config", str(f)])
    assert (cfg.model, cfg.img_size, cfg.labels, cfg.pipeline) == ("resnet18", 256, ["Effusion"], "pil")


def test_a_runs_config_json_reproduces_its_settings(tmp_path):
    first = parse_config([*BASE, "--model", "resnet34", "--refiner_l1", "0.01", "--ema_decay", "0.99"])
    f = tmp_path / "config.json"
    f.write_text(json.dumps(first.to_dict()))
    again = parse_config(["--config", str(f)])
    assert again.replace(config=None) == first


@pytest.mark.parametrize("body, says", [
    ({"learning_rate": 0.1}, "unknown setting(s) learning_rate"),
    ({"pipeline": "tfrecord"}, "pipeline: 'tfrecord' is not one of"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, body, says):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(body))
    with pytest.raises(UserError, match="bad.json") as e:
        parse_config([*BASE, "--config", str(f)])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_unreadable_config_files(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{lr: ")
    for name, says in (("missing.json", "not found"), ("list.json", "mapping"), ("broken.json", "not valid JSON")):
        with pytest.raises(UserError, match=says):
            parse_config([*BASE, "--config", str(tmp_path / name)])


def test_resume_differences_name_each_flag_with_old_and_new_values():
    old = parse_config(BASE).to_dict()
    new = parse_config([*BASE, "--refiner_l1", "0.01", "--ema_decay", "0.99", "--no_amp", "--weights", "w.pth"])
    diff = config_differences(old, new)
    assert diff == ["no_amp False -> True", "refiner_l1 0.001 -> 0.01", "ema_decay 0.999 -> 0.99",
                    "weights None -> w.pth"]


def test_resume_allows_only_settings_that_cannot_change_results():
    old = parse_config(BASE).to_dict()
    new = parse_config([*BASE, "--num_workers", "9", "--no-progress", "--out_csv", "x.csv", "--device", "cpu",
                        "--folds_to_run", "2", "--resume", "--eval_batch_size", "3"])
    assert config_differences(old, new) == []
    assert set(RESUME_MAY_CHANGE) == {"num_workers", "progress", "out_csv", "device", "folds_to_run", "resume",
                                      "config", "eval_batch_size", "compile", "channels_last", "hw_decoder_load",
                                      "find_unused_parameters", "tensorboard", "log_every"}
    # an older config.json without today's settings compares against their defaults
    older = {k: v for k, v in old.items() if k not in ("dali_decode", "channels_last", "compile")}
    assert config_differences(older, parse_config(BASE)) == []
    assert config_differences(older, parse_config([*BASE, "--dali_decode", "full"])) == ["dali_decode auto -> full"]


def test_resume_with_changed_settings_is_refused_also_for_a_finished_run(tmp_path):
    names, folds = ["a.png", "b.png"], np.array([1, 2])
    folder = RunFolder(tmp_path, "m")
    folder.prepare(parse_config([*BASE, "--out_dir", str(tmp_path)]), names, folds)
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "fold1.json").write_text("{}")  # as if fold 1 (or all) had finished
    changed = parse_config([*BASE, "--out_dir", str(tmp_path), "--resume", "--weight_decay", "0.1"])
    with pytest.raises(UserError, match=r"--resume with different settings .*weight_decay 0.0001 -> 0.1"):
        RunFolder(tmp_path, "m").prepare(changed, names, folds)
    same = parse_config([*BASE, "--out_dir", str(tmp_path), "--resume", "--num_workers", "0"])
    RunFolder(tmp_path, "m").prepare(same, names, folds)  # may change: no error


def _lrs(steps_per_epoch: int, epochs: int, start_epoch: int = 0) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, warmup_steps=steps_per_epoch, total_steps=epochs * steps_per_epoch)
    seek_schedule(sched, start_epoch * steps_per_epoch)
    out = []
    for _ in range(start_epoch * steps_per_epoch, epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_seek_schedule_gives_an_uninterrupted_runs_lr_after_a_resume():
    # 10 steps/epoch (e.g. 1 process), resumed after epoch 2 with 5 steps/epoch (2 processes): the lr of epochs
    # 3-4 is that of an uninterrupted 2-process run, not a continuation of the 1-process step count.
    assert _lrs(5, 4, start_epoch=2) == pytest.approx(_lrs(5, 4)[10:])
    assert _lrs(10, 4, start_epoch=3) == pytest.approx(_lrs(10, 4)[30:])


def test_the_shipped_example_config_parses():
    pytest.importorskip("yaml")
    from pathlib import Path

    cfg = parse_config(["--config", str(Path(__file__).parents[2] / "examples" / "run.yaml"), "--epochs", "1"])
    assert (cfg.model, cfg.group_col, cfg.lr, cfg.folds, cfg.epochs) == ("tf_efficientnet_b4_ns", "Patient ID",
                                                                         4e-4, 5, 1)


def test_a_config_file_never_sets_resume_and_flags_must_be_booleans(tmp_path):
    f = tmp_path / "config.json"  # as a resumed run writes it
    f.write_text(json.dumps({**parse_config(BASE).to_dict(), "resume": True, "config": "x.yaml"}))
    cfg = parse_config(["--config", str(f)])
    assert cfg.resume is False and cfg.config == str(f)
    f.write_text(json.dumps({"no_amp": "false"}))
    with pytest.raises(UserError, match="no_amp: give true or false, not 'false'"):
        parse_config([*BASE, "--config", str(f)])


def test_config_values_without_a_type_are_read_as_text(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "run.yaml"
    f.write_text("folds_to_run: 1\ngroup_col: 7\n")
    cfg = parse_config([*BASE, "--config", str(f)])
    assert (cfg.folds_to_run, cfg.group_col) == ("1", "7")


def test_a_fresh_run_removes_what_an_earlier_run_left(tmp_path, capsys):
    names, folds = ["a.png", "b.png"], np.array([1, 2])
    for name in ("m_fold1.pth", "m_fold5.pth", "oof.csv", "thresholds.json", "report.html", "last.pth",
                 "other_fold1.pth"):
        (tmp_path / name).write_text("old")
    RunFolder(tmp_path, "m").prepare(parse_config([*BASE, "--out_dir", str(tmp_path)]), names, folds)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["config.json", "folds.csv", "other_fold1.pth", "state"]  # another model's checkpoint stays
    said = capsys.readouterr().out
    assert "removed the earlier run's" in said and "m_fold5.pth" in said


def test_find_unused_parameters_is_off_by_default_and_may_change_on_resume():
    from cxr_fast.cli.train import parse_config
    from cxr_fast.train.config import RESUME_MAY_CHANGE, TrainConfig, config_differences

    assert parse_config(["--shards", "s"]).find_unused_parameters is False
    cfg = parse_config(["--shards", "s", "--find_unused_parameters"])
    assert cfg.find_unused_parameters is True and "find_unused_parameters" in RESUME_MAY_CHANGE
    assert config_differences(TrainConfig(shards="s").to_dict(), cfg) == []
