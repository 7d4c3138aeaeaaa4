"""Checkpoints: atomic writes, safe (weights_only) loads, checkpoint -> model, and the keys users and `cxr-predict` rely on.

Best-of-fold `{model}_fold{K}.pth` keys: model (backbone state dict, EMA weights when EMA is on), refiner (its state
dict, with "A"; None with --no-refiner), labels, config, fold, epoch, val_auc, val_auc_per_label, format_version,
and that epoch's validation predictions oof_index (sample indices) and oof_probs (added by `train.fold`).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import torch

from cxr_fast.atomic import atomic_path
from cxr_fast.disk import on_disk_full
from cxr_fast.errors import UserError, first_line
from cxr_fast.run_folder import FORMAT_VERSION
from cxr_fast.train.config import TrainConfig

CHECKPOINT_VERSION = FORMAT_VERSION


def save_atomic(obj, path: str | Path, what: str = "a checkpoint") -> None:
    """torch.save to a temporary name in the same folder, fsync, then rename: never a half-written file.
    Tensors are saved from the CPU, so a plain torch.load works on a machine without a GPU. A full disk (or quota)
    is one UserError line naming `path` and `what` (`cxr_fast.disk`); the temporary file is gone by then."""
    with on_disk_full(path, what, hint="then run the same command with --resume"), atomic_path(path) as tmp:
        torch.save(_to_cpu(obj), tmp)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, _to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state_dict's per-module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


DAMAGED_FOLD = ("retrain that fold (delete this file and the run folder's state/fold<K>.json, then cxr-train --resume) "
                "or leave this file out of the checkpoint list / glob")
DAMAGED_LAST = "delete it to restart this fold from its first epoch (cxr-train --resume keeps the finished folds)"


def load_checkpoint(path: str | Path, map_location="cpu", hint: str = DAMAGED_FOLD) -> dict:
    """Load with weights_only=True; a file that needs arbitrary pickle execution is refused. A truncated or corrupt
    file (a kill or full disk during a copy, a bad transfer) is one UserError line naming it and, `hint`, what to do,
    whatever torch.load raised (zip reader errors, EOFError, unpickling or seek errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # a damaged pickle stream fails the same unpickler
            raise UserError(_damaged(path, e, hint)) from None
        raise UserError(f"{path}: refused: the checkpoint needs pickle code execution to load "
                        f"({first_line(e, 160)}); only weights_only checkpoints are accepted") from None
    except torch.cuda.OutOfMemoryError:
        raise  # the device's problem (map_location), not the file's
    except PermissionError as e:
        raise UserError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            struct.error, zipfile.BadZipFile) as e:
        raise UserError(_damaged(path, e, hint)) from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a cxr_fast checkpoint (top level is {type(ckpt).__name__})")
    return ckpt


def _damaged(path: Path, e: BaseException, hint: str) -> str:
    return (f"{path}: damaged or not a checkpoint (truncated or corrupt: {first_line(e, 120, with_type=True)}); "
            f"{hint}")


def best_checkpoint(model_state: dict, refiner_state: dict | None, *, labels: list[str], config: dict, fold: int,
                    epoch: int, val_auc: float, val_auc_per_label: dict) -> dict:
    return {
        "model": model_state, "refiner": refiner_state, "labels": list(labels), "config": config, "fold": fold,
        "epoch": epoch, "val_auc": val_auc, "val_auc_per_label": val_auc_per_label,
        "format_version": CHECKPOINT_VERSION,
    }


def check_fold_checkpoint(path: str | Path, ckpt: dict) -> None:
    for key in ("model", "refiner", "labels", "config"):
        if key not in ckpt:
            raise UserError(f"{path}: not a cxr_fast fold checkpoint (no {key!r} key)")


def model_from_checkpoint(ckpt: dict, device: torch.device):
    """A CXRClassifier with the checkpoint's backbone and refiner weights, in eval mode."""
    from cxr_fast.model import build_model

    cfg = TrainConfig.from_saved(ckpt["config"]).replace(refiner=bool(ckpt.get("refiner")))
    n = len(ckpt["labels"])
    model = build_model(cfg, n, pretrained=False)
    try:
        model.backbone.load_state_dict(ckpt["model"])
        if model.refiner is not None:
            model.refiner.load_state_dict(ckpt["refiner"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit a {cfg.model!r} model with {n} labels "
                        f"({first_line(e)})") from None
    return model.to(device).eval()


def load_fold_checkpoints(paths: list[str | Path]) -> list[tuple[Path, dict]]:
    """Load every checkpoint and check that they agree on the label list."""
    if not paths:
        raise UserError("no checkpoints given (or the glob matched nothing)")
    loaded = []
    for p in paths:
        ckpt = load_checkpoint(p)
        check_fold_checkpoint(p, ckpt)
        loaded.append((Path(p), ckpt))
    ref_path, ref = loaded[0]
    for p, c in loaded[1:]:
        if list(c["labels"]) != list(ref["labels"]):
            raise UserError(f"{p}: its labels {c['labels']} differ from {ref_path}'s {ref['labels']}")
    return loaded
