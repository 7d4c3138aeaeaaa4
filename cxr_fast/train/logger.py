"""The run's log, one code path with two sinks: every epoch record goes to `metrics.jsonl` (through the run folder,
its owner: keys and format are a contract, docs/run-folder.md) and, where the `tensorboard` package is installed, to
TensorBoard event files under `<out_dir>/tb/fold{K}/` (docs/tensorboard.md). A sink shows what it can of the same
records: metrics.jsonl only the epoch records; TensorBoard also a few scalars every `log_every` steps, the coupling
matrix A as a heatmap and the run's config. Only rank 0 writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cxr_fast import dist
from cxr_fast.errors import UserError

if TYPE_CHECKING:
    from cxr_fast.train.config import TrainConfig
    from cxr_fast.train.outputs import RunFolder

TB_MISSING = "tensorboard not installed: no TensorBoard logs (pip install 'cxr_fast[tensorboard]')"

# metrics.jsonl key -> TensorBoard tag, for the per-epoch scalars (step = the fold's optimiser step count at the epoch's
# end: one x-axis with the per-step tags, so a resume's purge covers both). Also, per epoch:
# `val_auc/<label>` (val_auc_per_label), `speed/data_wait_share` (data_wait_s / train_s) and the image `refiner/A`.
EPOCH_TAGS = {"loss": "epoch/loss", "lr": "epoch/lr", "skipped_steps": "epoch/skipped_steps",
              "val_auc": "val/macro_auc", "img_per_s": "speed/img_per_s", "data_wait_s": "speed/data_wait_s",
              "refiner_sparsity": "refiner/sparsity"}
# per-step scalar name -> tag (step = the fold's optimiser step count, 1-based, every `log_every` steps)
STEP_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
             "skipped_steps": "train/skipped_steps"}

StepHook = Callable[[int, Callable[[], dict]], None]


class Sink(Protocol):
    """Where records go. `takes_steps`: whether per-step scalars are wanted (else they are never read)."""

    takes_steps: bool

    def config(self, cfg: dict) -> None: ...
    def epoch(self, rec: dict, coupling, step: int) -> None: ...
    def step(self, step: int, scalars: dict) -> None: ...
    def close(self) -> None: ...


class MetricsSink:
    """metrics.jsonl: the epoch records, appended by the run folder (`RunFolder.append_metrics`)."""

    takes_steps = False

    def __init__(self, append: Callable[[dict], None]):
        self.append = append

    def config(self, cfg: dict) -> None:
        pass  # config.json holds it

    def epoch(self, rec: dict, coupling, step: int) -> None:
        self.append(rec)

    def step(self, step: int, scalars: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Event files in `log_dir` (one TensorBoard run per fold). `purge_step`: on a resume, the first step that runs
    again; TensorBoard hides what an interrupted run logged from that step on (a SessionLog.START marker)."""

    takes_steps = True

    def __init__(self, log_dir: str | Path, labels: list[str], purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.labels = list(labels)
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=60)

    def config(self, cfg: dict) -> None:
        """The settings as a markdown table (TEXT tab: every setting, readable) and as hparams in this same run
        (HPARAMS tab: runs and folds side by side with their val/macro_auc, e.g. the refiner ablation's runs)."""
        from torch.utils.tensorboard.summary import hparams

        rows = "\n".join(f"| {k} | {_show(v)} |" for k, v in cfg.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + rows, 0)
        hp = {k: (_show(v) if isinstance(v, list) else v) for k, v in cfg.items() if v is not None}
        for summary in hparams(hp, {EPOCH_TAGS["val_auc"]: 0.0}):  # the metric's values: the scalars of that tag
            self.writer.file_writer.add_summary(summary)

    def epoch(self, rec: dict, coupling, step: int) -> None:
        w = self.writer
        for key, tag in EPOCH_TAGS.items():
            _scalar(w, tag, rec.get(key), step)
        for name, auc in (rec.get("val_auc_per_label") or {}).items():
            _scalar(w, f"val_auc/{name}", auc, step)
        if rec.get("data_wait_s") is not None and rec.get("train_s"):
            _scalar(w, "speed/data_wait_share", rec["data_wait_s"] / rec["train_s"], step)
        if coupling is not None:
            title = f"fold {rec['fold']} epoch {rec['epoch']}"
            w.add_image("refiner/A", coupling_image(coupling, self.labels, title), step, dataformats="HWC")
        w.flush()

    def step(self, step: int, scalars: dict) -> None:
        for key, v in scalars.items():
            _scalar(self.writer, STEP_TAGS.get(key, f"train/{key}"), v, step)

    def close(self) -> None:
        self.writer.close()


class RunLogger:
    """One fold's log: `log_config` once, `on_step` handed to the training loop, `log_epoch` per epoch; a context
    manager that closes the sinks (also on an exception, so a preempted fold's last steps are on disk)."""

    def __init__(self, sinks: list[Sink], log_every: int = 50, step_offset: int = 0):
        self.sinks, self.log_every, self.step_offset = list(sinks), max(1, int(log_every)), int(step_offset)

    @property
    def on_step(self) -> StepHook | None:
        """The training loop's per-step callback, `(step, scalars_fn)`; None when no sink wants steps (no cost)."""
        return self._step if any(s.takes_steps for s in self.sinks) else None

    def _step(self, step: int, scalars: Callable[[], dict]) -> None:
        if step % self.log_every == 0:
            values = scalars()  # the only place the per-step values are read (a device sync every log_every steps)
            for s in self.sinks:
                if s.takes_steps:
                    s.step(step + self.step_offset, values)

    def log_config(self, cfg: dict) -> None:
        for s in self.sinks:
            s.config(cfg)

    def log_epoch(self, rec: dict, coupling=None, step: int = 0) -> None:
        """`rec`: the metrics.jsonl record; `coupling`: the refiner's A (tensor or array) when there is one; `step`:
        the fold's optimiser steps at the epoch's end (TensorBoard's x-axis)."""
        for s in self.sinks:
            s.epoch(rec, coupling, step + self.step_offset)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
        self.sinks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_said_missing = False


def tensorboard_wanted(setting: bool | None) -> bool:
    """Whether to write TensorBoard logs: `--tensorboard` (True) needs the package (UserError without it), the
    default (None) uses it where installed and says once when it is not, `--no-tensorboard` (False) never."""
    global _said_missing
    if setting is False:
        return False
    try:
        import torch.utils.tensorboard  # noqa: F401 - imports the tensorboard package (and checks its version)
    except ImportError as e:
        if setting:
            raise UserError(f"--tensorboard: {e} (pip install 'cxr_fast[tensorboard]', or --no-tensorboard)") from None
        if not _said_missing:
            dist.log(TB_MISSING)
            _said_missing = True
        return False
    return True


def open_logger(cfg: TrainConfig, folder: RunFolder, k: int, labels: list[str], resume_step: int = 0,
                step_offset: int = 0) -> RunLogger:
    """Fold k's logger: metrics.jsonl through `folder` and, when wanted, TensorBoard in `folder.tb_fold(k)`, with the
    config logged. `resume_step`: optimiser steps already done (a resumed fold: what is logged after it is purged).
    `step_offset`: added to every TensorBoard step, so that a resume on another number of processes (another
    epoch length) continues the interrupted run's step axis instead of restarting it lower. Other ranks get a logger
    without sinks."""
    if not dist.is_main():
        return RunLogger([])
    sinks: list[Sink] = [MetricsSink(folder.append_metrics)]
    if tensorboard_wanted(cfg.tensorboard):
        purge = resume_step + step_offset + 1 if cfg.resume else None
        sinks.append(TensorBoardSink(folder.tb_fold(k), labels, purge_step=purge))
    log = RunLogger(sinks, log_every=cfg.log_every, step_offset=step_offset)
    log.log_config(cfg.to_dict())
    return log


def coupling_image(a, labels: list[str], title: str) -> np.ndarray:
    """A (diagonal left out, as cxr-couplings shows it) drawn by `evaluate.couplings.heatmap_figure`: uint8 (H, W, 3),
    the pixels of cxr-couplings' PNG, rendered in memory (no file written and read back)."""
    from cxr_fast.evaluate.couplings import heatmap_figure

    a = np.array(a.detach().float().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float32)
    np.fill_diagonal(a, 0.0)
    fig = heatmap_figure(a, labels, title=f"{title}: learned label couplings (A)")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _scalar(writer, tag: str, value, step: int) -> None:
    """One scalar; None (an undefined AUC, no refiner) is left out rather than drawn as a value."""
    if value is not None:
        writer.add_scalar(tag, float(value), step)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)
