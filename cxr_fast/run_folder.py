"""The run folder (`cxr-train --out_dir`): every file name and pattern a run writes and the evidence tools read.

One owner for the contract, as `shards/format.py` is for shards: the trainer (`train/outputs.RunFolder`) writes
through these paths, and `cxr-eval`/`cxr-compare`/`cxr-report`/`cxr-predict`/`cxr-export` read through them.
`docs/run-folder.md` is the prose spec. Bump `FORMAT_VERSION` when a file changes meaning.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 1  # also the fold checkpoints' "format_version"

CONFIG = "config.json"            # the resolved TrainConfig (a valid --config file)
FOLDS_CSV = "folds.csv"           # image name -> fold (1..K)
METRICS = "metrics.jsonl"         # one JSON record per fold and epoch
LAST = "last.pth"                 # the fold in progress (for --resume); the next fold overwrites it
OOF = "oof.csv"                   # out-of-fold probabilities: image, fold, one column per label
OOF_LABELS = "oof_labels.csv"     # the truth of oof.csv's rows (blank = unknown)
CV_SUMMARY = "cv_summary.json"    # per-fold results, mean/std, pooled OOF macro-AUC
THRESHOLDS = "thresholds.json"    # operating thresholds chosen on the OOF predictions
REPORT = "report.html"            # the run's evidence page
STATE = "state"                   # state/fold{K}.json + state/fold{K}_oof.npz: finished folds (for --resume)
LOCK = ".lock"                    # advisory lock held by the running job
TENSORBOARD = "tb"                # tb/fold{K}/ event files
CHECKPOINT_GLOB = "*_fold*.pth"
_CHECKPOINT_RE = re.compile(r"^(?P<model>.+)_fold(?P<fold>\d+)\.pth$")


def checkpoint_name(model: str, k: int) -> str:
    """The best-epoch checkpoint of fold k (1-based): `{model}_fold{K}.pth`."""
    return f"{model}_fold{k}.pth"


def parse_checkpoint_name(name: str) -> tuple[str, int] | None:
    """(model, fold) of a `{model}_fold{K}.pth` name, or None."""
    m = _CHECKPOINT_RE.match(name)
    return (m["model"], int(m["fold"])) if m else None


class RunPaths:
    """Paths of one run folder. `model` names the fold checkpoints (None: any model, for readers)."""

    def __init__(self, root: str | Path, model: str | None = None):
        self.root = Path(root)
        self.model_name = model
        self.state = self.root / STATE
        self.config = self.root / CONFIG
        self.folds_csv = self.root / FOLDS_CSV
        self.metrics = self.root / METRICS
        self.last = self.root / LAST
        self.oof = self.root / OOF
        self.oof_labels = self.root / OOF_LABELS
        self.cv_summary = self.root / CV_SUMMARY
        self.thresholds = self.root / THRESHOLDS
        self.report = self.root / REPORT
        self.lock = self.root / LOCK
        self.tensorboard = self.root / TENSORBOARD

    def checkpoint(self, k: int) -> Path:
        if self.model_name is None:
            raise ValueError("RunPaths.checkpoint needs the model name")
        return self.root / checkpoint_name(self.model_name, k)

    def checkpoints(self) -> list[Path]:
        """The fold checkpoints present, sorted by fold (of `model` when given, else of any model)."""
        pattern = f"{self.model_name}_fold*.pth" if self.model_name else CHECKPOINT_GLOB
        found = [p for p in self.root.glob(pattern) if parse_checkpoint_name(p.name)]
        return sorted(found, key=lambda p: (parse_checkpoint_name(p.name)[1], p.name))

    def fold_summary(self, k: int) -> Path:
        return self.state / f"fold{k}.json"

    def fold_oof(self, k: int) -> Path:
        return self.state / f"fold{k}_oof.npz"

    def tb_fold(self, k: int) -> Path:
        return self.tensorboard / f"fold{k}"
