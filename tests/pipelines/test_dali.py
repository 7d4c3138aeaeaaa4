"""The DALI pipeline (CPU mode here; GPU tests marked): coverage, alignment, contract, determinism, PIL differential,
in both decode forms where the training graph is involved. Data: tests/pipelines/dali_data.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import SampleSet
from cxr_fast.errors import UserError
from cxr_fast.pipelines.dali import build_dali_loader
from cxr_fast.shards.read import load_manifest, sample_set

from .dali_data import CPU, FOLDS, N, check_alignment, corr, epoch, grey, indices
from .dali_data import write_set as _write

DECODES = ["crop", "full"]


def test_contract_cpu(synth):
    for spec, nb in [(AugmentSpec.for_training(32), N // 8), (AugmentSpec.for_eval(24), -(-N // 8))]:
        loader = build_dali_loader(synth, spec, 8, CPU, num_workers=2, seed=0)
        assert len(loader) == nb and loader.num_samples == N
        batches = epoch(loader)
        assert len(batches) == nb
        images, labels, index = batches[0]
        s = spec.img_size
        assert images.shape == (8, 1, s, s) and images.dtype == torch.uint8 and images.is_contiguous()
        assert labels.shape == (8, 4) and labels.dtype == torch.float32
        assert index.shape == (8,) and index.dtype == torch.int64
        assert all(t.device.type == "cpu" for t in batches[0])
        loader.set_epoch(1)  # recorded only; must not break iteration


@pytest.mark.parametrize("bs", [5, 7, 64])  # divides 45, does not, exceeds it
def test_eval_sees_each_sample_once(synth, bs):
    loader = build_dali_loader(synth, AugmentSpec.for_eval(16), bs, CPU, num_workers=2)
    for _ in range(2):
        batches = epoch(loader)
        assert len(batches) == len(loader) == -(-N // bs)
        assert sorted(indices(batches)) == list(range(N))
    check_alignment(batches)


@pytest.mark.parametrize("world,bs", [(2, 11), (3, 4)])  # 45 = 22 + 23: rank 0's part is 2 batches of 11
def test_eval_ranks_partition(synth, world, bs):
    loaders = [build_dali_loader(synth, AugmentSpec.for_eval(16), bs, CPU, num_workers=1, rank=r, world=world)
               for r in range(world)]
    for _ in range(2):
        parts = []
        for ld in loaders:
            batches = epoch(ld)
            assert len(batches) == len(ld) and all(b[0].shape[0] > 0 for b in batches)
            parts.append(indices(batches))
        assert sorted(i for p in parts for i in p) == list(range(N))


def test_train_full_batches_reshuffled(synth):
    spec = AugmentSpec.for_training(24)
    loader = build_dali_loader(synth, spec, 7, CPU, num_workers=2, seed=3)
    assert len(loader) == N // 7
    orders, seen = [], Counter()
    for e in range(4):
        loader.set_epoch(e)
        batches = epoch(loader)
        assert len(batches) == N // 7 and all(b[0].shape[0] == 7 for b in batches)
        idx = indices(batches)
        assert len(set(idx)) == len(idx) and set(idx) <= set(range(N))
        orders.append(idx)
        seen.update(idx)
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert len(seen) == N  # the dropped remainder changes too
    check_alignment(batches)


def test_train_ranks_disjoint_and_equal_length(synth):
    # 22 + 23 samples, batch 11: DALI's own DROP policy would open epoch 2 with a batch of padding copies here.
    world, bs = 2, 11
    loaders = [build_dali_loader(synth, AugmentSpec.for_training(16), bs, CPU, num_workers=1, seed=5, rank=r,
                                 world=world) for r in range(world)]
    assert [len(ld) for ld in loaders] == [2, 2]
    for _ in range(3):
        parts = [indices(epoch(ld)) for ld in loaders]
        assert [len(p) for p in parts] == [22, 22]
        assert len(set(parts[0] + parts[1])) == 44


@pytest.mark.parametrize("decode", DECODES)
@pytest.mark.parametrize("fused", [True, False])  # CPU default / GPU default graph
def test_alignment_after_train_augmentation(synth, fused, decode):
    spec = AugmentSpec(img_size=32, scale=(0.5, 1.0), rotate_deg=30, flip_p=0.5)
    check_alignment(epoch(build_dali_loader(synth, spec, 6, CPU, num_workers=2, seed=1, fused_warp=fused,
                                            decode=decode)))


def test_jitter_on_flat_images_is_brightness_only(synth):
    spec = AugmentSpec(img_size=16, jitter=0.2, rotate_deg=0)
    batches = epoch(build_dali_loader(synth, spec, 9, CPU, num_workers=2, seed=1))
    images = torch.cat([b[0] for b in batches]).float().flatten(1)
    g = torch.from_numpy(grey(indices(batches))).float()
    assert torch.all(images.max(1).values - images.min(1).values <= 1)  # contrast about the mean leaves flat flat
    ratio = images.mean(1) / g
    assert torch.all(ratio >= 0.8 - 0.6 / g) and torch.all(ratio <= 1.2 + 0.6 / g)  # b in [0.8, 1.2], +- rounding
    assert (images.mean(1) - g).abs().max() > 3  # it does move


@pytest.mark.parametrize("pipeline", ["pil", "dali"])
def test_jitter_contrast_pivots_on_the_mean(tmp_path, pipeline):
    """Two-level images (mean 60, far from mid-grey): brightness b scales the mean, contrast c scales the spread
    about it, both within [1 - j, 1 + j], in both pipelines (PIL's ImageEnhance semantics)."""
    lo_hi = (40, 80)
    img = np.full((32, 32), lo_hi[0], np.uint8)
    img[:, ::2] = lo_hi[1]  # vertical stripes: any crop keeps mean 60, spread 20
    out = _write(tmp_path, [img] * 12, [["0", "1", "0", "1"]] * 12, folds=3, seed=0, resize=0, samples_per_shard=8)
    samples = sample_set(out, load_manifest(out), FOLDS)
    spec = AugmentSpec(img_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_deg=0, flip_p=0, jitter=0.2)
    from cxr_fast.pipelines import build_loader

    images = torch.cat([b[0] for b in build_loader(pipeline, samples, spec, 4, CPU, num_workers=1, seed=3)])
    x = images.float().flatten(1)
    b = x.mean(1) / 60
    c = x.std(1) / (20 * b)
    assert torch.all((b > 0.8 - 0.02) & (b < 1.2 + 0.02)), b
    assert torch.all((c > 0.8 - 0.06) & (c < 1.2 + 0.06)), c
    assert b.std() > 0.01 and c.std() > 0.01  # both drawn per sample


def test_deterministic_for_a_seed(synth):
    spec = AugmentSpec.for_training(24, color_jitter=True)

    def run(seed):
        loader = build_dali_loader(synth, spec, 8, CPU, num_workers=2, seed=seed)
        return [torch.cat([torch.cat([b[0].flatten(1).float(), b[2][:, None].float()], 1) for b in epoch(loader)])
                for _ in range(2)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_checkpoint_between_epochs_continues_the_next_epoch(synth):
    """resume_state() after a full epoch (what last.pth keeps at every epoch's end), restored into a fresh loader:
    the next epoch has the uninterrupted loader's order and augmentation, not a restarted pipeline's first epoch."""
    spec = AugmentSpec.for_training(24)

    def images(loader):
        return torch.cat([torch.cat([b[0].flatten(1).float(), b[2][:, None].float()], 1) for b in epoch(loader)])

    first = build_dali_loader(synth, spec, 8, CPU, num_workers=2, seed=7)
    images(first)
    state = first.resume_state()
    assert isinstance(state["dali"], bytes) and state["batches"] == len(first)
    second_epoch = images(first)
    fresh = build_dali_loader(synth, spec, 8, CPU, num_workers=2, seed=7)
    fresh_first = images(fresh)
    resumed = build_dali_loader(synth, spec, 8, CPU, num_workers=2, seed=7)
    resumed.resume_from(state)
    assert torch.equal(images(resumed), second_epoch)
    assert not torch.equal(fresh_first, second_epoch)  # why the state is kept: epoch 2 is not a fresh epoch 1


def test_a_pipeline_that_cannot_checkpoint_warns_once_and_saves_no_state(synth, capsys, monkeypatch):
    from cxr_fast.pipelines import dali

    monkeypatch.setattr(dali, "_warned", set())  # warnings are once per process
    loader = build_dali_loader(synth, AugmentSpec.for_training(24), 8, CPU, num_workers=1, seed=7)

    class NoCheckpoints:
        def checkpoints(self):
            raise RuntimeError("Checkpointing is not implemented for this operator\nC++ trace")

    loader._it = NoCheckpoints()
    assert loader.resume_state() is None and loader.resume_state() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DALI could not checkpoint its pipeline (" in err[0] and "C++" not in err[0], err


def test_a_checkpoint_of_another_graph_warns_once_and_drops_the_done_batches(synth, capsys, monkeypatch):
    """A checkpoint of another pipeline graph (here: with colour jitter; on a GPU machine a CPU run's last.pth):
    DALI refuses it; the loader says so once and keeps its fresh pipeline, and a mid-epoch resume then drops the
    batches already trained."""
    from cxr_fast.pipelines import dali

    monkeypatch.setattr(dali, "_warned", set())
    jitter = build_dali_loader(synth, AugmentSpec.for_training(24, color_jitter=True), 4, CPU, num_workers=1, seed=7)
    plain = build_dali_loader(synth, AugmentSpec.for_training(24), 4, CPU, num_workers=1, seed=7)
    plain.resume_from(jitter.resume_state())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DALI could not restore its pipeline from last.pth (" in err[0], err
    plain.skip_batches(2)
    assert len(list(plain)) == len(plain) - 2


def test_break_early_then_full_epoch(synth):
    loader = build_dali_loader(synth, AugmentSpec.for_eval(16), 4, CPU, num_workers=1)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert sorted(indices(epoch(loader))) == list(range(N))


@pytest.mark.parametrize("decode", DECODES)
def test_geometry_matches_pil(tmp_path, decode):
    """Full-image 'crop', no rotation. Fused: the warp is exactly PIL's nearest resize (mirrored with flip_p=1).
    Unfused: exactly the mirrored eval output (resize, then an exact mirror by the warp); that resize vs PIL's
    BILINEAR on white noise at 60x80 -> 40x40 (the worst case for filter differences): mean 0.42, max 10 grey levels.
    """
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 80), dtype=np.uint8) for _ in range(6)]
    out = _write(tmp_path, images, [["0", "1", "0", "1"]] * 6, folds=2, seed=0, resize=0, image_format="png")
    samples = sample_set(out, load_manifest(out), ["fold1", "fold2"])
    resized = {int(i): im[0] for ims, _, idx in build_dali_loader(samples, AugmentSpec.for_eval(40), 3, CPU)
               for i, im in zip(idx, ims)}
    for fused, flip in [(True, 0.0), (True, 1.0), (False, 1.0)]:
        spec = AugmentSpec(img_size=40, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), rotate_deg=0, flip_p=flip)
        for imgs, _, index in epoch(build_dali_loader(samples, spec, 3, CPU, num_workers=1, fused_warp=fused,
                                                      decode=decode)):
            for k, i in enumerate(index.tolist()):
                pil = Image.fromarray(images[i]).resize((40, 40), Image.NEAREST if fused else Image.BILINEAR)
                pil = np.asarray(pil.transpose(Image.FLIP_LEFT_RIGHT) if flip else pil, np.float32)
                got = imgs[k, 0].numpy()
                if fused:
                    np.testing.assert_array_equal(got, pil)
                else:
                    np.testing.assert_array_equal(got, resized[i].flip(-1).numpy())
                    assert np.abs(got - pil).mean() < 1.0


@pytest.mark.parametrize("decode", DECODES)
def test_real_radiograph_survives(real, decode):
    samples, originals = real
    s = 380
    eval_batches = epoch(build_dali_loader(samples, AugmentSpec.for_eval(s), 4, CPU, num_workers=2))
    plain = AugmentSpec(img_size=s, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_deg=0, flip_p=0)  # the warp paths
    train_batches = [epoch(build_dali_loader(samples, plain, 4, CPU, num_workers=2, fused_warp=f, decode=decode))
                     for f in (1, 0)]
    for batches in (eval_batches, *train_batches):
        for imgs, _, index in batches:
            for k, i in enumerate(index.tolist()):
                ref = Image.fromarray(originals[i]).resize((s, s), Image.BILINEAR)
                assert corr(imgs[k, 0].numpy(), ref) > 0.95


def test_differential_against_pil_eval(real):
    """Same shards, eval transform: DALI (decode + linear antialiased resize) vs PIL (decode + BILINEAR resize).

    Measured here (2-core CPU, DALI 2.4, Pillow): mean |DALI - PIL| = 0.17 grey levels at 380 px and 0.13 at
    224 px; the largest single-pixel difference 3 and 8 levels (at sharp edges).
    """
    pil = pytest.importorskip("cxr_fast.pipelines.pil")
    samples, _ = real
    for s in (380, 224):
        spec = AugmentSpec.for_eval(s)
        d = {int(i): im for ims, _, idx in build_dali_loader(samples, spec, 4, CPU, num_workers=2)
             for i, im in zip(idx, ims)}
        p = {int(i): im for ims, _, idx in pil.build_pil_loader(samples, spec, 4, CPU, num_workers=0)
             for i, im in zip(idx, ims)}
        assert d.keys() == p.keys()
        mad = np.mean([(d[i].float() - p[i].float()).abs().mean().item() for i in d])
        assert mad < 0.5, mad


def test_user_errors(synth, monkeypatch):
    with pytest.raises(UserError, match="do not fill one batch"):
        build_dali_loader(synth, AugmentSpec.for_training(16), 64, CPU)
    short = SampleSet(index=synth.index[:-1], labels=synth.labels[:-1], shards=synth.shards)
    with pytest.raises(UserError, match="shards hold 45 samples"):
        build_dali_loader(short, AugmentSpec.for_eval(16), 8, CPU)
    monkeypatch.setitem(__import__("sys").modules, "nvidia.dali", None)  # DALI absent
    monkeypatch.setattr("cxr_fast.versions.torch_cuda", lambda: "13.0")  # the hint follows torch's CUDA major
    with pytest.raises(UserError, match="nvidia-dali-cuda130>=2.2"):
        build_dali_loader(synth, AugmentSpec.for_eval(16), 8, CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_mixed_decode(synth, real):
    dev = torch.device("cuda", 0)
    loader = build_dali_loader(synth, AugmentSpec.for_eval(16), 7, dev, num_workers=2)
    batches = [(a.cpu(), b.cpu(), c.cpu()) for a, b, c in epoch(loader)]
    assert all(t.device == dev for t in next(iter(loader)))
    assert sorted(indices(batches)) == list(range(N))
    check_alignment(batches)
    check_alignment([(a.cpu(), b.cpu(), c.cpu()) for a, b, c in
                     build_dali_loader(synth, AugmentSpec(img_size=32, rotate_deg=30), 6, dev, num_workers=2)])
    samples, originals = real
    for ims, _, index in build_dali_loader(samples, AugmentSpec.for_eval(380), 4, dev, num_workers=2):
        for k, i in enumerate(index.tolist()):
            ref = Image.fromarray(originals[i]).resize((380, 380), Image.BILINEAR)
            assert corr(ims[k, 0].cpu().numpy(), ref) > 0.95

