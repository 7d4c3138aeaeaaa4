"""`cxr-train`: K-fold training with every flag of the original project, then the test-set submission."""

from __future__ import annotations

import argparse
import sys

from cxr_fast.cli.common import add_dataset_flags, decay, nonneg_int, positive_int
from cxr_fast.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    B = argparse.BooleanOptionalAction
    # The original project's flags: same names, types and defaults.
    p.add_argument("--train_csv", help="CSV with Image_name + label columns (not needed with --shards)")
    p.add_argument("--train_dir", help="directory of training images (not needed with --shards)")
    p.add_argument("--test_dir", help="directory of test images (every .png/.jpg/.jpeg, sorted)")
    p.add_argument("--out_csv", default="./submission.csv", help="submission CSV path")
    p.add_argument("--out_dir", default="./outputs", help="checkpoints, oof.csv, cv_summary.json, metrics.jsonl")
    add_dataset_flags(p)
    p.add_argument("--model", default="seresnext101_32x4d", help="timm backbone name")
    p.add_argument("--img_size", type=positive_int, default=380, help="square input size")
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--batch_size", type=positive_int, default=24, help="batch size per process")
    p.add_argument("--lr", type=float, default=2e-4, help="base learning rate (AdamW)")
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--warmup_epochs", type=float, default=1, help="linear warm-up length in epochs (per-step)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=nonneg_int, default=42)
    p.add_argument("--label_smooth", type=float, default=0.0)
    p.add_argument("--loss", choices=("asl", "bce"), default="asl")
    p.add_argument("--ema", action=B, default=True, help="EMA of the weights (backbone and refiner)")
    p.add_argument("--tta", action=B, default=True, help="horizontal-flip TTA for validation and test")
    p.add_argument("--num_workers", type=nonneg_int, default=4, help="loader worker processes (DALI: threads)")
    p.add_argument("--color_jitter", action="store_true", help="brightness/contrast jitter 0.05")
    p.add_argument("--no_amp", action="store_true", help="disable mixed precision")
    # Ours.
    p.add_argument("--pipeline", choices=("pil", "dali"), default="dali", help="input pipeline")
    p.add_argument("--shards", default=None, help="existing cxr-shard output (labels and folds from its manifest)")
    p.add_argument("--hw_decoder_load", type=float, default=0.65,
                   help="DALI: share of JPEG decoding given to the GPU's hardware decoder (A100/H100)")
    p.add_argument("--shards_root", default="shards", help="where shards are built when --shards is not given")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp_dtype", choices=("auto", "fp16", "bf16"), default="auto",
                   help="AMP dtype on CUDA (auto = fp16 with a grad scaler); on CPU AMP runs only with bf16")
    p.add_argument("--refiner", action=B, default=True, help="learned sparse label-coupling refiner")
    p.add_argument("--refiner_alpha", type=float, default=0.3)
    p.add_argument("--refiner_l1", type=float, default=1e-3, help="L1 weight on A (proximal step)")
    p.add_argument("--ema_decay", type=decay, default=0.999)
    p.add_argument("--drop_rate", type=float, default=0.4, help="backbone dropout before the classifier")
    p.add_argument("--patience", type=nonneg_int, default=3, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--pretrained", action=B, default=True, help="ImageNet-pretrained timm weights")
    p.add_argument("--weights", default=None, help="local backbone weights file (.pth/.safetensors)")
    p.add_argument("--in_chans", type=int, choices=(1, 3), default=1, help="backbone input channels")
    p.add_argument("--folds_to_run", default=None, help="comma-separated folds to train, e.g. 1,3 (default all)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out_dir")
    p.add_argument("--progress", action=B, default=True, help="progress bars")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from cxr_fast import dist
    from cxr_fast.data.run_data import from_csv, from_shards, shards_for_training
    from cxr_fast.data.table import parse_label_list
    from cxr_fast.train.engine import TrainingDiverged
    from cxr_fast.train.run import Run, resolve_device

    cfg = vars(args)
    cfg["labels"] = parse_label_list(args.labels)
    if args.shards is None and (not args.train_csv or not args.train_dir):
        raise UserError("--train_csv and --train_dir are required (or give --shards)")
    device = resolve_device(args.device)
    dist_device = dist.setup(device.type)
    device = dist_device or device
    try:
        if args.pipeline == "dali":
            from cxr_fast.pipelines.dali import require_dali

            require_dali()  # fail before building shards when DALI is absent
        if args.pipeline == "dali" and args.shards is None:
            cfg["shards"] = str(shards_for_training(cfg, build=dist.is_main()))
            dist.barrier(timeout_s=24 * 3600)  # rank 0 may be packing a whole CheXpert/NIH set meanwhile
        if cfg["shards"] is not None:
            data = from_shards(cfg["shards"], labels=cfg["labels"], test_dir=args.test_dir)
        else:
            data = from_csv(args.train_csv, args.train_dir, args.test_dir, image_col=args.image_col,
                            labels=cfg["labels"], uncertain=args.uncertain, missing=args.missing,
                            group_col=args.group_col, folds=args.folds, seed=args.seed)
        cfg["labels"] = data.label_names
        Run(cfg, data, device).run()
        dist.finish()
    except (TrainingDiverged, torch.OutOfMemoryError) as e:  # the run's settings, not a bug: one line, exit 2
        raise UserError(str(e).splitlines()[0]) from None
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
