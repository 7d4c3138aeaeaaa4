"""Where the time goes: each stage of each pipeline on ONE thread, in ms per image.

PIL stages are timed one after another on the previous stage's output, as the workers run them (median over the
first `k` images). DALI stages are pipelines of growing length (decode; crop-decode; the full dali-cpu and
dali-cpu-exact graphs) run with one thread over about one epoch: ms = 1000 / img/s, and a stage's cost is the difference to the shorter graph.
Summing a pipeline's stages gives its one-thread cost per image; the report sets that against the measured loader
rate to show what the loader adds (worker IPC, Python, thread scaling, other load on the machine).
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.pipelines.pil import ShardDataset, random_resized_crop_box

CATEGORIES = ("decode", "augment", "to tensor", "collate")


def _ms(fn, items) -> tuple[float, list]:
    """Median ms of fn(item) over items, and the outputs."""
    times, outs = [], []
    for it in items:
        t = time.perf_counter()
        outs.append(fn(it))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), outs


def _stack_ms(tensors: list) -> float:
    t = time.perf_counter()
    torch.stack(tensors)
    return 1000 * (time.perf_counter() - t) / len(tensors)


def _pil_files(files: list, img_size: int) -> list[tuple]:
    from torchvision import transforms as T

    from benchmarks.common.loaders import IMAGENET_MEAN, IMAGENET_STD

    ms, imgs = _ms(lambda p: Image.open(p).convert("RGB"), files)
    out = [("read + PNG decode + convert RGB", "decode", ms)]
    ms, _ = _ms(lambda p: Image.open(p).convert("L"), files)
    out.append(("(reference, not summed) read + PNG decode, gray", None, ms))
    stages = [("RandomResizedCrop (RGB, bilinear)", "augment", T.RandomResizedCrop(img_size, scale=(0.84, 1.0))),
              ("RandomRotation(10) (RGB, nearest)", "augment", T.RandomRotation(10)),
              ("RandomHorizontalFlip", "augment", T.RandomHorizontalFlip()),
              ("ToTensor (uint8 -> float32)", "to tensor", T.ToTensor()),
              ("Normalize (3 channels)", "to tensor", T.Normalize(IMAGENET_MEAN, IMAGENET_STD))]
    x = imgs
    for name, cat, tf in stages:
        ms, x = _ms(tf, x)
        out.append((name, cat, ms))
    out.append(("collate (stack float32 3ch)", "collate", _stack_ms(x)))
    return out


def _pil_shards(shards: SampleSet, img_size: int, k: int) -> list[tuple]:
    spec = AugmentSpec.for_training(img_size)
    ds = ShardDataset(shards, spec, seed=0)
    blobs = []
    for pos in range(k):
        t, _, comp = ds.entries[pos]
        blobs.append(ds._read(t, comp["jpg"]))
    rng = np.random.default_rng(0)
    s = spec.img_size

    def crop(img):
        top, left, ch, cw = random_resized_crop_box(img.size[1], img.size[0], spec.scale, spec.ratio, rng)
        return img.resize((s, s), resample=Image.BILINEAR, box=(left, top, left + cw, top + ch))

    stages = [("JPEG decode (gray)", "decode", lambda b: Image.open(io.BytesIO(b)).convert("L")),
              ("crop + resize (gray, bilinear)", "augment", crop),
              ("rotate (gray, nearest)", "augment",
               lambda im: im.rotate(float(rng.uniform(-10, 10)), resample=Image.NEAREST, fillcolor=0)),
              ("flip", "augment", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT)),
              ("to uint8 tensor", "to tensor", lambda im: torch.from_numpy(np.array(im, np.uint8)).unsqueeze(0))]
    out, x = [], blobs
    for name, cat, fn in stages:
        ms, x = _ms(fn, x)
        out.append((name, cat, ms))
    out.append(("collate (stack uint8 1ch)", "collate", _stack_ms(x)))
    return out


def _dali_ms(pipe, batch_size: int, batches: int) -> float:
    pipe.run()  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    return 1000 * (time.perf_counter() - t) / (batches * batch_size)


def _dali(shards: SampleSet, img_size: int, batch_size: int, batches: int) -> tuple[list, list, list]:
    from nvidia import dali
    from nvidia.dali import fn, types

    from benchmarks.common.loaders import DecodeCeiling
    from cxr_fast.pipelines.dali import build_pipeline

    spec = AugmentSpec.for_training(img_size)
    decode = _dali_ms(DecodeCeiling(shards, batch_size, 1).pipe, batch_size, batches)
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=1, device_id=None, seed=1, prefetch_queue_depth=2)
    with pipe:
        jpg = fn.readers.webdataset(paths=[str(t) for t, _ in shards.shards],
                                    index_paths=[str(i) for _, i in shards.shards], ext=["jpg;png"])
        pipe.set_outputs(fn.decoders.image_random_crop(jpg, device="cpu", output_type=types.GRAY,
                                                       random_area=list(spec.scale),
                                                       random_aspect_ratio=list(spec.ratio), num_attempts=10))
    pipe.build()
    crop = _dali_ms(pipe, batch_size, batches)

    def graph(fused: bool) -> float:
        return _dali_ms(build_pipeline(shards, spec, batch_size, num_threads=1, device_id=None, seed=0, rank=0,
                                       world=1, fused_warp=fused), batch_size, batches)

    full, exact = graph(True), graph(False)
    ceiling = [("reader + decoders.image (gray)", "decode", decode)]
    cpu = [("reader + decoders.image_random_crop (gray)", "decode", crop),
           ("warp_affine, nearest (crop -> S, rotation, flip; = full graph - crop-decode)", "augment", full - crop)]
    cpu_exact = [("reader + decoders.image_random_crop (gray)", "decode", crop),
                 ("resize linear antialiased + warp_affine nearest (rotation, flip; = full graph - crop-decode)",
                  "augment", exact - crop)]
    return cpu, cpu_exact, ceiling


def breakdown(names: list[str], files: SampleSet, shards: SampleSet, img_size: int, batch_size: int, k: int) -> dict:
    """{"images", "threads": 1, "stages": [{pipeline, stage, category, ms}], "per_pipeline": {row: {category: ms,
    "total": ms}}} for the CPU rows among `names`, with torch on one thread (as in DataLoader workers)."""
    k = max(1, min(k, len(shards)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {}
    try:
        if "pil-files" in names:
            rows["pil-files"] = _pil_files(list(files.files[:k]), img_size)
        if "pil-shards" in names:
            rows["pil-shards"] = _pil_shards(shards, img_size, k)
        dali_rows = ("dali-cpu", "dali-cpu-exact", "decode-ceiling")
        if any(n in names for n in dali_rows):
            b = min(batch_size, len(shards))
            graphs = _dali(shards, img_size, b, max(1, len(shards) // b - 1))
            rows.update({n: st for n, st in zip(dali_rows, graphs) if n in names})
    finally:
        torch.set_num_threads(threads)
    stages = [{"pipeline": p, "stage": name, "category": cat, "ms": ms} for p, st in rows.items()
              for name, cat, ms in st]
    per = {}
    for p, st in rows.items():
        per[p] = {c: sum(ms for _, cat, ms in st if cat == c) for c in CATEGORIES}
        per[p]["total"] = sum(per[p].values())
    return {"images": k, "threads": 1, "stages": stages, "per_pipeline": per}
