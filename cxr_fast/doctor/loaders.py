"""Loader rates on generated shards: `dali-gpu` and `pil-shards` on a GPU (with a verdict), `dali-cpu` and
`pil-shards` without one (rates only: a CPU is not what this project trains on).

The data: `cxr-synth` images, packed by `write_test_shards` (test-only shards need no fold split, so no
iterative-stratification either) as baseline grey JPEG, the GPU decoder's format.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from cxr_fast.doctor import Row
from cxr_fast.errors import first_line

# What a GPU trains at: NVIDIA's A100 AMP rate for EfficientNet-B4 at 380 px (~331 img/s, from NVIDIA's
# DeepLearningExamples performance tables). A loader must beat it with room to spare: the GPU decoder by 3x, the CPU
# fallback at least 1x.
NEEDED_IMG_S = 330


def make_shards(root: Path, n: int, source: int, resize: int, workers: int):
    """`n` synthetic radiographs of `source` px as test-only JPEG shards under `root`; their SampleSet."""
    from cxr_fast.data.table import CHEXPERT_LABELS
    from cxr_fast.shards.read import load_manifest, sample_set
    from cxr_fast.shards.writer import write_test_shards
    from cxr_fast.synth.write import generate

    paths = generate(root / "data", n_train=1, n_test=n, size=source, seed=0, workers=workers, progress=False)
    out = root / "shards"
    write_test_shards(paths["test_dir"], out, CHEXPERT_LABELS, resize=resize, image_format="jpg", quality=90,
                      samples_per_shard=max(8, n // 4), workers=workers, progress=False, log=None)
    return sample_set(out, load_manifest(out), ["test"])


def measure(loader, seconds: float, device: torch.device, warm: int = 2) -> dict:
    """Images per second over a window of `seconds` after `warm` batches, across epochs as needed."""
    images, t0 = 0, None
    while True:
        for batch in loader:
            if t0 is None:
                warm -= 1
                if warm <= 0:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                continue
            images += batch.images.shape[0]
            if time.perf_counter() - t0 >= seconds:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # sync point: DALI and the copies run ahead of the host
                elapsed = time.perf_counter() - t0
                return {"img_per_s": images / elapsed, "images": images, "seconds": elapsed}


def _build(row: str, samples, spec, batch: int, workers: int, device: torch.device):
    if row == "pil-shards":
        from cxr_fast.pipelines.pil import build_pil_loader

        return build_pil_loader(samples, spec, batch, device, num_workers=workers, seed=0)
    from cxr_fast.pipelines.dali import build_dali_loader

    return build_dali_loader(samples, spec, batch, device if row == "dali-gpu" else torch.device("cpu"),
                             num_workers=workers, seed=0)


def loader_rows(workdir: Path, cuda: bool, have_dali: bool, seconds: float, quick: bool) -> list[Row]:
    from cxr_fast.data.augment import AugmentSpec

    device = torch.device("cuda" if cuda else "cpu")
    cores = len(os.sched_getaffinity(0))
    workers = max(1, min(8, cores))
    n, source, resize, size, batch = (64, 256, 256, 224, 16) if quick or not cuda else (192, 512, 512, 380, 32)
    names = ["dali-gpu" if cuda else "dali-cpu", "pil-shards"]
    try:
        samples = make_shards(workdir, n, source, resize, cores)
    except Exception as e:  # noqa: BLE001  (the doctor reports, it does not stop)
        why = first_line(e, with_type=True)
        return [Row(f"loader {r}", "fail", f"could not generate shards: {why}") for r in names]
    spec = AugmentSpec.for_training(size)
    rows = []
    for name in names:
        label = f"loader {name} ({size} px, batch {batch}, {workers} workers, {seconds:g} s)"
        if name.startswith("dali") and not have_dali:
            rows.append(Row(f"loader {name}", "skip", "DALI is not installed"))
            continue
        loader = None
        try:
            loader = _build(name, samples, spec, batch, workers, device)
            res = measure(loader, seconds, device)
        except Exception as e:  # noqa: BLE001
            rows.append(Row(label, "fail", first_line(e, with_type=True),
                            "run the matching pipeline test; report doctor.json"))
            continue
        finally:
            del loader
        rate = res["img_per_s"]
        rows.append(_verdict(label, name, rate, cuda and not quick, res))
    return rows


def _verdict(label: str, name: str, rate: float, judge: bool, res: dict) -> Row:
    detail = f"{rate:.0f} img/s"
    if not judge:
        return Row(label, "info", f"{detail} (no verdict without a GPU / in --quick mode)", data=res)
    need = 3 * NEEDED_IMG_S if name == "dali-gpu" else NEEDED_IMG_S
    if rate >= need:
        return Row(label, "pass", f"{detail} (>= {need} needed)", data=res)
    advice = ("the GPU decode is slow: check that the hardware JPEG decoder row passes, give DALI more CPU threads "
              "(--num_workers), and that nothing else loads the GPU" if name == "dali-gpu" else
              "the CPU path cannot feed a GPU here: use --pipeline dali (GPU decoding) or more --num_workers")
    return Row(label, "fail", f"{detail} (< {need} needed)", advice, res)
