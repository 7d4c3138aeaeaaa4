"""The DALI pipeline (`--pipeline dali`): WebDataset shards -> decode + augment (on the GPU when there is one) -> uint8.

Per sample, the graph is

    readers.webdataset  (jpg|png, labels: raw float32, index: raw int64)
    train: decoders.image_random_crop    decodes only the random-area crop window ("mixed" = GPU decode on CUDA)
           [-> resize to S x S]          linear, antialiased; GPU default only (see below)
           -> warp_affine                nearest: rotation and horizontal flip (and, fused, crop -> S x S)
           -> jitter                     only when spec.jitter > 0: brightness, then contrast about the mean
    eval:  decoders.image -> resize      the whole image squashed to S x S, linear + antialias (as PIL's BILINEAR)

and a batch leaves as (images uint8 (B, 1, S, S), labels float32 (B, C), index int64 (B,)) on the loader's device.
On CUDA the images never touch the host; labels and index are moved to the GPU inside the pipeline.

The warp: on CPU every resampling pass costs about as much as the decode, and DALI's CPU warp is ~5x slower with
bilinear than nearest sampling (measured: ~950 vs ~200 img/s; resize + warp ~390). So on CPU (`fused_warp`
default) ONE nearest warp maps the crop straight to S x S with rotation and flip: the resize part then skips the
antialiasing the spec asks for "where the kernel offers it" (mild aliasing: a 512 px crop is ~1.1-1.35x a 380 px
output). On a GPU, where passes are cheap, the spec is followed exactly: linear antialiased resize, then the
nearest warp for rotation + flip only. Either way the flip is a negative x scale in the warp matrix, not a pass.

Epochs, shuffling and sharding (checked against DALI 2.4's iterator code and by tests/test_dali.py):
- The reader splits the sample list by index into `world` contiguous parts (`shard_id=rank`) and pads every part to
  the same number of batches (`pad_last_batch=True`); the DALI iterator always runs with `LastBatchPolicy.PARTIAL`,
  which cuts the padding off again, so every DALI epoch is exactly one pass over the part.
- Train: `shuffle_after_epoch` reshuffles the order of the tars every epoch from a seed shared by all ranks (so the
  ranks' parts stay disjoint) and `random_shuffle` draws samples from a buffer of `initial_fill` = the largest tar's
  sample count (tars are pre-shuffled by `cxr-shard`). DALI allows the two together. The loader yields the first
  floor(floor(N / world) / batch_size) batches - all full, the same count on every rank - and discards the rest of
  the DALI epoch. DALI's own `LastBatchPolicy.DROP` is not used: when the ranks' parts differ in size and the
  smaller part is a multiple of the batch size it leaves a whole batch of padding copies in the pipeline, which then
  opens the next epoch (seen with N=37, world=2, batch 9).
- Eval: no shuffle, and `stick_to_shard` so a rank reads the same part every epoch; each sample is seen exactly once
  per rank part. Parts differ by at most one sample, so ranks may yield different batch counts (len() is per rank);
  gather predictions after the loop (`cxr_fast.dist.gather_predictions`), not per batch.
- `set_epoch` only records the epoch: DALI advances its own shuffle state every pass, so the order is a function of
  (seed, number of passes run by this loader), reproducible for a seed but not re-derivable from an epoch number
  (a resumed run sees other orders than an uninterrupted one).
Breaking out of an epoch early is allowed: the next `iter()` first drains the rest of the DALI epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.errors import UserError

READER = "Reader"
OUTPUTS = ("images", "labels", "index")


def require_dali():
    """Import DALI lazily; the rest of the package works where it is absent."""
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin import pytorch  # noqa: F401
    except ImportError as e:
        raise UserError(f"--pipeline dali needs NVIDIA DALI ({e}); install it with "
                        "`pip install nvidia-dali-cuda120` or use --pipeline pil") from None
    from nvidia import dali

    return dali


def shard_sample_counts(shards: list[tuple[Path, Path]]) -> list[int]:
    """Sample count of each shard, from its DALI index's first line."""
    from cxr_fast.shards.format import index_sample_count

    return [index_sample_count(idx) for _, idx in shards]


def _seed(*parts: int) -> int:
    """A 31-bit seed derived from integers (DALI seeds are non-negative int32-range values)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _train_images(encoded, spec: AugmentSpec, decode_kw: dict, fused_warp: bool):
    """Random-area crop fused into the decode, a nearest warp_affine for rotation + flip, then jitter.

    fused_warp: the warp also does the resize crop -> S x S (one resampling pass, the fast CPU choice); otherwise
    a linear antialiased resize comes first and the warp works at S x S (the spec exactly; cheap on a GPU).
    """
    from nvidia.dali import fn, types

    s = float(spec.img_size)
    img = fn.decoders.image_random_crop(encoded, random_area=list(spec.scale), random_aspect_ratio=list(spec.ratio),
                                        num_attempts=10, **decode_kw)  # (h, w, 1): the crop
    if not fused_warp:
        img = fn.resize(img, resize_x=s, resize_y=s, interp_type=types.INTERP_LINEAR, antialias=True)
    if fused_warp or spec.rotate_deg > 0 or spec.flip_p > 0:
        hw = img.shape(dtype=types.FLOAT)  # [h, w, 1], on the CPU also for GPU images
        h, w = hw[0], hw[1]
        sx = w / s
        if spec.flip_p > 0:
            sx = sx * (1.0 - 2.0 * fn.random.coin_flip(probability=spec.flip_p, dtype=types.INT32))
        # Destination -> source map on continuous pixel coordinates ([0, 0] = corner of the first pixel):
        # centre the output, rotate, scale to the source (x mirrored when flipped), move to the source's centre.
        m = fn.transforms.translation(offset=[-s / 2, -s / 2])
        if spec.rotate_deg > 0:
            m = fn.transforms.rotation(m, angle=fn.random.uniform(range=[-spec.rotate_deg, spec.rotate_deg]))
        m = fn.transforms.scale(m, scale=fn.stack(sx, h / s))
        m = fn.transforms.translation(m, offset=fn.stack(w / 2, h / 2))
        img = fn.warp_affine(img, matrix=m, size=[s, s], interp_type=types.INTERP_NN, fill_value=0, inverse_map=True)
    if spec.jitter > 0:
        img = _jitter(img, spec.jitter)
    return img


def _jitter(img, jitter: float):
    """As the PIL path (ImageEnhance.Brightness, then .Contrast): x = clamp(b * img), out = m + c * (x - m), with m the
    mean grey of x, so contrast keeps the mean. fn.brightness_contrast can't do this: its pivot is a CPU-side argument,
    and on the GPU the mean lives on the device, so plain arithmetic ops do it on either backend."""
    from nvidia.dali import fn, math, types

    j = [1.0 - jitter, 1.0 + jitter]
    b, c = fn.random.uniform(range=j), fn.random.uniform(range=j)
    if img.device == "gpu":
        b, c = b.gpu(), c.gpu()
    x = math.clamp(img * b, 0.0, 255.0)
    m = fn.reductions.mean(x)  # one value per sample, broadcast below
    return fn.cast(math.clamp(m + c * (x - m), 0.0, 255.0), dtype=types.UINT8)


def _eval_images(encoded, spec: AugmentSpec, decode_kw: dict):
    from nvidia.dali import fn, types

    img = fn.decoders.image(encoded, **decode_kw)
    return fn.resize(img, resize_x=spec.img_size, resize_y=spec.img_size, interp_type=types.INTERP_LINEAR,
                     antialias=True)


def build_pipeline(samples: SampleSet, spec: AugmentSpec, batch_size: int, *, num_threads: int, device_id: int | None,
                   seed: int, rank: int, world: int, hw_decoder_load: float = 0.65, prefetch: int = 2,
                   fused_warp: bool | None = None):
    """The DALI pipeline (built, not yet run). `device_id=None` = CPU only; an int = mixed decode on that GPU.

    fused_warp (train only): None = fused on CPU, resize + warp on GPU (see `_train_images`).
    """
    dali = require_dali()
    from nvidia.dali import fn, types

    counts = shard_sample_counts(samples.shards)
    gpu = device_id is not None
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                         seed=_seed(seed, rank, 1), prefetch_queue_depth=prefetch)
    decode_kw = {"device": "mixed" if gpu else "cpu", "output_type": types.GRAY}
    if gpu:
        decode_kw["hw_decoder_load"] = hw_decoder_load
        if samples.image_hint:
            decode_kw["preallocate_height_hint"], decode_kw["preallocate_width_hint"] = map(int, samples.image_hint)
    with pipe:
        shuffle = {"random_shuffle": True, "initial_fill": max(max(counts), batch_size), "shuffle_after_epoch": True,
                   "shuffle_after_epoch_seed": _seed(seed, 2)} if spec.train else {"stick_to_shard": True}
        encoded, labels, index = fn.readers.webdataset(
            paths=[str(t) for t, _ in samples.shards], index_paths=[str(i) for _, i in samples.shards],
            ext=["jpg;png", "labels", "index"], dtypes=[types.UINT8, types.FLOAT, types.INT64],
            missing_component_behavior="error", shard_id=rank, num_shards=world, pad_last_batch=True,
            name=READER, **shuffle)
        fused = (not gpu) if fused_warp is None else fused_warp
        images = _train_images(encoded, spec, decode_kw, fused) if spec.train else _eval_images(encoded, spec, decode_kw)
        if gpu:
            labels, index = labels.gpu(), index.gpu()
        pipe.set_outputs(images, labels, index)
    pipe.build()
    return pipe


class DALILoader:
    """The loader contract over a DALI pipeline: `len()`, `num_samples`, `set_epoch`, batches on the device."""

    def __init__(self, pipe, *, num_samples: int, num_batches: int, num_labels: int, device: torch.device,
                 root: Path | None = None):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.pipe, self.num_samples, self.device, self.epoch = pipe, num_samples, device, 0
        self._root = root  # the shards' folder, named in read errors
        self._num_batches, self._num_labels = num_batches, num_labels
        try:  # the iterator starts the pipeline (prefetch): unreadable data can fail here already
            self._it = DALIGenericIterator([pipe], list(OUTPUTS), reader_name=READER,
                                           last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        except RuntimeError as e:
            raise self._read_error(e) from None
        self._mid_epoch = False

    def __len__(self) -> int:
        return self._num_batches

    def _read_error(self, e: RuntimeError) -> UserError:
        """DALI reports an unreadable shard member as a RuntimeError with its C++ trace: one line instead."""
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
        where = next((ln.rstrip(",") for ln in lines if ln.startswith("Error in")), "")
        after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines[-1:]
        what = "; ".join(x for x in (where, after[0] if after else "") if x)
        return UserError(f"DALI could not read the shards in {self._root} ({what[:300]}): a member is corrupt or "
                         f"altered; check them with: cxr-shard verify {self._root}")

    def set_epoch(self, epoch: int) -> None:
        """Recorded only: DALI reshuffles by itself every pass (see the module docstring)."""
        self.epoch = epoch

    def _drain(self) -> None:
        """Run the DALI epoch to its end (its iterator ignores a reset in mid-epoch)."""
        while True:
            try:
                next(self._it)
            except StopIteration:  # auto_reset has reset it for the next pass
                break
        self._mid_epoch = False

    def _unpack(self, out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, index = out["images"], out["labels"], out["index"]
        b, s = images.shape[0], images.shape[1]
        if labels.ndim != 2 or labels.shape[1] != self._num_labels:
            raise UserError(f"shards hold {tuple(labels.shape[1:])} label values per sample, the sample list "
                            f"{self._num_labels}: shards and manifest/samples.csv disagree")
        # (B, S, S, 1) and (B, 1, S, S) share one memory layout when C = 1: a free view.
        return images.view(b, 1, s, s), labels, index.view(b)

    def __iter__(self):
        if self._mid_epoch:  # the previous pass was abandoned early
            self._drain()
        self._mid_epoch = True
        n = 0
        while True:
            try:
                out = next(self._it)[0]  # auto_reset: StopIteration leaves the iterator ready for the next pass
            except StopIteration:
                break
            except RuntimeError as e:
                raise self._read_error(e) from None
            if n < self._num_batches and out["images"].shape[0] > 0:
                n += 1
                yield self._unpack(out)
        self._mid_epoch = False
        assert n == self._num_batches, f"DALI yielded {n} batches, expected {self._num_batches}"


def build_dali_loader(samples: SampleSet, spec: AugmentSpec, batch_size: int, device: torch.device, *,
                      num_workers: int = 4, seed: int = 0, rank: int = 0, world: int = 1,
                      hw_decoder_load: float = 0.65, prefetch: int = 2, fused_warp: bool | None = None) -> DALILoader:
    """Loader over `samples.shards` with augmentation `spec`; `num_workers` = DALI CPU threads.

    CUDA `device`: GPU ("mixed") decode on that device, batches stay on it. CPU `device`: CPU-only pipeline.
    `len()` = full batches per rank (train) or ceil(this rank's part / batch_size) (eval);
    `num_samples` = samples in the whole set (all ranks), as in the PIL loader.
    `fused_warp` (train): one nearest warp from the crop (default on CPU) or resize + warp (default on GPU).
    """
    require_dali()
    device = torch.device(device)
    if batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {batch_size}")
    if not samples.shards:
        raise UserError("--pipeline dali reads shards; this sample set has none (run cxr-shard first)")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    counts = shard_sample_counts(samples.shards)
    n = sum(counts)
    if n != len(samples):
        raise UserError(f"shards hold {n} samples but the sample list has {len(samples)} "
                        f"({samples.shards[0][0].parent}): re-run cxr-shard")
    part = (n * (rank + 1)) // world - (n * rank) // world  # this rank's part, as DALI's reader splits it
    if spec.train:
        num_batches = (n // world) // batch_size
        if num_batches == 0:
            raise UserError(f"{n} training samples over {world} rank(s) do not fill one batch of {batch_size}")
    else:
        if part == 0:
            raise UserError(f"{n} samples cannot be split over {world} ranks")
        num_batches = math.ceil(part / batch_size)
    device_id = None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but CUDA is not available")
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    pipe = build_pipeline(samples, spec, batch_size, num_threads=max(1, num_workers), device_id=device_id,
                          seed=seed, rank=rank, world=world, hw_decoder_load=hw_decoder_load, prefetch=prefetch,
                          fused_warp=fused_warp)
    return DALILoader(pipe, num_samples=n, num_batches=num_batches, num_labels=samples.labels.shape[1],
                      device=device, root=samples.shards[0][0].parent)
