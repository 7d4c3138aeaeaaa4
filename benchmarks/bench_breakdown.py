"""Where the time goes: each stage of each pipeline on ONE thread, in ms per image (median over a few images).

PIL stages are timed one after another on the previous stage's output, as the workers run them (first `k` images).
DALI stages are pipelines of growing length (decode; crop-decode; the full dali-cpu graph) run with one thread over
about one epoch: ms = 1000 / img/s.
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.pipelines import SampleSet
from cxr_fast.pipelines.pil import ShardDataset, random_resized_crop_box


def _ms(fn, items) -> tuple[float, list]:
    """Median ms of fn(item) over items, and the outputs."""
    times, outs = [], []
    for it in items:
        t = time.perf_counter()
        outs.append(fn(it))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), outs


def _pil_files(files: list, img_size: int) -> dict:
    from torchvision import transforms as T

    from bench_loaders import IMAGENET_MEAN, IMAGENET_STD

    ms = {}
    ms["pil-files: read + PNG decode + RGB"], imgs = _ms(lambda p: Image.open(p).convert("RGB"), files)
    ms["pil-files: (for comparison) read + PNG decode, gray"], _ = _ms(lambda p: Image.open(p).convert("L"), files)
    stages = [("RandomResizedCrop (RGB, bilinear)", T.RandomResizedCrop(img_size, scale=(0.84, 1.0))),
              ("RandomRotation(10) (RGB, nearest)", T.RandomRotation(10)),
              ("RandomHorizontalFlip", T.RandomHorizontalFlip()), ("ToTensor (uint8 -> float32)", T.ToTensor()),
              ("Normalize (3 channels)", T.Normalize(IMAGENET_MEAN, IMAGENET_STD))]
    x = imgs
    for name, tf in stages:
        ms[f"pil-files: {name}"], x = _ms(tf, x)
    ms["pil-files: collate, per image (float32 3ch)"] = 1000 * _stack_s(x)
    return ms


def _stack_s(tensors: list) -> float:
    t = time.perf_counter()
    torch.stack(tensors)
    return (time.perf_counter() - t) / len(tensors)


def _pil_shards(shards: SampleSet, img_size: int, k: int) -> dict:
    ds = ShardDataset(shards, AugmentSpec.for_training(img_size), seed=0)
    blobs = []
    for pos in range(k):
        t, _, comp = ds.entries[pos]
        blobs.append(ds._read(t, comp["jpg"]))
    rng = np.random.default_rng(0)
    spec = AugmentSpec.for_training(img_size)
    s = spec.img_size
    ms = {}
    ms["pil-shards: JPEG decode (gray)"], imgs = _ms(lambda b: Image.open(io.BytesIO(b)).convert("L"), blobs)

    def crop(img):
        top, left, ch, cw = random_resized_crop_box(img.size[1], img.size[0], spec.scale, spec.ratio, rng)
        return img.resize((s, s), resample=Image.BILINEAR, box=(left, top, left + cw, top + ch))

    ms["pil-shards: crop + resize (gray, bilinear)"], x = _ms(crop, imgs)
    ms["pil-shards: rotate (gray, nearest)"], x = _ms(
        lambda im: im.rotate(float(rng.uniform(-10, 10)), resample=Image.NEAREST, fillcolor=0), x)
    ms["pil-shards: flip"], x = _ms(lambda im: im.transpose(Image.FLIP_LEFT_RIGHT), x)
    ms["pil-shards: to uint8 tensor"], x = _ms(lambda im: torch.from_numpy(np.array(im, np.uint8)).unsqueeze(0), x)
    ms["pil-shards: collate, per image (uint8 1ch)"] = 1000 * _stack_s(x)
    return ms


def _dali_ms(pipe, batch_size: int, batches: int) -> float:
    pipe.run()  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    return 1000 * (time.perf_counter() - t) / (batches * batch_size)


def _dali(shards: SampleSet, img_size: int, batch_size: int, batches: int) -> dict:
    from nvidia import dali
    from nvidia.dali import fn, types

    from bench_loaders import DecodeCeiling
    from cxr_fast.pipelines.dali import build_pipeline

    spec = AugmentSpec.for_training(img_size)
    ms = {"dali: decode only (decode-ceiling graph)": _dali_ms(DecodeCeiling(shards, batch_size, 1).pipe,
                                                               batch_size, batches)}
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=1, device_id=None, seed=1, prefetch_queue_depth=2)
    with pipe:
        jpg = fn.readers.webdataset(paths=[str(t) for t, _ in shards.shards],
                                    index_paths=[str(i) for _, i in shards.shards], ext=["jpg;png"])
        pipe.set_outputs(fn.decoders.image_random_crop(jpg, device="cpu", output_type=types.GRAY,
                                                       random_area=list(spec.scale),
                                                       random_aspect_ratio=list(spec.ratio), num_attempts=10))
    pipe.build()
    ms["dali: crop-decode only (decoders.image_random_crop)"] = _dali_ms(pipe, batch_size, batches)
    full = build_pipeline(shards, spec, batch_size, num_threads=1, device_id=None, seed=0, rank=0, world=1)
    ms["dali: crop-decode + warp (the dali-cpu graph)"] = _dali_ms(full, batch_size, batches)
    return ms


def breakdown(files: SampleSet, shards: SampleSet, img_size: int, batch_size: int, k: int) -> dict:
    """{"images": k, "ms_per_image": {stage: ms}} with torch on one thread (as in DataLoader workers)."""
    k = max(1, min(k, len(shards)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ms = {**_pil_files(list(files.files[:k]), img_size), **_pil_shards(shards, img_size, k)}
        b = min(batch_size, len(shards))
        ms.update(_dali(shards, img_size, b, max(1, len(shards) // b - 1)))  # one epoch, less the warm-up batch
    finally:
        torch.set_num_threads(threads)
    return {"images": k, "threads": 1, "ms_per_image": ms}
