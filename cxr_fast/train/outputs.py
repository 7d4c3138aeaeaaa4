"""Writing the run folder (`--out_dir`; names in `cxr_fast.run_folder`): the set-up of a fresh or resumed folder
(config, folds.csv, stale-file clean-up), the per-epoch log and the OOF/submission CSVs. Only rank 0 writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_fast import dist
from cxr_fast.atomic import atomic_path, write_json_atomic
from cxr_fast.data.folds import write_folds_csv
from cxr_fast.disk import on_disk_full
from cxr_fast.errors import UserError
from cxr_fast.run_folder import RunPaths
from cxr_fast.train import resume
from cxr_fast.train.config import TrainConfig, config_differences


class RunFolder(RunPaths):
    """The writer's side of the run folder: its paths come from `cxr_fast.run_folder`."""

    def __init__(self, out_dir: str | Path, model_name: str):
        super().__init__(out_dir, model_name)

    def prepare(self, cfg: TrainConfig, names: list[str], folds: np.ndarray) -> None:
        """Rank 0: a fresh run removes what an earlier run left (its state, last.pth, metrics); a resumed one checks
        that its settings and folds are those of the interrupted run. Then config.json and folds.csv are written."""
        if dist.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            if cfg.resume:
                self._check_resumable(cfg)
                resume.check_folds(self.folds_csv, names, folds, cfg.image_col)
            else:
                self._remove_stale()
            self.state.mkdir(exist_ok=True)
            write_json_atomic(self.config, cfg.to_dict())
            write_folds_csv(self.folds_csv, names, folds, image_col=cfg.image_col)
        dist.wait_for_main()

    def _remove_stale(self) -> None:
        """A fresh run in a used folder: what an earlier run left would mix into this one's outputs (an old fold
        checkpoint in an `outputs/*_fold*.pth` ensemble, an old oof.csv or report), so it goes, and the log says so."""
        old = [self.state, self.last, self.metrics, self.oof, self.oof_labels, self.cv_summary, self.thresholds,
               self.report, self.tensorboard, *self.checkpoints()]
        removed = []
        for stale in old:
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
            else:
                continue
            removed.append(stale.name)
        if removed:
            print(f"{self.root}: a fresh run (no --resume): removed the earlier run's {', '.join(removed)}", flush=True)

    def _check_resumable(self, cfg: TrainConfig) -> None:
        if not self.config.exists():
            return
        try:
            old = json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.config}: unreadable ({e}); use another --out_dir or drop --resume") from None
        diff = config_differences(old, cfg)
        if diff:
            raise UserError(f"{self.config}: --resume with different settings than the interrupted run: {'; '.join(diff)}"
                            f" (use another --out_dir, drop --resume, or go back to those settings)")

    def append_metrics(self, rec: dict) -> None:
        if dist.is_main():
            with open(self.metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def save_fold_result(self, k: int, result: dict, index: np.ndarray, probs: np.ndarray) -> None:
        if dist.is_main():
            with on_disk_full(self.state, f"fold {k}'s result", hint="then run the same command with --resume"):
                with atomic_path(self.fold_oof(k)) as tmp, open(tmp, "wb") as f:
                    np.savez(f, index=index, probs=probs)
                write_json_atomic(self.fold_summary(k), result)

    def completed_fold(self, k: int) -> dict | None:
        """A finished fold's summary (for --resume), or None."""
        done = self.fold_summary(k)
        if done.exists() and self.checkpoint(k).exists():
            return json.loads(done.read_text())
        return None

    def load_oof(self, folds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(index, probs) of the finished folds' best-epoch validation predictions, sorted by index."""
        idx, probs = [], []
        for k in folds:
            z = np.load(self.fold_oof(k))
            idx.append(z["index"])
            probs.append(z["probs"])
        index = np.concatenate(idx)
        order = np.argsort(index)
        return index[order], np.concatenate(probs)[order]


def write_predictions_csv(path: str | Path, names: list[str], label_names: list[str], probs: np.ndarray,
                          image_col: str = "Image_name", extra: dict | None = None) -> None:
    """`Image_name` + one probability column per label, written atomically."""
    path = Path(path)
    df = pd.DataFrame(probs, columns=label_names)
    for k, v in reversed(list((extra or {}).items())):
        df.insert(0, k, v)
    df.insert(0, image_col, names)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")  # float32 round-trips exactly


def write_labels_csv(path: str | Path, names: list[str], label_names: list[str], labels: np.ndarray,
                     image_col: str = "Image_name") -> None:
    """`Image_name` + one 0/1 column per label (blank = unknown), written atomically: the truth beside `oof.csv`,
    as `cxr-eval --truth` and `cxr-compare` read it."""
    df = pd.DataFrame(labels, columns=label_names).astype("Int64")
    df.insert(0, image_col, names)
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False)
