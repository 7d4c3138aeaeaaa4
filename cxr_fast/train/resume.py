"""What `cxr-train --resume` needs: RNG states in a weights_only-loadable form, the check that an interrupted run
keeps its folds (its settings: `config.config_differences`), the schedule's position, and trimming the log of epochs
that will run again."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_fast.atomic import write_text_atomic
from cxr_fast.errors import UserError


def rng_state() -> dict:
    """torch / CUDA / numpy / Python RNG states as tensors and tuples of ints (torch.load(weights_only=True) safe).

    CUDA: the current device's generator only. Every rank seeds it alike (torch.manual_seed), and a resume may see
    fewer or other GPUs than the run that saved it."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"][0])  # onto the current device
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    v, st, g = s["python"]
    random.setstate((v, tuple(st), g))


def seek_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put a per-step schedule (and its optimiser's lr) at global step `step`. A resumed run seeks to
    epochs_done x steps_per_epoch *of this run*, so resuming on another number of processes gives the lr per epoch of
    an uninterrupted run on that many, instead of carrying over a step count from another epoch length."""
    scheduler.last_epoch = step
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def check_folds(folds_csv: Path, names: list[str], folds: np.ndarray, image_col: str) -> None:
    """UserError if the fold assignment changed since the interrupted run (e.g. the CSV was edited in place)."""
    if not folds_csv.exists():
        return
    try:
        old = pd.read_csv(folds_csv, dtype={image_col: str}, keep_default_na=False)
    except (OSError, ValueError) as e:  # pandas' ParserError is a ValueError
        raise UserError(f"{folds_csv}: unreadable ({type(e).__name__}); use another --out_dir or drop --resume") from None
    if "fold" not in old.columns or old.iloc[:, 0].tolist() != names or old["fold"].tolist() != folds.tolist():
        raise UserError(f"{folds_csv}: --resume would assign other folds than the interrupted run "
                        f"(the CSV or its images changed); use another --out_dir or drop --resume")


def trim_metrics(path: Path, fold: int, last_epoch: int) -> None:
    """Drop the metrics.jsonl lines of `fold`'s epochs after `last_epoch` (they will run again), and a last line
    cut short by a kill during its append."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    recs = []
    for n, ln in enumerate(lines, 1):
        try:
            recs.append(json.loads(ln))
        except json.JSONDecodeError:
            if n < len(lines):
                raise UserError(f"{path}: line {n} is not JSON; fix or delete the file to --resume") from None
    keep = [r for r in recs if not (r["fold"] == fold and r["epoch"] > last_epoch)]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def rank_buffers(*modules) -> list[dict]:
    """This rank's floating buffers (BatchNorm running statistics) of each module (None skipped): they differ per
    rank inside an epoch (`dist.average_buffers` runs at its end), so a mid-epoch last.pth keeps every rank's."""
    return [{n: b.detach().cpu().clone() for n, b in m.named_buffers() if b.is_floating_point()}
            for m in modules if m is not None]


def load_rank_buffers(saved: list[dict], *modules) -> None:
    """Put back what `rank_buffers` saved (same modules, same order)."""
    with torch.no_grad():
        for m, d in zip([m for m in modules if m is not None], saved):
            for n, b in m.named_buffers():
                if n in d:
                    b.copy_(d[n])


def mid_epoch_start(batches: int, old_world: int, world: int, steps: int) -> int:
    """Where a resume continues inside the interrupted epoch: the same batch on as many processes; on another
    number, after as many samples as the interrupted run had consumed (rounded down to a whole batch per process;
    the remaining samples are then not exactly those an uninterrupted run would see: a different split)."""
    if old_world == world:
        return batches
    return min(steps, batches * old_world // world)


def restore_loader(ck: dict, loader, rank: int, world: int) -> None:
    """Give the loader this rank's saved state from last.pth, where there is one (DALI's pipeline checkpoint, saved
    mid-epoch and between epochs; PIL has none: its order and augmentation are functions of the seed and epoch).
    Nothing on another number of processes: the per-rank states do not map onto the ranks."""
    if int(ck.get("world", 1)) != world or not hasattr(loader, "resume_from"):
        return
    state = (ck.get("loader_per_rank") or [None] * world)[rank]
    if state is not None:
        loader.resume_from(state)
