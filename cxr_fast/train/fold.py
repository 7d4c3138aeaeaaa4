"""One fold: its loaders and model, its epochs with validation and early stopping, the best checkpoint (with its
validation predictions), and `last.pth` after every epoch so `--resume` continues where a kill stopped it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch

from cxr_fast import dist, seeds
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.errors import UserError
from cxr_fast.evaluate.metrics import macro_auc
from cxr_fast.model import build_model, unwrap
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.losses import build_loss
from cxr_fast.pipelines import build_loader
from cxr_fast.train import preempt, resume
from cxr_fast.train.amp import Amp
from cxr_fast.train.checkpoint import DAMAGED_LAST, best_checkpoint, load_checkpoint, save_atomic
from cxr_fast.train.config import TrainConfig
from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
from cxr_fast.train.infer import validate
from cxr_fast.train.logger import open_logger
from cxr_fast.train.outputs import RunFolder
from cxr_fast.train.run_data import RunData
from cxr_fast.train.speed import maybe_compile, use_channels_last


@dataclass
class FoldState:
    """What a fold carries from epoch to epoch; saved in last.pth under these names (a stable contract)."""

    epoch: int = 0                    # last finished epoch (1-based; 0 = none)
    step: int = 0                     # optimiser steps so far (the schedule's position)
    best_auc: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0               # epochs since the last improvement (early stopping)
    saved_any: bool = False
    best_index: torch.Tensor | None = None   # the best epoch's validation predictions: sample index ...
    best_probs: torch.Tensor | None = None   # ... and probabilities (the fold's OOF rows)
    best_per_label: dict | None = None
    best_sparsity: float | None = None
    mid_batches: int = 0              # batches done of epoch `epoch + 1` when a signal stopped it (0 = none)
    mid_tally: torch.Tensor | None = None    # ... and its step counts (loss sum, skips) so far
    tb_offset: int = 0                # TensorBoard's step minus `step` (after resumes on another number of processes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update_from(self, saved: dict) -> None:
        for f in fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])


class FoldTrainer:
    def __init__(self, cfg: TrainConfig, data: RunData, device: torch.device, folder: RunFolder, k: int):
        self.cfg, self.data, self.device, self.folder, self.k = cfg, data, device, folder, k
        self.rank, self.world = dist.rank(), dist.world()
        self.names = data.label_names
        self.st = FoldState()
        self._build()

    def _build(self) -> None:
        c, k = self.cfg, self.k
        self.train_set, self.val_set = self.data.fold_sets(k)
        common = {"num_workers": c.num_workers, "rank": self.rank, "world": self.world}
        fold_seed = seeds.derive(c.seed, "fold_loader", k)
        train_spec = AugmentSpec.for_training(c.img_size, c.color_jitter)
        options = c.pipeline_options()  # each pipeline takes the options it declares (eval ignores the decode form)
        self.train_loader = build_loader(c.pipeline, self.train_set, train_spec, c.batch_size, self.device,
                                         seed=fold_seed, options=options, **common)
        self.val_loader = build_loader(c.pipeline, self.val_set, AugmentSpec.for_eval(c.img_size), c.eval_batch,
                                       self.device, seed=fold_seed, options=options, **common)
        if len(self.train_loader) == 0:
            raise UserError(f"fold {k}: {len(self.train_set)} training samples make no full batch of --batch_size "
                            f"{c.batch_size} per process; lower --batch_size")
        torch.manual_seed(seeds.derive(c.seed, "torch_init", k))  # the same initial weights on every rank
        self.model = build_model(c, len(self.names)).to(self.device)
        # layout before the optimiser and EMA (both follow it); compile in place, before DDP wraps the model
        self.channels_last = use_channels_last(self.model, self.device, enabled=c.channels_last)
        maybe_compile(self.model, enabled=c.compile)
        torch.manual_seed(seeds.derive(c.seed, "dropout", k, self.rank))  # each rank its own dropout masks
        self.loss_fn = build_loss(c.loss, self.train_set.labels, label_smooth=c.label_smooth).to(self.device)
        self.optimizer = build_optimizer(self.model, c.lr, c.weight_decay)
        self.steps = len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps=int(c.warmup_epochs * self.steps),
                                         total_steps=c.epochs * self.steps)
        self.amp = Amp(self.device, enabled=not c.no_amp, dtype=c.amp_dtype)
        self.ema = ModelEma(self.model, decay=c.ema_decay) if c.ema else None

    def restore(self) -> None:
        """Continue from last.pth when it belongs to this fold; the schedule is re-derived for this run's epoch
        length (resume.seek_schedule), so a resume on another number of processes keeps the lr per epoch right."""
        c, k, st = self.cfg, self.k, self.st
        if c.resume and self.folder.last.exists():
            ck = load_checkpoint(self.folder.last, hint=DAMAGED_LAST)
            if ck.get("fold") == k:
                self.model.load_state_dict(ck["model"])
                self.optimizer.load_state_dict(ck["optimizer"])
                self.amp.load_state_dict(ck["scaler"])
                if self.ema is not None:
                    self.ema.module.load_state_dict(ck["ema"])
                self._restore_rng(ck)
                st.update_from(ck)
                saved_step, st.step = st.step, st.epoch * self.steps
                if st.mid_batches:
                    self._restore_mid_epoch(ck)
                st.tb_offset += saved_step - st.step  # TensorBoard keeps the interrupted run's step axis
                resume.restore_loader(ck, self.train_loader, self.rank, self.world)  # DALI: its pipeline's state
                resume.seek_schedule(self.scheduler, st.step)
                self._reconcile_best()
                dist.log(f"fold {k}: resuming after epoch {st.epoch}"
                         + (f", step {st.mid_batches} of epoch {st.epoch + 1}" if st.mid_batches else "")
                         + f" (best macro-AUC {st.best_auc:.4f})")
                old_world = int(ck.get("world", 1))
                if old_world != self.world:
                    dist.log(f"fold {k}: the interrupted run had {old_world} process(es), this one {self.world}: "
                             f"per-process batch {c.batch_size}, global batch {c.batch_size * self.world} (was "
                             f"{c.batch_size * old_world}), {self.steps} steps/epoch")
        if c.resume and dist.is_main():
            resume.trim_metrics(self.folder.metrics, k, st.epoch)  # epochs that will run again

    def _restore_rng(self, ck: dict) -> None:
        """Each rank continues its own RNG streams (dropout differs per rank); on another number of processes the
        saved streams do not map onto the ranks, so each rank starts a fresh, reproducible one for the rest."""
        states = ck.get("rng_per_rank") or [ck["rng"]]
        if len(states) == self.world:
            resume.set_rng_state(states[self.rank])
        else:
            resume.set_rng_state(ck["rng"])  # numpy / Python streams as rank 0 had them
            torch.manual_seed(seeds.derive(self.cfg.seed, "dropout", self.k, self.rank, int(ck["epoch"])))

    def _restore_mid_epoch(self, ck: dict) -> None:
        """A last.pth written on a stop signal inside epoch `epoch + 1`: continue at the batch after the last one
        trained. Same number of processes: each rank's BatchNorm statistics and loader position come back (PIL:
        the consumed batches are skipped unread; DALI: its pipeline checkpoint), so the run goes on as if never
        stopped. Another number: after as many samples (`resume.mid_epoch_start`), its own order."""
        st, old_world = self.st, int(ck.get("world", 1))
        st.mid_batches = resume.mid_epoch_start(st.mid_batches, old_world, self.world, self.steps)
        st.step += st.mid_batches
        if old_world == self.world and ck.get("buffers_per_rank"):
            resume.load_rank_buffers(ck["buffers_per_rank"][self.rank], self.model,
                                     self.ema.module if self.ema is not None else None)

    def _reconcile_best(self) -> None:
        """A kill between writing the best checkpoint and last.pth leaves a checkpoint newer than last.pth's record
        of it; the checkpoint (weights + its validation predictions) is then the truth."""
        path, st = self.folder.checkpoint(self.k), self.st
        if not path.exists():
            return
        ck = load_checkpoint(path, hint="delete it and run cxr-train --resume again: this fold restarts from last.pth")
        if ck.get("fold") == self.k and ck.get("epoch", 0) > st.best_epoch and "oof_index" in ck:
            auc = ck["val_auc"]
            st.update_from({"best_epoch": ck["epoch"], "best_index": ck["oof_index"], "best_probs": ck["oof_probs"],
                            "saved_any": True, "best_per_label": ck["val_auc_per_label"],
                            "best_auc": auc if auc is not None and math.isfinite(auc) else st.best_auc,
                            "best_sparsity": sparsity(ck["refiner"])})

    def run(self) -> dict:
        """Train the remaining epochs; returns the fold's summary (also written to state/fold{k}.json)."""
        self.restore()
        with open_logger(self.cfg, self.folder, self.k, self.names, self.st.step, self.st.tb_offset) as self.log:
            return self._epochs()

    def _epochs(self) -> dict:
        c, k, st = self.cfg, self.k, self.st
        model = self.model
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=c.find_unused_parameters)
        dist.log(f"fold {k}/{self.data.n_folds}: {len(self.train_set)} train, {len(self.val_set)} val samples, "
                 f"{self.steps} steps/epoch, pipeline {c.pipeline}, device {self.device}"
                 + (f", {self.train_loader.decode} decode" if getattr(self.train_loader, "decode", None) else "")
                 + (", channels_last" if self.channels_last else "") + (", compiled" if c.compile else "")
                 + (f", {self.world} processes x batch {c.batch_size} = global batch {self.world * c.batch_size}"
                    if self.world > 1 else ""))
        stopped = c.patience > 0 and st.bad_epochs >= c.patience  # a resumed fold that had early-stopped
        for epoch in range(st.epoch + 1, 0 if stopped else c.epochs + 1):
            self.train_loader.set_epoch(epoch)
            start = st.mid_batches
            if start:
                self.train_loader.skip_batches(start)
            stats = train_one_epoch(model, self.train_loader, self.loss_fn, self.optimizer, self.scheduler, self.amp,
                                    ema=self.ema, refiner_l1=c.refiner_l1, clip_grad=1.0, in_chans=c.in_chans,
                                    step=st.step, progress=dist.is_main() and c.progress,
                                    desc=f"fold {k} epoch {epoch}/{c.epochs}", should_stop=preempt.should_stop,
                                    tally=st.mid_tally if start else None, on_step=self.log.on_step)
            st.step = stats["step"]
            if stats["stopped"]:
                self._stop(epoch, start + stats["batches"], stats["tally"], model)
            st.mid_batches, st.mid_tally = 0, None
            self._sync_buffers()
            self._end_epoch(epoch, stats, model)
            if preempt.should_stop():  # a signal during validation (the last epoch's too): last.pth is complete
                raise preempt.Preempted(preempt.stop_message(k, epoch + 1, 0, self.steps, self.folder.last))
            if c.patience > 0 and st.bad_epochs >= c.patience:
                dist.log(f"fold {k}: early stop after epoch {epoch} (no improvement for {c.patience} epochs)")
                break
        return self._finish()

    def _sync_buffers(self) -> None:
        """One model on every rank: BatchNorm statistics (and their EMA) averaged over ranks before validation and
        saving (DDP syncs parameters, not buffers)."""
        dist.average_buffers(unwrap(self.model))
        if self.ema is not None:
            dist.average_buffers(self.ema.module)

    def _validate(self, eval_model) -> tuple[float, dict, list, np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        probs, labels, index = validate(eval_model, self.val_loader, self.amp, in_chans=self.cfg.in_chans,
                                        tta=self.cfg.tta)
        index, probs, labels = dist.gather_predictions(probs, labels, index=index)
        val_s = time.perf_counter() - t0
        try:
            auc, per_label, skipped = macro_auc(labels, probs, self.names)
        except ValueError as e:  # non-finite predictions: reported, never turned into a number
            dist.log(f"fold {self.k}: WARNING {e}")
            auc, per_label, skipped = math.nan, {n: None for n in self.names}, list(self.names)
        return auc, per_label, skipped, index, probs, val_s

    def _end_epoch(self, epoch: int, stats: dict, model) -> None:
        st = self.st
        eval_model = self.ema.module if self.ema is not None else unwrap(model)
        auc, per_label, skipped, index, probs, val_s = self._validate(eval_model)
        # `best_epoch == epoch`: the checkpoint of this very epoch was adopted from a run killed before last.pth
        # (`_reconcile_best`); re-running it is not "no improvement"
        improved = math.isfinite(auc) and (auc > st.best_auc or (st.best_epoch == epoch and auc >= st.best_auc))
        if improved or not st.saved_any or (not math.isfinite(st.best_auc) and not math.isfinite(auc)):
            self._save_best(epoch, auc, improved, per_label, index, probs, unwrap(eval_model))
        st.bad_epochs = 0 if improved or epoch == 1 else st.bad_epochs + 1
        rec = {"fold": self.k, "epoch": epoch, "loss": stats["loss"], "lr": stats["lr"], "val_auc": num(auc),
               "val_auc_per_label": per_label, "skipped_labels": skipped, "img_per_s": stats["img_per_s"],
               "data_wait_s": stats["data_wait_s"], "train_s": stats["seconds"], "val_s": val_s,
               "skipped_steps": stats["skipped_steps"], "refiner_sparsity": stats.get("refiner_sparsity"),
               "best_epoch": st.best_epoch}
        self.log.log_epoch(rec, getattr(unwrap(eval_model).refiner, "A", None), st.step)  # metrics.jsonl, TensorBoard
        sp = stats.get("refiner_sparsity")
        dist.log(f"fold {self.k} epoch {epoch}: loss {stats['loss']:.4f}  val macro-AUC {auc:.4f}  "
                 f"{stats['img_per_s']:.0f} img/s  data wait {stats['data_wait_s']:.1f}s"
                 + (f"  A sparsity {sp:.0%}" if sp is not None else "")
                 + (f"  (AUC skips {', '.join(skipped)})" if skipped and math.isfinite(auc) else ""))
        st.epoch = epoch
        self._save_last(model)

    def _stop(self, epoch: int, batches: int, tally: torch.Tensor, model) -> None:
        """A stop signal inside `epoch`: last.pth with the position in it (and every rank's BatchNorm statistics and
        loader state), then `Preempted` (cxr-train's exit code EXIT_RESUMABLE)."""
        self.st.mid_batches, self.st.mid_tally = batches, tally
        self._save_last(model, mid=True)
        raise preempt.Preempted(preempt.stop_message(self.k, epoch, batches, self.steps, self.folder.last))

    def _save_last(self, model, mid: bool = False) -> None:
        """last.pth (rank 0 writes; the others wait on the long-timeout group). Every rank's RNG streams, so a
        resume continues each, and each rank's loader state (DALI's pipeline: the next epoch's order and augmentation
        are not functions of the epoch number); inside an epoch (`mid`) also each rank's buffers."""
        ema = self.ema.module if self.ema is not None else None
        mine = {"rng": resume.rng_state(), "loader": getattr(self.train_loader, "resume_state", lambda: None)()}
        if mid:
            mine["buffers"] = resume.rank_buffers(unwrap(model), ema)
        ranks = dist.gather_objects(mine)
        if dist.is_main():
            ck = {"fold": self.k, **self.st.as_dict(), "model": unwrap(model).state_dict(),
                  "ema": ema.state_dict() if ema is not None else None, "optimizer": self.optimizer.state_dict(),
                  "scheduler": self.scheduler.state_dict(), "scaler": self.amp.state_dict(), "rng": ranks[0]["rng"],
                  "rng_per_rank": [r["rng"] for r in ranks], "world": self.world,
                  "loader_per_rank": [r["loader"] for r in ranks]}
            if mid:
                ck["buffers_per_rank"] = [r["buffers"] for r in ranks]
            save_atomic(ck, self.folder.last, what=f"fold {self.k}'s resumable state")
        dist.wait_for_main()

    def _save_best(self, epoch, auc, improved, per_label, index, probs, em) -> None:
        st = self.st
        st.best_epoch, st.saved_any = epoch, True
        st.best_index, st.best_probs = torch.from_numpy(index), torch.from_numpy(probs)
        if improved:
            st.best_auc = auc
        ck = best_checkpoint(em.backbone.state_dict(), em.refiner.state_dict() if em.refiner is not None else None,
                             labels=self.names, config=self.cfg.to_dict(), fold=self.k, epoch=epoch, val_auc=auc,
                             val_auc_per_label=per_label)
        st.best_per_label, st.best_sparsity = per_label, sparsity(ck["refiner"])
        if dist.is_main():
            # the validation predictions travel with the weights, so a resume can't pair them wrongly
            save_atomic({**ck, "oof_index": st.best_index, "oof_probs": st.best_probs}, self.folder.checkpoint(self.k),
                        what=f"fold {self.k}'s best checkpoint")

    def _finish(self) -> dict:
        st = self.st
        if not math.isfinite(st.best_auc):
            dist.log(f"fold {self.k}: WARNING validation macro-AUC was undefined in every epoch; kept the last epoch")
        result = {"fold": self.k, "best_epoch": st.best_epoch, "val_auc": num(st.best_auc), "epochs_run": st.epoch,
                  "val_auc_per_label": st.best_per_label}
        if st.best_sparsity is not None:
            result["refiner_sparsity"] = st.best_sparsity
        self.folder.save_fold_result(self.k, result, st.best_index.numpy(), st.best_probs.numpy())
        dist.wait_for_main()
        return result


def sparsity(refiner_state: dict | None) -> float | None:
    """Fraction of A's off-diagonal entries that are exactly zero (None without a refiner)."""
    if refiner_state is None:
        return None
    a = refiner_state["A"]
    if len(a) < 2:
        return None  # a 1x1 A has no off-diagonal entry
    return float((a[~torch.eye(len(a), dtype=torch.bool, device=a.device)] == 0).float().mean())


def num(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)
