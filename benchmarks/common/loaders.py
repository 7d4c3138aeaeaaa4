"""The loaders the benchmark compares, all behind the package's loader contract (iterable, len, set_epoch).

`pil-files` is the original project's input path, written here because it is not part of the package: PIL opens the
PNG, converts to RGB, torchvision's RandomResizedCrop(scale 0.84-1) + RandomRotation(10) + RandomHorizontalFlip +
ToTensor + Normalize run in the DataLoader workers, and 3-channel float32 batches leave them.
`dali-cpu-exact` is the DALI pipeline on the CPU with `fused_warp=False`: linear antialiased resize, then the nearest
warp for rotation + flip - the interpolation `pil-shards` uses (the default CPU graph maps the crop with ONE nearest
warp instead). `decode-ceiling` is DALI's reader + CPU decoder alone over the shard bytes: the cost floor of any shard
pipeline.
`FixedBatches` repeats one batch already on the device (nanoGPT's bench.py): the data-free training bound.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import Batch, Loader, SampleSet

LOADER_ROWS = ("pil-files", "pil-shards", "dali-cpu", "dali-cpu-exact", "dali-gpu", "decode-ceiling")
TRAIN_ROWS = ("pil-files", "pil-shards", "dali-cpu", "dali-gpu")  # run end to end (dali-cpu-exact: loader only)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _OriginalDataset(Dataset):
    def __init__(self, samples: SampleSet, transform):
        self.files, self.labels, self.index, self.transform = samples.files, samples.labels, samples.index, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = Image.open(self.files[i]).convert("RGB")
        return self.transform(img), torch.from_numpy(self.labels[i]), int(self.index[i])


class OriginalLoader(Loader):
    """The original project's loader: (float32 (B,3,S,S) normalised, labels, index) on `device`."""

    def __init__(self, samples: SampleSet, img_size: int, batch_size: int, device, workers: int, seed: int = 0):
        from torchvision import transforms as T

        tf = T.Compose([T.RandomResizedCrop(img_size, scale=(0.84, 1.0)), T.RandomRotation(10),
                        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.device = torch.device(device)
        self.num_samples = len(samples)
        # persistent workers: the comparison is about per-image work, not worker start-up at each epoch
        self.loader = DataLoader(_OriginalDataset(samples, tf), batch_size=batch_size, shuffle=True, drop_last=True,
                                 num_workers=workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        nb = self.device.type == "cuda"
        for images, labels, index in self.loader:
            yield Batch(images.to(self.device, non_blocking=nb), labels.to(self.device, non_blocking=nb),
                        index.to(self.device, non_blocking=nb))


class DecodeCeiling:
    """DALI readers.webdataset + decoders.image (gray, CPU) with `threads` threads: batches of decoded images only.

    Yields (TensorListCPU,) per batch; images are not resized, so shapes may vary and nothing is copied to torch.
    """

    def __init__(self, samples: SampleSet, batch_size: int, threads: int, seed: int = 0):
        from nvidia import dali
        from nvidia.dali import fn, types

        self.batch_size, self._len, self.num_samples = batch_size, len(samples) // batch_size, len(samples)
        self.pipe = dali.Pipeline(batch_size=batch_size, num_threads=threads, device_id=None, seed=seed + 1,
                                  prefetch_queue_depth=2)
        with self.pipe:
            jpg = fn.readers.webdataset(paths=[str(t) for t, _ in samples.shards],
                                        index_paths=[str(i) for _, i in samples.shards], ext=["jpg;png"],
                                        missing_component_behavior="error", random_shuffle=True,
                                        initial_fill=batch_size)
            self.pipe.set_outputs(fn.decoders.image(jpg, device="cpu", output_type=types.GRAY))
        self.pipe.build()

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for _ in range(self._len):  # the reader wraps around by itself; one "epoch" = len(samples) // B batches
            (images,) = self.pipe.run()
            yield (images,)


class ToDevice(Loader):
    """Moves a CPU loader's batches to `device` (dali-cpu feeding a GPU model)."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device, self.num_samples = loader, device, loader.num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            yield Batch(*(t.to(self.device, non_blocking=True) for t in batch))


class FixedBatches(Loader):
    """`n` copies of one batch already on the device: the training step with no input pipeline at all."""

    def __init__(self, batch: Batch, n: int):
        self.batch, self.n, self.num_samples = batch, n, n * batch[0].shape[0]

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def build(name: str, files: SampleSet, shards: SampleSet, img_size: int, batch_size: int, workers: int,
          device: torch.device, seed: int = 0, to_device: bool = False):
    """The loader of row `name` (training augmentation) over the same rows, at `img_size`.

    to_device: the CPU rows' batches are moved to `device` (for a training step); otherwise they stay on the CPU,
    so the loader-only rows compare like with like (dali-gpu alone delivers on the GPU)."""
    spec = AugmentSpec.for_training(img_size)
    cpu = torch.device("cpu")
    if name == "pil-files":
        return OriginalLoader(files, img_size, batch_size, device if to_device else cpu, workers, seed)
    if name == "pil-shards":
        from cxr_fast.pipelines.pil import build_pil_loader

        return build_pil_loader(shards, spec, batch_size, device if to_device else cpu, num_workers=workers, seed=seed)
    if name in ("dali-cpu", "dali-cpu-exact", "dali-gpu"):
        from cxr_fast.pipelines.dali import build_dali_loader

        exact = {"fused_warp": False} if name == "dali-cpu-exact" else {}
        loader = build_dali_loader(shards, spec, batch_size, device if name == "dali-gpu" else cpu,
                                   num_workers=workers, seed=seed, **exact)
        return ToDevice(loader, device) if name == "dali-cpu" and device.type != "cpu" and to_device else loader
    if name == "decode-ceiling":
        return DecodeCeiling(shards, batch_size, workers, seed)
    raise ValueError(f"unknown loader row {name!r}")
