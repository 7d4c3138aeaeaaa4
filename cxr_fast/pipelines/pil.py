"""The PIL + DataLoader pipeline: the baseline and the fallback. Reads image files or shards; yields uint8 batches.

Shards are read by random access through their DALI `.idx` files (offsets of every member), so the map-style
dataset has a known length, shuffles globally, and splits exactly across DDP ranks with `DistributedSampler` -
the same bytes the DALI reader sees. Tar member names are never used as filesystem paths.
Each sample's augmentation is drawn from an RNG seeded by (seed, epoch, index), so results do not depend on the
number of workers.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cxr_fast import seeds
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import Batch, Loader, SampleSet
from cxr_fast.errors import UserError
from cxr_fast.images.read import read_gray8
from cxr_fast.shards import format as fmt
from cxr_fast.shards.format import read_index


def random_resized_crop_box(h: int, w: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-area crop, torchvision's RandomResizedCrop.get_params rule."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def apply_spec(img: Image.Image, spec: AugmentSpec, rng: np.random.Generator | None) -> np.ndarray:
    """Apply the augmentation spec to one 8-bit grayscale PIL image; returns (S, S) uint8."""
    s = spec.img_size
    if not spec.train:
        return np.array(img.resize((s, s), resample=Image.BILINEAR), dtype=np.uint8)
    w, h = img.size
    top, left, ch, cw = random_resized_crop_box(h, w, spec.scale, spec.ratio, rng)
    # One pass: crop box + (antialiased) bilinear resize.
    img = img.resize((s, s), resample=Image.BILINEAR, box=(left, top, left + cw, top + ch))
    if spec.rotate_deg > 0:
        img = img.rotate(float(rng.uniform(-spec.rotate_deg, spec.rotate_deg)), resample=Image.NEAREST, fillcolor=0)
    if spec.flip_p > 0 and rng.random() < spec.flip_p:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if spec.jitter > 0:
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(1 - spec.jitter, 1 + spec.jitter)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(1 - spec.jitter, 1 + spec.jitter)))
    return np.array(img, dtype=np.uint8)


class _EpochDataset(Dataset):
    """Items are requested as (position, epoch) so per-sample RNGs change per epoch even in persistent workers."""

    def __init__(self, spec: AugmentSpec, seed: int):
        self.spec, self.seed = spec, seed

    def _rng(self, index: int, epoch: int) -> np.random.Generator | None:
        return seeds.rng(self.seed, "augment", epoch, index) if self.spec.train else None

    def _out(self, arr: np.ndarray, labels: np.ndarray, index: int):
        return torch.from_numpy(arr).unsqueeze(0), torch.from_numpy(labels), index


def unreadable_positions(index: np.ndarray) -> np.ndarray:
    """Which rows of a pass's gathered `index` are files a `skip_bad` FileDataset could not read (a bool mask)."""
    return np.asarray(index) < 0


class FileDataset(_EpochDataset):
    """Image files. `skip_bad`: a file that cannot be read comes back as a black image with index -1 - its index
    (`unreadable_positions`) instead of stopping the pass, so one pass both predicts and finds the bad files."""

    def __init__(self, samples: SampleSet, spec: AugmentSpec, seed: int, skip_bad: bool = False):
        super().__init__(spec, seed)
        self.files, self.labels, self.index = samples.files, samples.labels, samples.index
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        pos, epoch = item
        idx = int(self.index[pos])
        try:
            arr, _ = read_gray8(self.files[pos])
        except UserError:
            if not self.skip_bad:
                raise
            return self._out(np.zeros((self.spec.img_size,) * 2, np.uint8), self.labels[pos], -1 - idx)
        out = apply_spec(Image.fromarray(arr), self.spec, self._rng(idx, epoch))
        return self._out(out, self.labels[pos], idx)


class ShardDataset(_EpochDataset):
    """Random access into WebDataset tars via their .idx files (no tar member name is used as a path)."""

    IMAGE_EXTS = ("jpg", "png")

    def __init__(self, samples: SampleSet, spec: AugmentSpec, seed: int):
        super().__init__(spec, seed)
        self.tars = [Path(t) for t, _ in samples.shards]
        self.entries: list[tuple[int, int, dict]] = []  # (tar id, sample number in tar, {ext: (off, size)})
        for t, (_, idx) in enumerate(samples.shards):
            for j, comp in enumerate(read_index(Path(idx))):
                self.entries.append((t, j, comp))
        if len(self.entries) != len(samples):
            raise UserError(f"shards hold {len(self.entries)} samples but the sample list has {len(samples)}")
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, t: int, off_size: tuple[int, int]) -> bytes:
        fd = self._fds.get(t)
        if fd is None:  # opened lazily, so each worker process has its own descriptors
            fd = self._fds[t] = os.open(self.tars[t], os.O_RDONLY)
        data = os.pread(fd, off_size[1], off_size[0])
        if len(data) != off_size[1]:
            raise UserError(f"{self.tars[t]}: truncated shard (member at offset {off_size[0]})")
        return data

    def __getitem__(self, item):
        pos, epoch = item
        t, j, comp = self.entries[pos]
        where = f"{self.tars[t]} sample {j}"
        img_ext = next((e for e in self.IMAGE_EXTS if e in comp), None)
        if img_ext is None or "labels" not in comp or "index" not in comp:
            raise UserError(f"{where}: missing image/labels/index component (has {sorted(comp)})")
        labels = np.frombuffer(self._read(t, comp["labels"]), dtype=fmt.LABEL_DTYPE).copy()
        idx = int(np.frombuffer(self._read(t, comp["index"]), dtype=fmt.INDEX_DTYPE)[0])
        try:
            with Image.open(io.BytesIO(self._read(t, comp[img_ext]))) as im:
                img = im.convert("L") if im.mode != "L" else im.copy()
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{where}: cannot decode {img_ext} ({e})") from None
        return self._out(apply_spec(img, self.spec, self._rng(idx, epoch)), labels, idx)

    def __del__(self):
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


class _EpochTagged(Sampler):
    """Wraps a sampler so it yields (position, epoch) pairs; `set_epoch` reseeds the shuffle."""

    def __init__(self, n: int, train: bool, seed: int, rank: int, world: int):
        self.n, self.train, self.seed, self.epoch = n, train, seed, 0
        self.skip = 0  # positions of the next pass to drop unread (a mid-epoch resume)
        self.dist = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=train, seed=seed,
                                       drop_last=False) if world > 1 else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.dist is not None:
            self.dist.set_epoch(epoch)

    def _order(self):
        if self.dist is not None:
            return list(self.dist)
        if self.train:
            g = torch.Generator().manual_seed(seeds.derive(self.seed, "loader_order", self.epoch))
            return torch.randperm(self.n, generator=g).tolist()
        return range(self.n)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return ((i, self.epoch) for i in self._order()[skip:])

    def __len__(self) -> int:
        return len(self.dist) if self.dist is not None else self.n


def _collate(batch):
    images, labels, index = zip(*batch)
    return torch.stack(images), torch.stack(labels), torch.tensor(index, dtype=torch.int64)


class PILLoader(Loader):
    """DataLoader wrapper honouring the loader contract (uint8 batches, on the device, known length)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, *, train: bool, num_workers: int,
                 seed: int, rank: int, world: int):
        self.device = torch.device(device)
        self.num_samples, self.batch_size = len(dataset), batch_size
        self.sampler = _EpochTagged(len(dataset), train, seed, rank, world)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", drop_last=train, persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            # its own generator: each pass draws the workers' base seed from it, not from torch's global RNG, whose
            # stream (dropout) a mid-epoch resume restores and must find untouched by the pass it resumes into
            generator=torch.Generator().manual_seed(seeds.derive(seed, "loader_base_seed")),
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip_batches(self, n: int) -> None:
        """The next pass starts at batch `n` of the epoch (a resume inside it): the sample order is a function of
        (seed, epoch) and each sample's augmentation of (seed, epoch, index), so dropping the first n x batch_size
        positions of this rank's order, unread, gives the batches n, n+1, ... of an uninterrupted pass."""
        self.sampler.skip = n * self.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        nb = self.device.type == "cuda"
        for images, labels, index in self.loader:
            yield Batch(images.to(self.device, non_blocking=nb), labels.to(self.device, non_blocking=nb),
                        index.to(self.device, non_blocking=nb))


def build_pil_loader(samples: SampleSet, spec: AugmentSpec, batch_size: int, device, *, num_workers: int = 4,
                     seed: int = 0, rank: int = 0, world: int = 1, skip_bad: bool = False) -> PILLoader:
    """Loader over image files (`samples.files`) or shards (`samples.shards`). `skip_bad` (files only): unreadable
    files come back marked (`FileDataset`), not as an error."""
    if batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {batch_size}")
    if skip_bad and samples.files is None:
        raise ValueError("skip_bad is for image files; shards hold only images that were read")
    ds = (FileDataset(samples, spec, seed, skip_bad) if samples.files is not None
          else ShardDataset(samples, spec, seed))
    return PILLoader(ds, batch_size, device, train=spec.train, num_workers=num_workers, seed=seed, rank=rank,
                     world=world)
