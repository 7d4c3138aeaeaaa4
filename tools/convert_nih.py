"""Convert the NIH ChestX-ray14 metadata to our training CSV; same as `cxr-convert nih ...`."""

import sys

from cxr_fast.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(["nih", *sys.argv[1:]]))
