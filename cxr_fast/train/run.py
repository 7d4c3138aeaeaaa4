"""K-fold training run: folds -> per-fold training with early stopping -> checkpoints, OOF, CV summary -> test
ensemble. All the I/O of a run lives here; the engine only sees loaders and models."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cxr_fast import dist
from cxr_fast.atomic import atomic_path, write_json_atomic
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.folds import write_folds_csv
from cxr_fast.data.run_data import RunData
from cxr_fast.errors import UserError
from cxr_fast.inference import ensemble_predict, write_predictions_csv
from cxr_fast.pipelines import build_loader
from cxr_fast.train import resume
from cxr_fast.train.checkpoint import best_checkpoint, load_checkpoint, save_atomic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available (use --device cpu or auto)")
    return torch.device(name)


def parse_folds_to_run(spec: str | None, n_folds: int) -> list[int]:
    if not spec:
        return list(range(1, n_folds + 1))
    try:
        folds = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--folds_to_run must be comma-separated fold numbers like 1,3; got {spec!r}") from None
    bad = [k for k in folds if not 1 <= k <= n_folds]
    if bad or not folds:
        raise UserError(f"--folds_to_run {spec!r}: folds are numbered 1..{n_folds}")
    return folds


class Run:
    """One `cxr-train` invocation. `cfg` is the resolved flag dict (written to config.json)."""

    def __init__(self, cfg: dict, data: RunData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.out = Path(cfg["out_dir"])
        self.state_dir = self.out / "state"
        self.main = dist.is_main()
        self.rank, self.world = dist.rank(), dist.world()

    # ---------------------------------------------------------------- bookkeeping
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def prepare_out_dir(self) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg_path = self.out / "config.json"
            if self.cfg["resume"]:
                resume.check_config(cfg_path, self.cfg)
            else:
                for stale in (self.state_dir, self.out / "last.pth", self.out / "metrics.jsonl"):
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    elif stale.exists():
                        stale.unlink()
            self.state_dir.mkdir(exist_ok=True)
            names, folds = self._present_names_folds()
            folds_csv = self.out / "folds.csv"
            if self.cfg["resume"]:
                resume.check_folds(folds_csv, names, folds, self.cfg["image_col"])
            write_json_atomic(cfg_path, self.cfg)
            write_folds_csv(folds_csv, names, folds, image_col=self.cfg["image_col"])
        dist.barrier()

    def _present_names_folds(self):
        present = np.flatnonzero(self.data.folds > 0)
        return [self.data.names[i] for i in present], self.data.folds[present]

    def append_metrics(self, rec: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint_path(self, k: int) -> Path:
        return self.out / f"{self.cfg['model']}_fold{k}.pth"

    # ---------------------------------------------------------------- building blocks
    def build_model(self, n_labels: int):
        from cxr_fast.model import CXRClassifier
        from cxr_fast.model.backbone import create_backbone
        from cxr_fast.model.refiner import LabelGraphRefiner

        c = self.cfg
        backbone = create_backbone(c["model"], num_classes=n_labels, in_chans=c["in_chans"],
                                   pretrained=c["pretrained"], weights=c["weights"], drop_rate=c["drop_rate"])
        refiner = LabelGraphRefiner(n_labels, alpha=c["refiner_alpha"]) if c["refiner"] else None
        return CXRClassifier(backbone, refiner).to(self.device)

    def loaders(self, k: int):
        c = self.cfg
        train_set, val_set = self.data.fold_sets(k)
        common = {"num_workers": c["num_workers"], "rank": self.rank, "world": self.world}
        if c["pipeline"] == "dali":
            common["hw_decoder_load"] = c["hw_decoder_load"]
        train = build_loader(c["pipeline"], train_set, AugmentSpec.for_training(c["img_size"], c["color_jitter"]),
                             c["batch_size"], self.device, seed=c["seed"] + 1000 * k, **common)
        val = build_loader(c["pipeline"], val_set, AugmentSpec.for_eval(c["img_size"]), c["batch_size"],
                           self.device, seed=c["seed"], **common)
        if len(train) == 0:
            raise UserError(f"fold {k}: {len(train_set)} training samples make no full batch of --batch_size "
                            f"{c['batch_size']} per process; lower --batch_size")
        return train_set, val_set, train, val

    # ---------------------------------------------------------------- one fold
    def train_fold(self, k: int) -> dict:
        from cxr_fast.metrics import macro_auc
        from cxr_fast.model import unwrap
        from cxr_fast.model.ema import ModelEma
        from cxr_fast.model.losses import build_loss
        from cxr_fast.train.amp import Amp
        from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
        from cxr_fast.train.infer import evaluate

        c, names = self.cfg, self.data.label_names
        torch.manual_seed(c["seed"] + k)
        train_set, val_set, train_loader, val_loader = self.loaders(k)
        model = self.build_model(len(names))
        loss_fn = build_loss(c["loss"], train_set.labels, label_smooth=c["label_smooth"]).to(self.device)
        optimizer = build_optimizer(model, c["lr"], c["weight_decay"])
        steps = len(train_loader)
        scheduler = build_scheduler(optimizer, warmup_steps=int(c["warmup_epochs"] * steps),
                                    total_steps=c["epochs"] * steps)
        amp = Amp(self.device, enabled=not c["no_amp"], dtype=c["amp_dtype"])
        ema = ModelEma(model, decay=c["ema_decay"]) if c["ema"] else None
        st = {"epoch": 0, "step": 0, "best_auc": -math.inf, "best_epoch": 0, "bad_epochs": 0, "saved_any": False,
              "best_index": None, "best_probs": None, "best_per_label": None, "best_sparsity": None}

        last = self.out / "last.pth"
        if c["resume"] and last.exists():
            ck = load_checkpoint(last)
            if ck.get("fold") == k:
                model.load_state_dict(ck["model"])
                optimizer.load_state_dict(ck["optimizer"])
                scheduler.load_state_dict(ck["scheduler"])
                amp.load_state_dict(ck["scaler"])
                if ema is not None:
                    ema.module.load_state_dict(ck["ema"])
                resume.set_rng_state(ck["rng"])
                st.update({key: ck[key] for key in st if key in ck})
                self._reconcile_best(k, st)
                self.log(f"fold {k}: resuming after epoch {st['epoch']} (best macro-AUC {st['best_auc']:.4f})")
        if c["resume"] and self.main:
            resume.trim_metrics(self.out / "metrics.jsonl", k, st["epoch"])  # epochs that will run again
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        self.log(f"fold {k}/{self.data.n_folds}: {len(train_set)} train, {len(val_set)} val samples, "
                 f"{steps} steps/epoch, pipeline {c['pipeline']}, device {self.device}")
        stopped = c["patience"] > 0 and st["bad_epochs"] >= c["patience"]  # a resumed fold that had early-stopped
        for epoch in range(st["epoch"] + 1, 0 if stopped else c["epochs"] + 1):
            if os.environ.get("CXR_FAST_FAIL_RANK") == str(self.rank):  # fault injection for the DDP tests
                raise RuntimeError(f"injected failure on rank {self.rank} (CXR_FAST_FAIL_RANK)")
            train_loader.set_epoch(epoch)
            stats = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, amp, ema=ema,
                                    refiner_l1=c["refiner_l1"], clip_grad=1.0, in_chans=c["in_chans"],
                                    step=st["step"], progress=self.main and c["progress"],
                                    desc=f"fold {k} epoch {epoch}/{c['epochs']}")
            st["step"] = stats["step"]
            eval_model = ema.module if ema is not None else unwrap(model)
            t0 = time.perf_counter()
            probs, labels, index = evaluate(eval_model, val_loader, amp, in_chans=c["in_chans"], tta=c["tta"])
            index, probs, labels = dist.gather_predictions(probs, labels, index=index)
            val_s = time.perf_counter() - t0
            try:
                auc, per_label, skipped = macro_auc(labels, probs, names)
            except ValueError as e:  # non-finite predictions: reported, never turned into a number
                self.log(f"fold {k} epoch {epoch}: WARNING {e}")
                auc, per_label, skipped = math.nan, {n: None for n in names}, list(names)
            improved = math.isfinite(auc) and auc > st["best_auc"]
            if improved or not st["saved_any"] or (not math.isfinite(st["best_auc"]) and not math.isfinite(auc)):
                st.update(best_epoch=epoch, best_index=torch.from_numpy(index), best_probs=torch.from_numpy(probs),
                          saved_any=True)
                if improved:
                    st.update(best_auc=auc)
                em = unwrap(eval_model)
                ck = best_checkpoint(
                    em.backbone.state_dict(), em.refiner.state_dict() if em.refiner is not None else None,
                    labels=names, config=c, fold=k, epoch=epoch, val_auc=auc, val_auc_per_label=per_label)
                st.update(best_per_label=per_label, best_sparsity=_sparsity(ck["refiner"]))
                if self.main:
                    # the validation predictions travel with the weights, so a resume can't pair them wrongly
                    save_atomic({**ck, "oof_index": st["best_index"], "oof_probs": st["best_probs"]},
                                self.checkpoint_path(k))
            if improved or epoch == 1:
                st["bad_epochs"] = 0
            else:
                st["bad_epochs"] += 1
            rec = {"fold": k, "epoch": epoch, "loss": stats["loss"], "lr": stats["lr"], "val_auc": _num(auc),
                   "val_auc_per_label": per_label, "skipped_labels": skipped, "img_per_s": stats["img_per_s"],
                   "data_wait_s": stats["data_wait_s"], "train_s": stats["seconds"], "val_s": val_s,
                   "skipped_steps": stats["skipped_steps"], "refiner_sparsity": stats.get("refiner_sparsity"),
                   "best_epoch": st["best_epoch"]}
            self.append_metrics(rec)
            self.log(f"fold {k} epoch {epoch}: loss {stats['loss']:.4f}  val macro-AUC {auc:.4f}  "
                     f"{stats['img_per_s']:.0f} img/s  data wait {stats['data_wait_s']:.1f}s"
                     + (f"  A sparsity {stats['refiner_sparsity']:.0%}" if stats.get("refiner_sparsity") is not None
                        else "") + (f"  (AUC skips {', '.join(skipped)})" if skipped and math.isfinite(auc) else ""))
            st["epoch"] = epoch
            if self.main:
                save_atomic({"fold": k, **st, "model": unwrap(model).state_dict(),
                             "ema": ema.module.state_dict() if ema is not None else None,
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": amp.state_dict(), "rng": resume.rng_state()}, last)
            dist.barrier()
            if c["patience"] > 0 and st["bad_epochs"] >= c["patience"]:
                self.log(f"fold {k}: early stop after epoch {epoch} (no improvement for {c['patience']} epochs)")
                break
        if not math.isfinite(st["best_auc"]):
            self.log(f"fold {k}: WARNING validation macro-AUC was undefined in every epoch; kept the last epoch")
        result = {"fold": k, "best_epoch": st["best_epoch"], "val_auc": _num(st["best_auc"]),
                  "epochs_run": st["epoch"], "val_auc_per_label": st["best_per_label"]}
        if st["best_sparsity"] is not None:
            result["refiner_sparsity"] = st["best_sparsity"]
        if self.main:
            with atomic_path(self.state_dir / f"fold{k}_oof.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, index=st["best_index"].numpy(), probs=st["best_probs"].numpy())
            write_json_atomic(self.state_dir / f"fold{k}.json", result)
        dist.barrier()
        return result

    def _reconcile_best(self, k: int, st: dict) -> None:
        """A kill between writing the best checkpoint and last.pth leaves a checkpoint newer than last.pth's record
        of it; the checkpoint (weights + its validation predictions) is then the truth."""
        path = self.checkpoint_path(k)
        if not path.exists():
            return
        ck = load_checkpoint(path)
        if ck.get("fold") == k and ck.get("epoch", 0) > st["best_epoch"] and "oof_index" in ck:
            auc = ck["val_auc"]
            st.update(best_epoch=ck["epoch"], best_index=ck["oof_index"], best_probs=ck["oof_probs"], saved_any=True,
                      best_auc=auc if auc is not None and math.isfinite(auc) else st["best_auc"],
                      best_per_label=ck["val_auc_per_label"], best_sparsity=_sparsity(ck["refiner"]))

    # ---------------------------------------------------------------- whole run
    def run(self) -> dict:
        c = self.cfg
        self.prepare_out_dir()
        folds = parse_folds_to_run(c["folds_to_run"], self.data.n_folds)
        self.log(f"{len(self.data.label_names)} labels, {int((self.data.folds > 0).sum())} training images, "
                 f"{self.data.n_folds} folds ({self.data.split_method}), running folds {folds}")
        results = []
        for k in folds:
            done = self.state_dir / f"fold{k}.json"
            if c["resume"] and done.exists() and self.checkpoint_path(k).exists():
                self.log(f"fold {k}: already complete, skipping (--resume)")
                results.append(json.loads(done.read_text()))
                continue
            results.append(self.train_fold(k))
        summary = self.write_cv_outputs(results)
        self.predict_test(folds)
        return summary

    def write_cv_outputs(self, results: list[dict]) -> dict:
        from cxr_fast.metrics import macro_auc

        names = self.data.label_names
        idx, probs = [], []
        for r in results:
            z = np.load(self.state_dir / f"fold{r['fold']}_oof.npz")
            idx.append(z["index"])
            probs.append(z["probs"])
        index = np.concatenate(idx)
        order = np.argsort(index)
        index, probs = index[order], np.concatenate(probs)[order]
        labels = self.data.labels[index]
        try:
            oof_auc, oof_per_label, _ = macro_auc(labels, probs, names)
        except ValueError:
            oof_auc, oof_per_label = math.nan, {}
        aucs = np.array([r["val_auc"] if r["val_auc"] is not None else np.nan for r in results], dtype=float)
        summary = {
            "folds": results, "mean_auc": _num(np.nanmean(aucs)) if np.isfinite(aucs).any() else None,
            "std_auc": _num(np.nanstd(aucs)) if np.isfinite(aucs).any() else None,
            "oof_macro_auc": _num(oof_auc), "oof_auc_per_label": oof_per_label, "labels": names,
            "split_method": self.data.split_method,
        }
        if self.main:
            write_predictions_csv(self.out / "oof.csv", [self.data.names[i] for i in index], names, probs,
                                  image_col=self.cfg["image_col"], extra={"fold": self.data.folds[index]})
            write_json_atomic(self.out / "cv_summary.json", summary)
            self.log("\nfold  best_epoch  val_macro_auc")
            for r in results:
                self.log(f"{r['fold']:>4}  {r['best_epoch']:>10}  {_fmt(r['val_auc'])}")
            self.log(f"mean  {'':>10}  {_fmt(summary['mean_auc'])} ± {_fmt(summary['std_auc'])}   "
                     f"(OOF macro-AUC {_fmt(summary['oof_macro_auc'])})")
            self.log(f"wrote {self.out / 'oof.csv'}, {self.out / 'cv_summary.json'}, {self.out / 'metrics.jsonl'}")
        return summary

    def predict_test(self, folds: list[int]) -> None:
        from cxr_fast.inference import load_fold_checkpoints
        from cxr_fast.train.amp import Amp

        c = self.cfg
        test = self.data.test_set()
        if test is None:
            self.log("no --test_dir: skipping test predictions")
            return
        ckpts = load_fold_checkpoints([self.checkpoint_path(k) for k in folds])
        index, probs = ensemble_predict(ckpts, test, pipeline=c["pipeline"] if self.data.test_dir is None else "pil",
                                        batch_size=c["batch_size"], device=self.device, tta=c["tta"],
                                        num_workers=c["num_workers"],
                                        amp=Amp(self.device, enabled=not c["no_amp"], dtype=c["amp_dtype"]),
                                        progress=self.main and c["progress"], rank=self.rank, world=self.world)
        if self.main:
            write_predictions_csv(c["out_csv"], [self.data.test_names[i] for i in index], self.data.label_names,
                                  probs, image_col=c["image_col"])
            self.log(f"wrote {c['out_csv']} ({len(index)} test images, mean of {len(ckpts)} fold(s)"
                     f"{', flip TTA' if c['tta'] else ''})")


def _sparsity(refiner_state: dict | None) -> float | None:
    """Fraction of A's off-diagonal entries that are exactly zero (None without a refiner)."""
    if refiner_state is None:
        return None
    a = refiner_state["A"]
    return float((a[~torch.eye(len(a), dtype=torch.bool, device=a.device)] == 0).float().mean())


def _num(x):
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
