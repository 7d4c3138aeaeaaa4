"""`cxr-predict`: inference only - fold-ensemble (and flip-TTA) probabilities for every image in a test folder."""

from __future__ import annotations

import argparse
import contextlib
import glob
import sys
from pathlib import Path

from cxr_fast.cli.common import nonneg_int, positive_int
from cxr_fast.errors import UserError, cli_entry
from cxr_fast.pipelines import PIPELINES, check_pipeline, pipeline_info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-predict", description=__doc__)
    p.add_argument("--checkpoints", required=True, nargs="+",
                   help='fold checkpoints or a glob, e.g. "outputs/*_fold*.pth"')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--test_dir", help="folder of test images (every .png/.jpg/.jpeg, sorted)")
    src.add_argument("--shards", help="a cxr-shard folder: predict its test split")
    p.add_argument("--out_csv", default="./submission.csv")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch_size", type=positive_int, default=32)
    p.add_argument("--pipeline", choices=tuple(PIPELINES), default="pil",
                   help="dali needs --shards (or builds test-only shards from --test_dir in a temporary folder)")
    p.add_argument("--num_workers", type=nonneg_int, default=4)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--image_col", default="Image_name", help="name of the image column in the output CSV")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave unreadable test images out of the CSV (and list them) instead of stopping")
    p.add_argument("--thresholds", help="a run's thresholds.json (cxr-train writes it in --out_dir): also write "
                   "0/1 decisions per label (prob >= threshold) to --out_decisions")
    p.add_argument("--operating_point", choices=("youden", "sens90"), default="youden",
                   help="which thresholds of --thresholds: Youden's J, or sensitivity >= 0.90 on the OOF data")
    p.add_argument("--out_decisions", help="CSV of 0/1 decisions (default: --out_csv with _decisions before .csv)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--study_col", help="with --study_csv: also write <out_csv stem>_studies.csv, one row per study")
    p.add_argument("--study_csv", help="CSV mapping images (--image_col) to studies (--study_col)")
    p.add_argument("--study_agg", choices=("max", "mean"), default="max", help="a study's probability per label")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tempfile

    from cxr_fast import versions
    from cxr_fast.data.table import list_test_images
    from cxr_fast.evaluate.study import check_study_names, study_map, write_study_predictions
    from cxr_fast.train.checkpoint import load_fold_checkpoints
    from cxr_fast.train.outputs import write_predictions_csv
    from cxr_fast.train.run import resolve_device
    from cxr_fast.train.run_data import say_left_out, shard_resize, test_file_set

    versions.check_torch()
    paths = sorted({p for pat in args.checkpoints for p in (glob.glob(pat) or [pat])})
    ckpts = load_fold_checkpoints(paths)
    labels = list(ckpts[0][1]["labels"])
    device = resolve_device(args.device)
    cut = _threshold_vector(args, labels)  # before inference: a wrong file costs no GPU time
    study_ids = study_map(args.study_csv, args.study_col, args.image_col)
    with tempfile.TemporaryDirectory(prefix="cxr-predict-") as tmp:
        if args.shards:
            samples, names = _shard_test_set(args.shards, labels)
        elif pipeline_info(args.pipeline).needs_shards:  # pack the test images first
            from cxr_fast.shards.writer import write_test_shards

            check_pipeline(args.pipeline, device.type)  # fail before encoding anything (e.g. DALI absent)
            resize = shard_resize(max(int(ck["config"]["img_size"]) for _, ck in ckpts))
            # A folder inside tmp: the writer keeps its work folder beside OUT, so it goes when tmp goes
            shards = f"{tmp}/test"
            manifest = write_test_shards(args.test_dir, shards, labels, resize=resize, skip_bad=args.skip_bad,
                                         progress=args.progress)
            say_left_out([(r["name"], r["reason"]) for r in manifest["rejected"]])
            samples, names = _shard_test_set(shards, labels)
        else:  # no check first: the prediction pass is the check (`_predict`), each image decoded once
            names = list_test_images(args.test_dir)
            samples = test_file_set(args.test_dir, names, len(labels))
        if study_ids is not None:
            check_study_names(study_ids, names, args.study_csv)
        index, probs = _predict(args, ckpts, samples, names, device)
    write_predictions_csv(args.out_csv, [names[i] for i in index], labels, probs, image_col=args.image_col)
    print(f"wrote {args.out_csv}: {len(index)} images x {len(labels)} labels, mean of {len(ckpts)} checkpoint(s)"
          f"{', flip TTA' if args.tta else ''}")
    if study_ids is not None:
        st_out = write_study_predictions(args.out_csv, [names[i] for i in index], labels, probs, study_ids,
                                         args.study_col, args.study_agg)
        print(f"wrote {st_out}: the {args.study_agg} of each study's image probabilities")
    if cut is not None:
        out = args.out_decisions or _decisions_path(args.out_csv)
        decided = (probs >= cut[None, :]).astype("uint8")
        write_predictions_csv(out, [names[i] for i in index], labels, decided, image_col=args.image_col)
        print(f"wrote {out}: 0/1 decisions at the {args.operating_point} thresholds of {args.thresholds} "
              f"(prob >= threshold)")
    return 0


def _predict(args, ckpts, samples, names: list[str], device):
    """(index, probs) of the fold ensemble. Over image files the pass is also the check, before any output is
    written: a bad image stops it with one line naming it, or with --skip_bad is left out, then named."""
    from cxr_fast.train.predict import ensemble_predict
    from cxr_fast.train.test_images import say_skipped, skip_bad_hint

    files = samples.files is not None
    with skip_bad_hint(args.test_dir) if files else contextlib.nullcontext():
        index, probs = ensemble_predict(ckpts, samples, pipeline=args.pipeline, batch_size=args.batch_size,
                                        device=device, tta=args.tta, num_workers=args.num_workers,
                                        amp=_amp_from(ckpts[0][1]["config"], device), progress=args.progress,
                                        skip_bad=files and args.skip_bad)
    if files and args.skip_bad:
        say_skipped(args.test_dir, names, index)
    return index, probs


def _threshold_vector(args, labels: list[str]):
    """(C,) thresholds from --thresholds for --operating_point, checked against the checkpoints' labels; None
    without --thresholds."""
    if args.thresholds is None:
        if args.out_decisions:
            raise UserError("--out_decisions needs --thresholds (a run's thresholds.json)")
        return None
    if args.out_decisions and Path(args.out_decisions).resolve() == Path(args.out_csv).resolve():
        raise UserError(f"--out_decisions {args.out_decisions} is --out_csv: give the decisions their own file")
    from cxr_fast.evaluate.thresholds import load_thresholds, threshold_vector

    return threshold_vector(load_thresholds(args.thresholds, labels), labels, args.operating_point)


def _decisions_path(out_csv: str) -> str:
    """`sub.csv` -> `sub_decisions.csv` (any case of the suffix)."""
    p = Path(out_csv)
    return str(p.with_name(f"{p.stem if p.suffix.lower() == '.csv' else p.name}_decisions.csv"))


def _amp_from(saved: dict, device):
    """Inference precision as the checkpoint was trained: --no_amp / --amp_dtype from its config."""
    from cxr_fast.train.amp import Amp
    from cxr_fast.train.config import TrainConfig

    cfg = TrainConfig.from_saved(saved)
    return Amp(device, enabled=not cfg.no_amp, dtype=cfg.amp_dtype)


def _shard_test_set(root, labels):
    from cxr_fast.shards.read import load_manifest, read_samples, sample_set
    from cxr_fast.train.run_data import names_by_index

    manifest = load_manifest(root)
    if list(manifest["labels"]) != labels:
        raise UserError(f"{root}/manifest.json: its labels {manifest['labels']} differ from the checkpoints' {labels}")
    df = read_samples(root)
    test = df[df["split"] == "test"]
    if not len(test):
        raise UserError(f"{root}: the shards have no test split (shard with --test_dir)")
    return sample_set(root, manifest, ["test"]), names_by_index(test)


if __name__ == "__main__":
    sys.exit(main())
