"""The run configuration: one frozen dataclass, built once by `cxr-train`, written to `config.json` (same keys as
ever: it is a contract inside checkpoints), read back with defaults for older files, and compared field by field
on `--resume`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from cxr_fast.errors import UserError, first_line

# Settings a resumed run may change: they cannot change what the run computes (beyond floating-point rounding, as
# another device): where outputs go, how many workers, and the speed switches. Every other field must match.
RESUME_MAY_CHANGE = ("num_workers", "progress", "out_csv", "device", "folds_to_run", "resume", "config",
                     "eval_batch_size", "compile", "channels_last", "hw_decoder_load", "find_unused_parameters",
                     "tensorboard", "log_every")


@dataclass(frozen=True)
class TrainConfig:
    # the original project's flags (same names, types and defaults)
    train_csv: str | None = None
    train_dir: str | None = None
    test_dir: str | None = None
    out_csv: str = "./submission.csv"
    out_dir: str = "./outputs"
    labels: list[str] | None = None
    model: str = "seresnext101_32x4d"
    img_size: int = 380
    epochs: int = 3
    batch_size: int = 24
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1
    folds: int = 3
    seed: int = 42
    label_smooth: float = 0.0
    loss: str = "asl"
    ema: bool = True
    tta: bool = True
    num_workers: int = 4
    color_jitter: bool = False
    no_amp: bool = False
    # dataset flags shared with cxr-shard
    image_col: str = "Image_name"
    group_col: str | None = None
    uncertain: str = "zeros"
    missing: str = "zeros"
    skip_bad: bool = False
    # ours
    pipeline: str = "dali"
    shards: str | None = None
    hw_decoder_load: float = 0.65
    dali_decode: str = "auto"
    shards_root: str = "shards"
    device: str = "auto"
    amp_dtype: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    eval_batch_size: int | None = None
    refiner: bool = True
    refiner_alpha: float = 0.3
    refiner_l1: float = 1e-3
    ema_decay: float = 0.999
    drop_rate: float = 0.4
    patience: int = 3
    pretrained: bool = True
    weights: str | None = None
    in_chans: int = 1
    folds_to_run: str | None = None
    find_unused_parameters: bool = False
    resume: bool = False
    progress: bool = True
    tensorboard: bool | None = None  # None: on where the tensorboard package is installed (train/logger.py)
    log_every: int = 50              # TensorBoard's per-step scalars every this many optimiser steps
    config: str | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_saved(cls, d: dict) -> TrainConfig:
        """The config stored in a checkpoint or config.json, possibly older (defaults fill in) or newer (settings
        this version does not know are ignored)."""
        return cls(**{k: v for k, v in d.items() if k in cls.field_names()})

    @classmethod
    def defaults(cls) -> dict:
        return dataclasses.asdict(cls())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def pipeline_options(self) -> dict:
        """The settings only some input pipelines take, as `build_loader` / `check_pipeline`'s `options` (each
        pipeline gets those its registry entry declares: DALI's hw_decoder_load and decode form)."""
        return {"hw_decoder_load": self.hw_decoder_load, "decode": self.dali_decode}

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def eval_batch(self) -> int:
        """Evaluation batch per process: --eval_batch_size, or twice the training batch (no gradients to keep)."""
        return self.eval_batch_size or 2 * self.batch_size


def read_config_file(path: str | Path) -> dict:
    """Settings from a JSON or YAML file (a run's own config.json is one). UserError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read --config ({type(e).__name__}: {e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or give a JSON file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({first_line(e)})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: --config must hold a mapping of setting -> value")
    return data


def config_differences(old: dict, new: TrainConfig) -> list[str]:
    """`name old -> new` for every setting that differs and may not change on --resume (older files: defaults)."""
    before, after = TrainConfig.from_saved(old).to_dict(), new.to_dict()
    return [f"{k} {_show(before[k])} -> {_show(after[k])}" for k in TrainConfig.field_names()
            if k not in RESUME_MAY_CHANGE and before[k] != after[k]]


def _show(v) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
