"""`decode` ("auto", "crop", "full"; the trainer's --dali_decode): the two forms give the same images on the CPU, "auto"
resolves by device, and DALI errors are told apart - unreadable shard data vs anything else (dali_errors)."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("nvidia.dali")

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.errors import UserError
from cxr_fast.pipelines.dali import build_dali_loader
from cxr_fast.pipelines.dali_errors import DALIPipelineError, classify, loader_error
from cxr_fast.pipelines.dali_graph import resolve_decode
from cxr_fast.shards.format import read_index
from cxr_fast.shards.read import load_manifest, sample_set

from .dali_data import CPU, epoch

AUG = AugmentSpec(img_size=64, scale=(0.5, 1.0), rotate_deg=30, flip_p=0.5, jitter=0.1)


@pytest.mark.parametrize("fused", [True, False])
def test_full_and_crop_give_the_same_images_on_cpu(synth, real, fused):
    """Same seeds, same crop rule: "full" (decode, random_crop_generator, slice) == "crop" (ROI decode), bit for bit,
    on PNG (synthetic) and JPEG (radiographs) shards, with rotation, flip and jitter."""
    for samples in (synth, real[0]):
        a, b = (epoch(build_dali_loader(samples, AUG, 4, CPU, num_workers=2, seed=3, fused_warp=fused, decode=d))
                for d in ("crop", "full"))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert torch.equal(x[2], y[2]) and torch.equal(x[1].nan_to_num(-7), y[1].nan_to_num(-7))
            assert torch.equal(x[0], y[0])


def test_full_differs_between_seeds(real):
    a, b = (torch.cat([t[0] for t in epoch(build_dali_loader(real[0], AUG, 4, CPU, num_workers=2, seed=s,
                                                             decode="full"))]) for s in (1, 2))
    assert not torch.equal(a, b)


def test_auto_resolves_by_device(synth, monkeypatch):
    monkeypatch.setattr("cxr_fast.versions.nvimgcodec_version", lambda: "0.10.0")  # crop on CUDA: not refused
    assert resolve_decode("auto", gpu=True) == "full" and resolve_decode("auto", gpu=False) == "crop"
    assert resolve_decode("full", gpu=False) == "full" and resolve_decode("crop", gpu=True) == "crop"
    assert build_dali_loader(synth, AUG, 8, CPU, num_workers=1).decode == "crop"
    assert build_dali_loader(synth, AUG, 8, CPU, num_workers=1, decode="full").decode == "full"
    with pytest.raises(UserError, match="--dali_decode must be one of auto, crop, full"):
        build_dali_loader(synth, AUG, 8, CPU, decode="roi")


@pytest.mark.parametrize("decode,operator", [("crop", "decoders.image_random_crop"), ("full", "decoders.image")])
def test_corrupt_member_is_a_shard_error_in_both_forms(real, tmp_path, decode, operator):
    """A zeroed JPEG member: the error names the form's decoder (so "full" really decodes with decoders.image) and
    is reported as a corrupt shard, one line, pointing at cxr-shard verify."""
    root = real[0].shards[0][0].parent
    broken = tmp_path / "shards"
    shutil.copytree(root, broken)
    for tar in broken.glob("*.tar"):
        off, size = read_index(tar.with_suffix(".idx"))[0]["jpg"]
        data = bytearray(tar.read_bytes())
        data[off:off + size] = b"\0" * size
        tar.write_bytes(bytes(data))
    samples = sample_set(broken, load_manifest(broken), ["fold1", "fold2"])
    with pytest.raises(UserError) as e:
        epoch(build_dali_loader(samples, AUG, 2, CPU, num_workers=1, decode=decode))
    msg = str(e.value)
    assert "\n" not in msg and "cxr-shard verify" in msg and f"operator {operator}" in msg, msg


def _dali_text(backend: str, op: str, what: str) -> str:
    """The shape of a DALI 2.4 pipeline error (as raised by a CPU decoder on bad bytes, captured here)."""
    return (f"Critical error in pipeline:\nError in {backend} operator `nvidia.dali.fn.{op}`,\nwhich was used in the "
            f"pipeline definition with the following traceback:\n\n  File \"x.py\", line 1, in <module>\n    "
            f"x = fn.{op}(enc)\n\nencountered:\n\n{what}\nC++ context: [/opt/dali/dali/x.cc:42] \n"
            "Current pipeline object is no longer valid.")


@pytest.mark.parametrize("backend,op,what,kind", [
    ("CPU", "readers.webdataset", "Unexpected end of file in tar", "read"),
    ("CPU", "decoders.image", "nvImageCodec failure: '#4'", "data"),
    ("MIXED", "decoders.image_random_crop", "nvImageCodec failure: '#3'", "data"),
    ("MIXED", "decoders.image_random_crop", "nvImageCodec failure: '#8'", "decoder"),  # nvImageCodec#55
    ("MIXED", "decoders.image", "CUDA error: an illegal memory access was encountered", "decoder"),
    ("GPU", "warp_affine", "CUDA error: out of memory", "other"),
    ("CPU", "slice", "Slice out of bounds", "other"),
])
def test_classify(backend, op, what, kind):
    f = classify(_dali_text(backend, op, what))
    assert (f.kind, f.backend, f.operator, f.detail) == (kind, backend.lower(), op, what)


def test_only_shard_failures_are_reported_as_corrupt_shards():
    corrupt = loader_error(RuntimeError(_dali_text("CPU", "decoders.image", "nvImageCodec failure: '#4'")), "/s",
                           "full")
    assert isinstance(corrupt, UserError) and "cxr-shard verify /s" in str(corrupt)
    roi = loader_error(RuntimeError(_dali_text("MIXED", "decoders.image_random_crop", "nvImageCodec failure: '#8'")),
                       "/s", "crop")
    assert isinstance(roi, DALIPipelineError) and not isinstance(roi, UserError)
    assert "corrupt" not in str(roi) and "--dali_decode full" in str(roi) and "\n" not in str(roi)
    oom = loader_error(RuntimeError(_dali_text("GPU", "warp_affine", "CUDA error: out of memory")), "/s", "full")
    assert isinstance(oom, DALIPipelineError) and "not a problem with the shards" in str(oom)
    assert "cxr-shard verify" not in str(oom)


def test_loader_raises_non_shard_errors_as_pipeline_errors(synth):
    """A fake DALI failure mid-epoch in a non-reading operator surfaces as DALIPipelineError, original chained."""
    loader = build_dali_loader(synth, AUG, 8, CPU, num_workers=1)
    fake = RuntimeError(_dali_text("CPU", "warp_affine", "std::bad_alloc"))

    class Failing:
        def __next__(self):
            raise fake

    loader._it = Failing()
    with pytest.raises(DALIPipelineError, match="warp_affine") as e:
        next(iter(loader))
    assert e.value.__cause__ is fake
