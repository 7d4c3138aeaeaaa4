"""Write the fold ensemble as ONNX (torch.onnx, dynamo exporter) or TorchScript (torch.jit.trace), with its
metadata in the file, then run the written file (onnxruntime / torch.jit.load) and require that it matches PyTorch.

The file appears at its final path only after that check passes (written beside it, then renamed): a failed export
or a mismatch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from cxr_fast.atomic import atomic_path
from cxr_fast.deploy.ensemble import DeployEnsemble, build_ensemble
from cxr_fast.errors import UserError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # max |p_exported - p_pytorch| over a check batch
METADATA_KEYS = ("labels", "img_size", "in_chans", "model", "folds", "tta", "input", "output", "preprocess",
                 "thresholds")
ONNX_MAX_BYTES = 2**31 - 1  # protobuf's limit for a single-file model
DYNAMO_MIN_OPSET = 18


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ code prints there, past sys.stdout) for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _export_program(module: DeployEnsemble, example: torch.Tensor, opset: int | None):
    """The ModelProto from torch.onnx: the dynamo exporter (the default, opset >= 18); the TorchScript-based one for
    an older --opset, which the dynamo exporter cannot produce (its version converter fails on these graphs)."""
    import onnx

    with warnings.catch_warnings(), _quiet_stdout():  # the TorchScript-based exporter prints its graph on failure
        warnings.simplefilter("ignore")
        if opset is not None and opset < DYNAMO_MIN_OPSET:
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, input_names=["images"], output_names=["probs"],
                              dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
            return onnx.load_model_from_string(buf.getvalue())
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(module, (example,), None, input_names=["images"], output_names=["probs"],
                                    dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                                    verbose=False)
        return program.model_proto


def _write_onnx(module: DeployEnsemble, example: torch.Tensor, path: Path, meta: dict, opset: int | None) -> int:
    import onnx

    what = f"opset {opset}" if opset else "the default opset"
    try:
        proto = _export_program(module, example, opset)
    except Exception as e:  # noqa: BLE001 - the exporters' errors come in many types; say which model and opset
        raise UserError(f"torch.onnx could not export model {meta['model']} at {what} ({_first_line(e)}); "
                        "try another --opset or --format torchscript") from None
    got = _opset(proto)
    if opset is not None and got != opset:
        raise UserError(f"--opset {opset}: torch.onnx produced opset {got} instead; try another --opset")
    onnx.helper.set_model_props(proto, meta)
    if proto.ByteSize() > ONNX_MAX_BYTES:
        raise UserError(f"the ensemble is {proto.ByteSize() / 2**30:.1f} GiB, above ONNX's 2 GiB single-file limit; "
                        "export fewer folds or use --format torchscript")
    onnx.save_model(proto, str(path))
    return got


def _opset(proto) -> int | None:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _write_torchscript(module: DeployEnsemble, example: torch.Tensor, path: Path, meta: dict) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream and traces warn about shape-dependent code
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"torch.jit.trace failed for model {meta['model']} ({_first_line(e)}); "
                            "try --format onnx") from None
        torch.jit.save(traced, str(path), _extra_files=meta)


def run_exported(fmt: str, path: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities of an exported file for a uint8 (B, 1, S, S) batch, through onnxruntime or torch.jit.load."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(["probs"], {"images": images})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()


def read_metadata(fmt: str, path: str | Path) -> dict[str, str]:
    """The metadata written by `export` (only the keys present in the file)."""
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    extra = dict.fromkeys(METADATA_KEYS, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items() if v}


def check_exported(fmt: str, path: Path, module: DeployEnsemble, images: np.ndarray, shown: str) -> float:
    """Max |exported - PyTorch| on `images`; a UserError above TOLERANCE (or a wrong shape / dtype)."""
    with torch.no_grad():
        want = module(torch.from_numpy(images)).numpy()
    try:
        got = run_exported(fmt, path, images)
    except Exception as e:  # noqa: BLE001 - any failure to run the written file fails the export
        raise UserError(f"{shown}: the exported {fmt} model does not run ({_first_line(e)}); nothing written") from None
    if got.shape != want.shape or got.dtype != np.float32:
        raise UserError(f"{shown}: the exported {fmt} model returns {got.dtype} {got.shape}, expected float32 "
                        f"{want.shape}; nothing written")
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise UserError(f"{shown}: the exported {fmt} model's probabilities differ from PyTorch's by up to {diff:.3g} "
                        f"(tolerance {TOLERANCE:g}); nothing written")
    return diff


def export(paths: list[str | Path], fmt: str, out: str | Path, *, tta: bool = False, opset: int | None = None,
           check_batch: int = 3, seed: int = 0) -> dict:
    """Export the fold checkpoints `paths` to `out`; returns {"path", "metadata", "max_abs_diff", "opset"}."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if opset is not None and fmt != "onnx":
        raise UserError("--opset applies to --format onnx only")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name, e.g. {out / 'model.onnx'}")
    module, meta = build_ensemble(paths, tta)
    size, chans = int(meta["img_size"]), 1
    g = torch.Generator().manual_seed(seed)
    example = torch.randint(0, 256, (2, chans, size, size), dtype=torch.uint8, generator=g)
    images = torch.randint(0, 256, (check_batch, chans, size, size), dtype=torch.uint8, generator=g).numpy()
    written_opset = None
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            written_opset = _write_onnx(module, example, tmp, meta, opset)
        else:
            _write_torchscript(module, example, tmp, meta)
        diff = check_exported(fmt, tmp, module, images, str(out))
    return {"path": str(out), "metadata": meta, "max_abs_diff": diff, "opset": written_opset}


def labels_of(meta: dict) -> list[str]:
    return list(json.loads(meta["labels"]))
