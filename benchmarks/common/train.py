"""The end-to-end rows: the real training step (`train_one_epoch`) fed by each pipeline, and the data-free bound."""

from __future__ import annotations

import torch

from cxr_fast.data.samples import Batch
from cxr_fast.model import build_model
from cxr_fast.model.ema import ModelEma
from cxr_fast.model.losses import build_loss
from cxr_fast.train.amp import Amp
from cxr_fast.train.config import TrainConfig
from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch

DEFAULT_MODEL = {"cuda": "tf_efficientnet_b4_ns", "cpu": "resnet18"}


class TrainStep:
    """What `cxr-train` runs per epoch with its defaults: 1-channel timm backbone (pretrained=False) + refiner,
    ASL, AdamW with the warm-up/cosine schedule, grad clipping 1.0, EMA 0.999, AMP (fp16 on CUDA, off on CPU).

    One model serves every row: throughput does not depend on the weights' values. `pil-files` batches (3-channel
    float) go through `normalize`'s 3 -> 1 channel path, so every row runs the same network.
    """

    def __init__(self, model: str, labels, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        n = labels.shape[1]
        self.model = build_model(TrainConfig(model=model, pretrained=False), n).to(device)
        self.loss = build_loss("asl", labels).to(device)
        self.optimizer = build_optimizer(self.model, lr=1e-4, weight_decay=1e-5)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps=0, total_steps=1_000_000)
        self.amp = Amp(device)
        self.ema = ModelEma(self.model, decay=0.999)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.step_count = 0

    def __call__(self, loader) -> dict:
        loader.set_epoch(self.step_count)
        stats = train_one_epoch(self.model, loader, self.loss, self.optimizer, self.scheduler, self.amp, ema=self.ema,
                                step=self.step_count, progress=False)
        self.step_count = stats["step"]
        return stats


def fixed_batch(labels, batch_size: int, img_size: int, device: torch.device) -> Batch:
    """A batch as the contract delivers it (uint8 (B,1,S,S), labels, index), already on the device."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 1, img_size, img_size), dtype=torch.uint8, generator=g)
    return Batch(images.to(device), torch.as_tensor(labels[:batch_size]).to(device),
                 torch.arange(batch_size, dtype=torch.int64).to(device))
