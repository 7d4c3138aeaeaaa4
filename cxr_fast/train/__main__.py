"""`python -m cxr_fast.train ...` (and `torchrun ... -m cxr_fast.train ...`): the same as `cxr-train`."""

import sys

from cxr_fast.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
