"""Convert the CheXpert (train.csv / valid.csv) metadata to our training CSV; same as `cxr-convert chexpert ...`."""

import sys

from cxr_fast.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(["chexpert", *sys.argv[1:]]))
