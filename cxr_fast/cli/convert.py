"""cxr-convert: public chest X-ray datasets -> our training CSV (`Image_name` + label columns + `Patient ID`).

  cxr-convert nih --root NIH/ --out nih_train.csv [--split official] [--skip_missing]
  cxr-convert chexpert --csv CheXpert-v1.0-small/train.csv --out chexpert_train.csv [--frontal_only]
      [--uncertain keep|zeros|ones|ignore|u-ones-competition] [--uncertain_map "Atelectasis=ones,Edema=ones"]
      [--missing keep|zeros]
  cxr-convert mimic --root mimic-cxr-jpg/2.0.0/ --out mimic_train.csv [--mimic_split train] (options as chexpert)

Train on the result with the image folder = the converter's root and `--group_col "Patient ID"`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_fast.convert.chexpert import MISSING_CHOICES, UNCERTAIN_CHOICES, convert_chexpert
from cxr_fast.convert.common import Converted, summary, write_csv_atomic
from cxr_fast.convert.mimic import MIMIC_SPLITS, convert_mimic
from cxr_fast.convert.nih import convert_nih
from cxr_fast.errors import cli_entry


def _label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.add_argument("--frontal_only", action="store_true", help="keep frontal views only (column Frontal/Lateral)")
    p.add_argument("--uncertain", default="keep", choices=UNCERTAIN_CHOICES,
                   help="what -1 (uncertain) becomes; 'keep' leaves -1 for cxr-train --uncertain (default)")
    p.add_argument("--uncertain_map", default=None, metavar="LABEL=POLICY,...",
                   help="per-label policies (keep|zeros|ones|ignore) overriding --uncertain")
    p.add_argument("--missing", default="keep", choices=MISSING_CHOICES,
                   help="blank (not mentioned): keep blank for cxr-train --missing (default) or write 0")
    p.add_argument("--skip_missing", action="store_true", help="drop rows whose image is not under the root")
    p.add_argument("--no_check_images", action="store_true", help="do not check that the images exist")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cxr-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="dataset", required=True, metavar="{nih,chexpert,mimic}")

    nih = sub.add_parser("nih", help="NIH ChestX-ray14 (Data_Entry_2017.csv + images_*/images/)")
    nih.add_argument("--root", required=True, help="folder holding the images (searched recursively)")
    nih.add_argument("--csv", default=None, help="Data_Entry_2017.csv (default: under --root)")
    nih.add_argument("--out", required=True, help="output CSV (the train_val part with --split official)")
    nih.add_argument("--split", default="all", choices=("all", "official"),
                     help="'official': train_val_list.txt -> --out, test_list.txt -> --test_out")
    nih.add_argument("--train_list", default=None, help="default: ROOT/train_val_list.txt")
    nih.add_argument("--test_list", default=None, help="default: ROOT/test_list.txt")
    nih.add_argument("--test_out", default=None, help="test CSV for --split official (default: OUT_test.csv)")
    nih.add_argument("--skip_missing", action="store_true", help="drop rows whose image is not under the root")

    chx = sub.add_parser("chexpert", help="CheXpert train.csv / valid.csv (Path + 14 labels)")
    chx.add_argument("--csv", required=True, help="train.csv or valid.csv")
    chx.add_argument("--root", default=None,
                     help="folder Image_name is relative to (default: the CSV's folder; a leading "
                          "CheXpert-v1.0*/ in Path is stripped unless the root holds that folder)")
    _label_options(chx)

    mim = sub.add_parser("mimic", help="MIMIC-CXR-JPG (mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz + files/)")
    mim.add_argument("--root", required=True, help="the MIMIC-CXR-JPG folder (holds files/ and the CSVs)")
    mim.add_argument("--mimic_split", default="all", choices=MIMIC_SPLITS, help="official split to keep")
    _label_options(mim)
    return ap


def _emit(conv: Converted, out: Path) -> None:
    write_csv_atomic(conv.table, out)
    print(summary(conv, out))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.dataset == "nih":
        res = convert_nih(args.root, csv=args.csv, split=args.split, train_list=args.train_list,
                          test_list=args.test_list, skip_missing=args.skip_missing)
        _emit(res.train, out)
        if res.test is not None:
            test_out = Path(args.test_out) if args.test_out else out.with_name(f"{out.stem}_test{out.suffix}")
            if len(res.test.table):
                print()
                _emit(res.test, test_out)
            else:
                print("note: no row is in the test list; no test CSV written")
        return 0
    opts = {"frontal_only": args.frontal_only, "uncertain": args.uncertain, "uncertain_map": args.uncertain_map,
            "missing": args.missing, "check_images": not args.no_check_images, "skip_missing": args.skip_missing}
    if args.dataset == "chexpert":
        conv = convert_chexpert(args.csv, root=args.root, **opts)
    else:
        conv = convert_mimic(args.root, split=args.mimic_split, **opts)
    _emit(conv, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
