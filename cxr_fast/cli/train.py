"""`cxr-train`: K-fold training with every flag of the original project, then the test-set submission.

Faults (docs/faults.md): one run per --out_dir (a second one stops naming the holder); on SIGTERM, SIGUSR1 or SIGINT
training finishes its step, saves a resumable last.pth and exits with code 75 (run again with --resume to continue
from that step); a full disk or a damaged checkpoint is one line, exit code 2."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.cli.common import add_dataset_flags, decay, nonneg_int, positive_int
from cxr_fast.errors import UserError, cli_entry, first_line
from cxr_fast.train.config import TrainConfig, read_config_file


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, the description's lines as written."""


def build_parser() -> argparse.ArgumentParser:
    """Flags without defaults here: every default comes from `TrainConfig` (set at the end), so there is one."""
    from cxr_fast.model.losses import LOSSES
    from cxr_fast.pipelines import PIPELINES

    p = argparse.ArgumentParser(prog="cxr-train", description=__doc__,
                                formatter_class=_Help)
    B = argparse.BooleanOptionalAction
    p.add_argument("--config", help="JSON or YAML file of settings (a run's config.json is one); flags given on the "
                                    "command line win")
    # The original project's flags: same names, types and defaults.
    p.add_argument("--train_csv", help="CSV with Image_name + label columns (not needed with --shards)")
    p.add_argument("--train_dir", help="directory of training images (not needed with --shards)")
    p.add_argument("--test_dir", help="directory of test images (every .png/.jpg/.jpeg, sorted)")
    p.add_argument("--out_csv", help="submission CSV path")
    p.add_argument("--out_dir", help="checkpoints, oof.csv, cv_summary.json, metrics.jsonl")
    add_dataset_flags(p)
    p.add_argument("--model", help="timm backbone name")
    p.add_argument("--img_size", type=positive_int, help="square input size")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch_size", type=positive_int, help="batch size per process")
    p.add_argument("--lr", type=float, help="base learning rate (AdamW)")
    p.add_argument("--weight_decay", type=float)
    p.add_argument("--warmup_epochs", type=float, help="linear warm-up length in epochs (per-step)")
    p.add_argument("--folds", type=int)
    p.add_argument("--seed", type=nonneg_int)
    p.add_argument("--label_smooth", type=float)
    p.add_argument("--loss", choices=tuple(LOSSES))
    p.add_argument("--ema", action=B, help="EMA of the weights (backbone and refiner)")
    p.add_argument("--tta", action=B, help="horizontal-flip TTA for validation and test")
    p.add_argument("--num_workers", type=nonneg_int, help="loader worker processes (DALI: threads)")
    p.add_argument("--color_jitter", action="store_true", help="brightness/contrast jitter 0.05")
    p.add_argument("--no_amp", action="store_true", help="disable mixed precision")
    # Ours.
    p.add_argument("--pipeline", choices=tuple(PIPELINES), help="input pipeline")
    p.add_argument("--shards", help="existing cxr-shard output (labels and folds from its manifest)")
    p.add_argument("--hw_decoder_load", type=float,
                   help="DALI: share of JPEG decoding given to the GPU's hardware decoder (A100/H100)")
    p.add_argument("--dali_decode", choices=("auto", "crop", "full"),
                   help="DALI training decode: crop = decode only the random crop (ROI decode), full = decode the "
                        "whole image then crop; auto = full on CUDA, crop on CPU")
    p.add_argument("--shards_root", help="where shards are built when --shards is not given")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp_dtype", choices=("auto", "fp16", "bf16"),
                   help="AMP dtype on CUDA (auto = bf16 where the GPU supports it, else fp16 with a grad scaler); "
                        "on CPU AMP runs only with bf16")
    p.add_argument("--channels_last", action=B, help="channels_last memory format (default: on for convolutional "
                                                     "backbones on CUDA)")
    p.add_argument("--compile", action=B, help="torch.compile the backbone")
    p.add_argument("--eval_batch_size", type=positive_int, help="validation/test batch per process (default 2x "
                                                                "--batch_size)")
    p.add_argument("--refiner", action=B, help="learned sparse label-coupling refiner")
    p.add_argument("--refiner_alpha", type=float)
    p.add_argument("--refiner_l1", type=float, help="L1 weight on A (proximal step)")
    p.add_argument("--ema_decay", type=decay)
    p.add_argument("--drop_rate", type=float, help="backbone dropout before the classifier")
    p.add_argument("--patience", type=nonneg_int, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--pretrained", action=B, help="ImageNet-pretrained timm weights")
    p.add_argument("--weights", help="local backbone weights file (.pth/.safetensors)")
    p.add_argument("--in_chans", type=int, choices=(1, 3), help="backbone input channels")
    p.add_argument("--folds_to_run", help="comma-separated folds to train, e.g. 1,3 (default all)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out_dir (after a "
                   "stop signal: from the step it stopped at)")
    p.add_argument("--find_unused_parameters", action=B, help="DDP: allow parameters that get no gradient in a step "
                   "(a backbone with unused heads); slower, off by default")
    p.add_argument("--skip_bad", action=B, help="leave unreadable images out (and list them) instead of stopping; "
                   "test images are checked before training")
    p.add_argument("--progress", action=B, help="progress bars")
    p.add_argument("--tensorboard", action=B, help="TensorBoard logs in <out_dir>/tb/fold{K}/ (default: on where the "
                   "tensorboard package is installed: pip install 'cxr_fast[tensorboard]')")
    p.add_argument("--log_every", type=positive_int, help="TensorBoard: per-step scalars every this many steps")
    p.set_defaults(**TrainConfig.defaults())
    return p


# Settings of one invocation, not of a run: a file never sets them (a resumed run's config.json has resume: true).
PER_INVOCATION = ("resume", "config")


def _apply_config_file(p: argparse.ArgumentParser, path: str) -> None:
    """The file's settings become the parser's defaults (so command-line flags win), each checked by its flag."""
    values = read_config_file(path)
    actions = {a.dest: a for a in p._actions if a.dest != "help"}
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)} (settings are cxr-train's flag names)")
    for key in PER_INVOCATION:  # a run's own config.json records them; they never come from a file
        values.pop(key, None)
    for key, v in values.items():
        if key == "labels" and isinstance(v, list):
            v = ",".join(map(str, v))
        a = actions[key]
        if a.nargs == 0:  # an on/off flag
            if v is not None and not isinstance(v, bool):
                raise UserError(f"{path}: {key}: give true or false, not {v!r}")
            continue
        if v is not None and a.type is None:
            v = str(v)  # e.g. YAML's `folds_to_run: 1` or `group_col: 7`
        if v is not None and a.type is not None and not isinstance(v, bool):
            try:
                v = a.type(str(v))
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise UserError(f"{path}: {key}: {e}") from None
        if v is not None and a.choices is not None and v not in a.choices:
            raise UserError(f"{path}: {key}: {v!r} is not one of {', '.join(map(str, a.choices))}")
        values[key] = v
    p.set_defaults(**values)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The run's settings: defaults < --config file < command line."""
    from cxr_fast.data.table import parse_label_list

    p = build_parser()
    args = p.parse_args(argv)
    if args.config:
        _apply_config_file(p, args.config)
        args = p.parse_args(argv)
    args.labels = parse_label_list(args.labels) if isinstance(args.labels, str) else args.labels
    cfg = TrainConfig(**vars(args))
    if cfg.shards is None and (not cfg.train_csv or not cfg.train_dir):
        raise UserError("--train_csv and --train_dir are required (or give --shards)")
    return cfg


def _load_data(cfg: TrainConfig, shards=None):
    """The run's data: from `--shards` (or the shards built for this CSV, `shards`), else the CSV and image files."""
    from cxr_fast import dist
    from cxr_fast.train.run_data import from_csv, from_shards

    shards = shards or cfg.shards
    if shards is not None:
        return from_shards(shards, labels=cfg.labels, test_dir=cfg.test_dir, skip_bad=cfg.skip_bad, log=dist.log)
    return from_csv(cfg.train_csv, cfg.train_dir, cfg.test_dir, image_col=cfg.image_col, labels=cfg.labels,
                    uncertain=cfg.uncertain, missing=cfg.missing, group_col=cfg.group_col, folds=cfg.folds,
                    seed=cfg.seed, skip_bad=cfg.skip_bad, log=dist.log)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    from cxr_fast import versions

    versions.check_torch()  # one line naming the floor, before anything deeper fails on an old torch
    import torch

    from cxr_fast import dist
    from cxr_fast.disk import disk_full, disk_full_message
    from cxr_fast.pipelines import check_pipeline, pipeline_info
    from cxr_fast.train import preempt
    from cxr_fast.train.engine import TrainingDiverged
    from cxr_fast.train.logger import tensorboard_wanted
    from cxr_fast.train.run import Run, hold_out_dir, resolve_device
    from cxr_fast.train.run_data import shards_for_training
    from cxr_fast.train.speed import configure_cuda

    device = resolve_device(cfg.device)
    # fail before building shards (or starting processes): e.g. DALI absent or old, a decode form this GPU cannot run
    check_pipeline(cfg.pipeline, device.type, cfg.pipeline_options())
    device = dist.setup(device.type) or device
    configure_cuda(fixed_size=True)  # every training/eval batch is img_size x img_size: cudnn.benchmark pays
    try:
        tensorboard_wanted(cfg.tensorboard)  # --tensorboard without the package: one line, before anything starts
        with hold_out_dir(cfg.out_dir):  # before anything in it is touched; rank 0 holds it until the end
            # shards built (or reused) for this CSV; config.json keeps --shards as given (None), so the run's
            # config.json stays a valid --config for a new CSV
            built = None
            if pipeline_info(cfg.pipeline).needs_shards and cfg.shards is None:
                built = shards_for_training(cfg, build=dist.is_main())
                dist.wait_for_main()  # rank 0 may be packing a whole CheXpert/NIH set meanwhile (hours)
                dist.check_shared(built, "--shards_root")
            data = _load_data(cfg, built)
            cfg = cfg.replace(labels=list(data.label_names))
            with preempt.watch():  # SIGTERM/SIGUSR1/SIGINT: finish the step, save, exit EXIT_RESUMABLE
                Run(cfg, data, device).run()
            dist.finish()
    except preempt.Preempted as e:
        if dist.is_main():
            print(e, file=sys.stderr, flush=True)
        return e.exit_code
    except (TrainingDiverged, torch.cuda.OutOfMemoryError) as e:  # the run's settings, not a bug: one line, exit 2
        raise UserError(first_line(e, 500)) from None
    except (OSError, RuntimeError) as e:  # a write the checkpoint writers do not name (a CSV, the report)
        if not disk_full(e):
            raise
        raise UserError(disk_full_message(getattr(e, "filename", None) or cfg.out_dir, "the run's outputs",
                                          hint="then run the same command with --resume")) from None
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
