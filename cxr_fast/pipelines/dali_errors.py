"""DALI's run-time errors, told apart by their text: unreadable shard data vs everything else.

DALI raises a RuntimeError whose text names the failing operator ("Error in CPU operator
`nvidia.dali.fn.decoders.image`, ... encountered: ... nvImageCodec failure: '#4'") followed by its C++ trace. Only
two kinds are the shards' fault: the reader failing, and a decoder failing with a status that means "these bytes are
not a decodable image" (nvImageCodec BAD_CODESTREAM / CODESTREAM_UNSUPPORTED / INCOMPLETE_BITSTREAM, or a decoder
saying so in words). Those become a one-line UserError pointing at `cxr-shard verify`. Anything else - a decoder's
INTERNAL_ERROR (nvImageCodec#55's GPU ROI decode), CUDA or memory failures, any other operator - is not reported as
a corrupt shard: it becomes `DALIPipelineError` (one line, the original chained), with advice where there is some.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cxr_fast.errors import UserError

# nvimgcodecStatus_t values that mean "the data", from nvimgcodec.h: 3 BAD_CODESTREAM, 4 CODESTREAM_UNSUPPORTED,
# 13 EXTENSION_BAD_CODE_STREAM, 14 EXTENSION_CODESTREAM_UNSUPPORTED, 19 EXTENSION_INCOMPLETE_BITSTREAM.
DATA_STATUSES = {3, 4, 13, 14, 19}
_DATA_WORDS = ("corrupt", "unsupported image type", "bad codestream", "truncated", "premature end", "not a jpeg",
               "unknown image format", "failed to parse", "invalid jpeg", "incomplete bitstream")
_OPERATOR = re.compile(r"Error in (CPU|MIXED|GPU) operator `?([\w.]+)`?", re.IGNORECASE)
_STATUS = re.compile(r"nvImageCodec failure: '#(\d+)'")


class DALIPipelineError(RuntimeError):
    """A DALI failure that is not the shards' fault (one line; the original error is chained as __cause__)."""


@dataclass(frozen=True)
class DaliFailure:
    kind: str  # "read" (reader), "data" (decoder refuses the bytes), "decoder" (decoder fails otherwise), "other"
    backend: str  # "cpu", "mixed", "gpu" or "" when the text names no operator
    operator: str  # e.g. "decoders.image_random_crop", "" when unnamed
    detail: str  # the first line of what DALI says it "encountered"


def _detail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(" ")]
    after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines[-1:]
    return after[0][:300] if after else ""


def classify(text: str) -> DaliFailure:
    """Which kind of failure a DALI error text reports (see the module docstring)."""
    m = _OPERATOR.search(text)
    backend, op = (m.group(1).lower(), m.group(2).removeprefix("nvidia.dali.fn.")) if m else ("", "")
    detail = _detail(text)
    low = text.lower()
    if op.startswith("readers.") or (not op and "webdataset" in low):
        return DaliFailure("read", backend, op, detail)
    if op.startswith(("decoders.", "image_decoder", "peek_image_shape")):
        status = _STATUS.search(text)
        if (status and int(status.group(1)) in DATA_STATUSES) or (not status and any(w in low for w in _DATA_WORDS)):
            return DaliFailure("data", backend, op, detail)
        return DaliFailure("decoder", backend, op, detail)
    return DaliFailure("other", backend, op, detail)


def loader_error(e: BaseException, root: Path | str | None, decode: str) -> Exception:
    """The exception to raise instead of DALI's `e`: a UserError for unreadable shards, else a DALIPipelineError."""
    f = classify(str(e))
    what = "; ".join(x for x in (f"Error in {f.backend.upper()} operator {f.operator}" if f.operator else "",
                                 f.detail) if x)
    if f.kind in ("read", "data"):
        return UserError(f"DALI could not read the shards in {root} ({what[:300]}): a member is corrupt or "
                         f"altered; check them with: cxr-shard verify {root}")
    advice = "this is not a problem with the shards"
    if f.kind == "decoder" and f.backend == "mixed" and decode == "crop":
        advice += ("; the GPU region-of-interest decode fails with some nvImageCodec versions (0.9.x): "
                   "use --dali_decode full")
    elif f.kind == "decoder" and f.backend == "mixed":
        advice += "; try --pipeline pil and run cxr-doctor"
    else:
        advice += "; run cxr-doctor and report the error"
    return DALIPipelineError(f"DALI failed ({what[:300]}): {advice}")
