"""torchrun entry for tests/train/test_test_images.py: `checked_test_names` on 2 gloo processes, counting decodes.

argv: test folders, each optionally `:skip` (--skip_bad). Each rank prints one line per folder: how many images it
has decoded so far and the names it got; a UserError ends every rank through `cli_entry` (one line, exit 2)."""

import sys

from cxr_fast import dist
from cxr_fast.errors import cli_entry
from cxr_fast.images import check
from cxr_fast.train.run_data import checked_test_names

decoded = []
_read_gray8 = check.read_gray8


def _counting(path, *args, **kwargs):
    decoded.append(path)
    return _read_gray8(path, *args, **kwargs)


check.read_gray8 = _counting


@cli_entry
def main(argv: list[str]) -> int:
    dist.setup("cpu")
    try:
        for arg in argv:
            folder, _, skip = arg.partition(":")
            names = checked_test_names(folder, skip_bad=skip == "skip", log=dist.log)
            print(f"rank {dist.rank()} decoded {len(decoded)} got {','.join(names)}", flush=True)
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
