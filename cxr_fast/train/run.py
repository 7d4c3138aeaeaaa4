"""K-fold training run: folds -> per-fold training (`fold.FoldTrainer`) -> OOF predictions, CV summary,
thresholds and report -> test-set ensemble. Files go through `outputs.RunFolder`; only rank 0 writes."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from cxr_fast import dist
from cxr_fast.atomic import write_json_atomic
from cxr_fast.errors import UserError
from cxr_fast.evaluate.metrics import macro_auc
from cxr_fast.train import preempt
from cxr_fast.train.amp import Amp
from cxr_fast.train.checkpoint import load_fold_checkpoints
from cxr_fast.train.config import TrainConfig
from cxr_fast.train.fold import FoldTrainer, num
from cxr_fast.train.outputs import RunFolder, write_labels_csv, write_predictions_csv
from cxr_fast.train.predict import ensemble_predict
from cxr_fast.train.run_data import RunData


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


def hold_out_dir(out_dir: str) -> contextlib.AbstractContextManager:
    """The run folder's lock for the whole run (rank 0 only: one holder per job), taken before anything in the folder
    is touched: a second job into the same --out_dir stops at start-up naming the holder (`cxr_fast.lock`)."""
    from cxr_fast.lock import folder_lock

    return folder_lock(out_dir, "cxr-train") if dist.is_main() else contextlib.nullcontext()


class Run:
    """One `cxr-train` invocation over `data` with the settings `cfg`."""

    def __init__(self, cfg: TrainConfig, data: RunData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.folder = RunFolder(cfg.out_dir, cfg.model)

    def run(self) -> dict:
        c, data = self.cfg, self.data
        present = np.flatnonzero(data.folds > 0)  # rows --skip_bad left out of the shards have fold 0
        folds = parse_folds_to_run(c.folds_to_run, data.n_folds)  # a bad value stops before anything is removed
        self.folder.prepare(c, [data.names[i] for i in present], data.folds[present])
        dist.check_shared(self.folder.root, "--out_dir")
        dist.log(f"{len(data.label_names)} labels, {len(present)} training images, {data.n_folds} folds "
                 f"({data.split_method}), running folds {folds}")
        # --resume: every finished fold, also those of earlier invocations (--folds_to_run subsets), is the run's
        done = {k: self.folder.completed_fold(k) for k in range(1, data.n_folds + 1)} if c.resume else {}
        results = {k: r for k, r in done.items() if r is not None}
        for k in folds:
            if k in results:
                dist.log(f"fold {k}: already complete, skipping (--resume)")
            else:
                preempt.check_between(f"fold {k}")
                results[k] = FoldTrainer(c, data, self.device, self.folder, k).run()
        folds = sorted(results)
        results = [results[k] for k in folds]
        summary = self.write_cv_outputs(results)
        preempt.check_between("the test-set predictions")
        self.predict_test(folds)
        self.write_report()
        return summary

    def write_cv_outputs(self, results: list[dict]) -> dict:
        names, f = self.data.label_names, self.folder
        index, probs = f.load_oof([r["fold"] for r in results])
        labels = self.data.labels[index]
        try:
            oof_auc, oof_per_label, _ = macro_auc(labels, probs, names)
        except ValueError:
            oof_auc, oof_per_label = math.nan, {}
        aucs = np.array([r["val_auc"] if r["val_auc"] is not None else np.nan for r in results], dtype=float)
        finite = np.isfinite(aucs).any()
        summary = {
            "folds": results, "mean_auc": num(np.nanmean(aucs)) if finite else None,
            "std_auc": num(np.nanstd(aucs)) if finite else None,
            "oof_macro_auc": num(oof_auc), "oof_auc_per_label": oof_per_label, "labels": names,
            "split_method": self.data.split_method,
        }
        if dist.is_main():
            image_names = [self.data.names[i] for i in index]
            write_predictions_csv(f.oof, image_names, names, probs, image_col=self.cfg.image_col,
                                  extra={"fold": self.data.folds[index]})
            write_labels_csv(f.oof_labels, image_names, names, labels, image_col=self.cfg.image_col)
            write_json_atomic(f.cv_summary, summary)
            self._write_thresholds(labels, probs)
            self._print_summary(results, summary)
        return summary

    def _write_thresholds(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """Operating thresholds from the OOF predictions; odd data (one class, a fold subset) never fails a run."""
        from cxr_fast.evaluate.thresholds import write_thresholds

        try:
            write_thresholds(self.folder.thresholds, labels, probs, self.data.label_names)
        except (OSError, ValueError) as e:
            dist.log(f"WARNING thresholds.json not written: {e}")

    def write_report(self) -> None:
        """report.html: the run's evidence in one self-contained page (`cxr-report RUN_DIR` rebuilds it)."""
        if not dist.is_main():
            return
        from cxr_fast.evaluate.run_report import write_report

        try:
            dist.log(f"wrote {write_report(self.folder.root, seed=self.cfg.seed)}")
        except (OSError, ValueError, RuntimeError) as e:
            dist.log(f"WARNING report.html not written: {e}")

    def _print_summary(self, results: list[dict], summary: dict) -> None:
        dist.log("\nfold  best_epoch  val_macro_auc")
        for r in results:
            dist.log(f"{r['fold']:>4}  {r['best_epoch']:>10}  {_fmt(r['val_auc'])}")
        dist.log(f"mean  {'':>10}  {_fmt(summary['mean_auc'])} ± {_fmt(summary['std_auc'])}   "
                 f"(OOF macro-AUC {_fmt(summary['oof_macro_auc'])})")
        f = self.folder
        dist.log(f"wrote {f.oof}, {f.oof_labels}, {f.cv_summary}, {f.metrics}")

    def predict_test(self, folds: list[int]) -> None:
        c = self.cfg
        test = self.data.test_set()
        if test is None:
            dist.log("no --test_dir: skipping test predictions")
            return
        ckpts = load_fold_checkpoints([self.folder.checkpoint(k) for k in folds])
        index, probs = ensemble_predict(ckpts, test, pipeline=c.pipeline if self.data.test_dir is None else "pil",
                                        batch_size=c.eval_batch, device=self.device, tta=c.tta,
                                        num_workers=c.num_workers,
                                        amp=Amp(self.device, enabled=not c.no_amp, dtype=c.amp_dtype),
                                        progress=dist.is_main() and c.progress, rank=dist.rank(), world=dist.world())
        if dist.is_main():
            write_predictions_csv(c.out_csv, [self.data.test_names[i] for i in index], self.data.label_names,
                                  probs, image_col=c.image_col)
            dist.log(f"wrote {c.out_csv} ({len(index)} test images, mean of {len(ckpts)} fold(s)"
                     f"{', flip TTA' if c.tta else ''})")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
