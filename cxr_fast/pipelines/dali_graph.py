"""The DALI graph behind `--pipeline dali`: WebDataset shards -> decode + augment -> uint8 (the loader is `dali.py`).

Per sample:

    readers.webdataset  (jpg|png, labels: raw float32, index: raw int64)
    train, decode "crop": decoders.image_random_crop    decodes only the random-area crop window (a ROI decode)
    train, decode "full": decoders.image -> random_crop_generator -> slice    whole image, then the same window
           [-> resize to S x S]          linear, antialiased; GPU default only (see below)
           -> warp_affine                nearest: rotation and horizontal flip (and, fused, crop -> S x S)
           -> jitter                     only when spec.jitter > 0: brightness, then contrast about the mean
    eval:  decoders.image -> resize      the whole image squashed to S x S, linear + antialias (as PIL's BILINEAR)

Decode forms (`decode`, the trainer's `--dali_decode`): "crop" fuses the crop into the decode; on a GPU ("mixed")
that is nvImageCodec's region-of-interest decode, reported broken in the 0.9 series (NVIDIA/nvImageCodec#55:
INTERNAL_ERROR on A100, SIGSEGV on H100) and, with older nvJPEG, kept off the hardware JPEG decoder. "full" decodes
the whole image (hardware-decoder eligible) and cuts the window after. Both draw the window with DALI's one
random-crop rule (area in `spec.scale`, log-uniform aspect ratio in `spec.ratio`, 10 attempts) from the same seed,
so they produce the same crop, pixel for pixel on the CPU (tests/pipelines/test_dali.py). "auto" = "full" on CUDA,
"crop" on the CPU (where the fused decode is the fast one). "full" on the CPU runs the GPU graph's operators on
CPU operators: the twin CI runs end to end.

The warp: on CPU every resampling pass costs about as much as the decode, and DALI's CPU warp is ~5x slower with
bilinear than nearest sampling (measured: ~950 vs ~200 img/s; resize + warp ~390). So on CPU (`fused_warp`
default) ONE nearest warp maps the crop straight to S x S with rotation and flip: the resize part then skips the
antialiasing the spec asks for "where the kernel offers it" (mild aliasing: a 512 px crop is ~1.1-1.35x a 380 px
output). On a GPU, where passes are cheap, the spec is followed exactly: linear antialiased resize, then the
nearest warp for rotation + flip only. Either way the flip is a negative x scale in the warp matrix, not a pass.

Every random operator has its own seed, `seeds.derive(seed, "dali_augment", rank, operator)` (the reader's from the
"dali_reader" stream), so the two decode forms and the two warp forms draw the same numbers.
"""

from __future__ import annotations

from pathlib import Path

from cxr_fast import seeds
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.errors import UserError

READER = "Reader"
DECODES = ("auto", "crop", "full")
# operator ids for the per-operator seeds
_CROP, _FLIP, _ROTATE, _BRIGHTNESS, _CONTRAST = range(10, 15)


def require_dali(decode: str | None = None, gpu: bool = False):
    """Import DALI lazily (the rest of the package works where it is absent) and refuse one older than the floor;
    with `decode` (the trainer's --dali_decode) also refuse a decode form that cannot run here (`resolve_decode`),
    so a CLI stops at start-up instead of at its first loader."""
    from cxr_fast import versions

    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin import pytorch  # noqa: F401
    except ImportError as e:
        pkg = versions.DALI_PACKAGES[versions.cuda_major(versions.torch_cuda())]
        raise UserError(f"--pipeline dali needs NVIDIA DALI ({e}); install it with "
                        f"`pip install '{pkg}>={versions.DALI_MIN}'` or use --pipeline pil") from None
    from nvidia import dali

    versions.check_dali(getattr(dali, "__version__", "0"))
    if decode is not None:
        resolve_decode(decode, gpu)
    return dali


def resolve_decode(decode: str, gpu: bool) -> str:
    """'auto' -> 'full' on a GPU, 'crop' on the CPU; 'crop' and 'full' as given, except 'crop' on a GPU with an
    nvImageCodec whose ROI decode crashes the process (`versions.roi_refusal`): a one-line UserError instead."""
    from cxr_fast.versions import roi_refusal

    if decode not in DECODES:
        raise UserError(f"--dali_decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "auto":
        return "full" if gpu else "crop"
    why = roi_refusal(decode, gpu)
    if why:
        raise UserError(why)
    return decode


def png_warning(shards: list[tuple[Path, Path]], gpu: bool) -> str | None:
    """A start-up warning when a CUDA run reads PNG shards: DALI's "mixed" decoder decodes only JPEG (and JPEG 2000)
    on the GPU, PNG falls back to its CPU threads. Read from each index's first sample line (`<ext> <offset> <size>
    <name>` per member), so it needs no manifest."""
    if not gpu:
        return None
    png = 0
    for _, idx in shards:
        try:
            with open(idx) as f:
                f.readline()
                exts = f.readline().split()[0::4]
        except OSError:
            continue  # the reader names unreadable shards itself
        png += "png" in exts
    if not png:
        return None
    return (f"{png} of {len(shards)} shard(s) hold PNG images: DALI decodes PNG on its CPU threads, not the GPU "
            f"(expect ~60-150 img/s per CPU thread for 512 px grey PNG, instead of thousands on the GPU decoder); "
            f"re-shard with cxr-shard --format jpg for GPU decoding")


def shard_sample_counts(shards: list[tuple[Path, Path]]) -> list[int]:
    """Sample count of each shard, from its DALI index's first line."""
    from cxr_fast.shards.format import index_sample_count

    return [index_sample_count(idx) for _, idx in shards]


def decode_crop(encoded, spec: AugmentSpec, decode_kw: dict, decode: str, seed: int):
    """The random-area crop window of the image, (h, w, 1): decoded alone ("crop") or cut from the whole ("full").
    Same rule, same seed: the same window either way."""
    from nvidia.dali import fn

    rule = {"random_area": list(spec.scale), "random_aspect_ratio": list(spec.ratio), "num_attempts": 10,
            "seed": seed}
    if decode == "crop":
        return fn.decoders.image_random_crop(encoded, **rule, **decode_kw)
    img = fn.decoders.image(encoded, **decode_kw)  # (H, W, 1), on the GPU for "mixed"
    anchor, shape = fn.random_crop_generator(img.shape(), **rule)  # CPU: [y, x], [h, w]
    return fn.slice(img, start=anchor, shape=shape, axes=[0, 1])


def _train_images(encoded, spec: AugmentSpec, decode_kw: dict, fused_warp: bool, decode: str, seed):
    """Random-area crop, a nearest warp_affine for rotation + flip, then jitter. `seed(k)` is operator k's seed.

    fused_warp: the warp also does the resize crop -> S x S (one resampling pass, the fast CPU choice); otherwise
    a linear antialiased resize comes first and the warp works at S x S (the spec exactly; cheap on a GPU).
    """
    from nvidia.dali import fn, types

    s = float(spec.img_size)
    img = decode_crop(encoded, spec, decode_kw, decode, seed(_CROP))
    if not fused_warp:
        img = fn.resize(img, resize_x=s, resize_y=s, interp_type=types.INTERP_LINEAR, antialias=True)
    if fused_warp or spec.rotate_deg > 0 or spec.flip_p > 0:
        hw = img.shape(dtype=types.FLOAT)  # [h, w, 1], on the CPU also for GPU images
        h, w = hw[0], hw[1]
        sx = w / s
        if spec.flip_p > 0:
            flip = fn.random.coin_flip(probability=spec.flip_p, dtype=types.INT32, seed=seed(_FLIP))
            sx = sx * (1.0 - 2.0 * flip)
        # Destination -> source map on continuous pixel coordinates ([0, 0] = corner of the first pixel):
        # centre the output, rotate, scale to the source (x mirrored when flipped), move to the source's centre.
        m = fn.transforms.translation(offset=[-s / 2, -s / 2])
        if spec.rotate_deg > 0:
            angle = fn.random.uniform(range=[-spec.rotate_deg, spec.rotate_deg], seed=seed(_ROTATE))
            m = fn.transforms.rotation(m, angle=angle)
        m = fn.transforms.scale(m, scale=fn.stack(sx, h / s))
        m = fn.transforms.translation(m, offset=fn.stack(w / 2, h / 2))
        img = fn.warp_affine(img, matrix=m, size=[s, s], interp_type=types.INTERP_NN, fill_value=0, inverse_map=True)
    if spec.jitter > 0:
        img = _jitter(img, spec.jitter, seed(_BRIGHTNESS), seed(_CONTRAST))
    return img


def _jitter(img, jitter: float, seed_b: int, seed_c: int):
    """As the PIL path (ImageEnhance.Brightness, then .Contrast): x = clamp(b * img), out = m + c * (x - m), with m the
    mean grey of x, so contrast keeps the mean. fn.brightness_contrast can't do this: its pivot is a CPU-side argument,
    and on the GPU the mean lives on the device, so plain arithmetic ops do it on either backend."""
    from nvidia.dali import fn, math, types

    j = [1.0 - jitter, 1.0 + jitter]
    b, c = fn.random.uniform(range=j, seed=seed_b), fn.random.uniform(range=j, seed=seed_c)
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


def _decode_kw(samples: SampleSet, gpu: bool, hw_decoder_load: float) -> dict:
    from nvidia.dali import types

    kw = {"device": "mixed" if gpu else "cpu", "output_type": types.GRAY}
    if gpu:
        kw["hw_decoder_load"] = hw_decoder_load
        if samples.image_hint:
            kw["preallocate_height_hint"], kw["preallocate_width_hint"] = map(int, samples.image_hint)
    return kw


def build_pipeline(samples: SampleSet, spec: AugmentSpec, batch_size: int, *, num_threads: int, device_id: int | None,
                   seed: int, rank: int, world: int, hw_decoder_load: float = 0.65, prefetch: int = 2,
                   fused_warp: bool | None = None, decode: str = "auto", checkpoint: bytes | None = None):
    """The DALI pipeline (built, not yet run). `device_id=None` = CPU only; an int = mixed decode on that GPU.
    Training pipelines record their state (`enable_checkpointing`: reader position, shuffle and operator RNGs);
    `checkpoint` (from `DALILoader.resume_state`) restores one (a mid-epoch resume, docs/faults.md).

    fused_warp (train only): None = fused on CPU, resize + warp on GPU (see `_train_images`).
    decode (train only): "auto", "crop" or "full" (see the module docstring); eval always decodes the whole image.
    """
    dali = require_dali()
    from nvidia.dali import fn, types

    counts = shard_sample_counts(samples.shards)
    gpu = device_id is not None
    form = resolve_decode(decode, gpu)
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                         seed=seeds.derive(seed, "dali_augment", rank), prefetch_queue_depth=prefetch,
                         enable_checkpointing=spec.train, checkpoint=checkpoint if spec.train else None)
    decode_kw = _decode_kw(samples, gpu, hw_decoder_load)
    with pipe:
        shuffle = {"random_shuffle": True, "initial_fill": max(max(counts), batch_size), "shuffle_after_epoch": True,
                   "shuffle_after_epoch_seed": seeds.derive(seed, "dali_reader")} if spec.train else {
                       "stick_to_shard": True}
        encoded, labels, index = fn.readers.webdataset(
            paths=[str(t) for t, _ in samples.shards], index_paths=[str(i) for _, i in samples.shards],
            ext=["jpg;png", "labels", "index"], dtypes=[types.UINT8, types.FLOAT, types.INT64],
            missing_component_behavior="error", shard_id=rank, num_shards=world, pad_last_batch=True,
            # plain reads, not mmap: mapped tar pages stayed in the process's RSS (~13 KB per sample read, 1.2 GB
            # more at NIH's size), and network file systems (the shared storage DDP needs) gain nothing from mmap
            dont_use_mmap=True,
            name=READER, seed=seeds.derive(seed, "dali_reader", rank), **shuffle)
        fused = (not gpu) if fused_warp is None else fused_warp
        if spec.train:
            op_seed = lambda k: seeds.derive(seed, "dali_augment", rank, k)  # one seed per operator
            images = _train_images(encoded, spec, decode_kw, fused, form, op_seed)
        else:
            images = _eval_images(encoded, spec, decode_kw)
        if gpu:
            labels, index = labels.gpu(), index.gpu()
        pipe.set_outputs(images, labels, index)
    pipe.build()
    return pipe
