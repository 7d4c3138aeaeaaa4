"""The training step without a per-step host sync: with an optimiser that skips on the device (fused AdamW, here on
the CPU), non-finite steps are skipped and counted, too many in a row raise TrainingDiverged, fp16 overflows are
counted apart, and the host reads the counts only every `check_every` steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxr_fast.model.ema import ModelEma
from cxr_fast.train import step as step_mod
from cxr_fast.train.amp import Amp
from cxr_fast.train.engine import build_optimizer, build_scheduler, train_one_epoch
from cxr_fast.train.step import TrainingDiverged
from tests.helpers import CPU, FlakyLoss, TensorLoader, toy_data, toy_model


def fused_adamw(model, lr=1e-2, weight_decay=0.1):
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError) as e:  # a torch without CPU fused kernels
        pytest.skip(f"fused AdamW is not available on the CPU here: {e}")


class RecordingLoss(FlakyLoss):
    """FlakyLoss that remembers the value of every finite loss it returned."""

    def __init__(self, bad, grad=False):
        super().__init__(bad, grad)
        self.good = []

    def forward(self, logits, targets):
        out = super().forward(logits, targets)
        if torch.isfinite(out):
            self.good.append(out.item())
        return out


def _epoch(model, loss_fn, n_batches, opt, *, amp=None, ema=None, **kw):
    images, labels = toy_data(n=8 * n_batches)
    sched = build_scheduler(opt, 0, 100)
    return train_one_epoch(model, TensorLoader(images, labels, batch_size=8), loss_fn, opt, sched,
                           amp or Amp(CPU, False), ema=ema, step=5, progress=False, **kw)


def _count_reads(monkeypatch) -> list[int]:
    calls = [0]
    real = step_mod.StepTally.read

    def read(self):
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(step_mod.StepTally, "read", read)
    return calls


@pytest.mark.parametrize("grad", [False, True], ids=["nan-loss", "nan-grad"])
def test_device_path_skips_non_finite_steps_and_syncs_only_at_checks(grad, monkeypatch):
    model = toy_model(blind=())
    with torch.no_grad():
        model.refiner.A.fill_(0.5)
    ema = ModelEma(model)
    opt = fused_adamw(model)  # weight decay > 0: an applied step with zero gradients would still move the weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reads = _count_reads(monkeypatch)
    stats = _epoch(model, FlakyLoss(bad=range(5), grad=grad), 5, opt, ema=ema, check_every=2)
    assert reads[0] == 3  # after steps 2 and 4, and once at the end: not once per step
    assert stats["skipped_steps"] == 5 and stats["overflow_steps"] == 0 and math.isnan(stats["loss"])
    assert stats["step"] == 10
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no step, no prox
    # updated toward a model that did not move and that it equals: unchanged (see ModelEma.update)
    assert all(torch.equal(v, before[k]) for k, v in ema.module.state_dict().items())
    assert all(float(s["step"]) == 0 for s in opt.state.values())  # the optimiser's own step count did not move
    assert opt.param_groups[0]["lr"] < 1e-2  # the schedule still advances


def test_device_path_recovers_and_averages_the_good_losses():
    model = toy_model(blind=())
    ema = ModelEma(model)
    before = model.refiner.A.detach().clone()
    loss_fn = RecordingLoss(bad={0, 1, 3, 4})
    stats = _epoch(model, loss_fn, 8, fused_adamw(model), ema=ema, max_bad_steps=2, check_every=3)
    assert stats["skipped_steps"] == 4 and len(loss_fn.good) == 4
    assert stats["loss"] == pytest.approx(sum(loss_fn.good) / 4, rel=1e-6)
    assert not torch.equal(model.refiner.A.detach(), before)
    assert not torch.equal(ema.module.backbone.head.weight, toy_model(blind=()).backbone.head.weight)
    # the EMA's A keeps the live A's support
    assert torch.all(ema.module.refiner.A[model.refiner.A == 0] == 0)


@pytest.mark.parametrize("check_every, calls", [(1, 3), (4, 4)])
def test_device_path_aborts_at_the_first_check_after_too_many_bad_steps(check_every, calls):
    model = toy_model()
    loss_fn = FlakyLoss(bad=range(100))
    with pytest.raises(TrainingDiverged, match="--no_amp"):
        _epoch(model, loss_fn, 8, fused_adamw(model), max_bad_steps=2, check_every=check_every)
    assert loss_fn.calls == calls


def test_a_run_of_bad_steps_between_checks_is_not_lost():
    model = toy_model()
    loss_fn = FlakyLoss(bad={1, 2, 3})  # 3 in a row, then good steps again before any check
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        _epoch(model, loss_fn, 6, fused_adamw(model), max_bad_steps=2, check_every=100)
    assert loss_fn.calls == 6  # found by the end-of-epoch read


@pytest.mark.parametrize("fused", [False, True], ids=["host-path", "device-path"])
def test_fp16_overflow_is_counted_apart_and_lowers_the_scale(fused):
    model = toy_model(blind=())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    amp = Amp(CPU, enabled=False)
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # a scaler's bookkeeping, without fp16 on a CPU
    opt = fused_adamw(model) if fused else build_optimizer(model, 1e-2, 0.1)
    stats = _epoch(model, FlakyLoss(bad={0, 1}, grad=True), 2, opt, amp=amp, check_every=5)
    assert stats["overflow_steps"] == 2 and stats["skipped_steps"] == 0  # a finite loss: not a bad step
    assert math.isfinite(stats["loss"])
    assert amp.scaler.get_scale() == 2.0**8  # backed off twice
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["auto", "fp16"])
def test_device_path_step_never_syncs_on_cuda(dtype):
    """The whole step (loss, clipping, skip decision, fused AdamW, scaler, prox, EMA, counts) queues without a
    CPU-GPU sync: torch's sync debug mode turns any sync into an error."""
    from cxr_fast.model.losses import build_loss
    from cxr_fast.train.speed import model_memory_format, use_channels_last
    from cxr_fast.train.step import TrainStep

    dev = torch.device("cuda")
    model = toy_model(blind=()).to(dev)
    use_channels_last(model, dev)
    images, labels = toy_data(n=48)
    images, labels = images.to(dev), labels.to(dev)
    labels[0, 2] = float("nan")
    opt = build_optimizer(model, 1e-3, 1e-4)
    assert opt.defaults["fused"]
    amp = Amp(dev, enabled=True, dtype=dtype)
    step = TrainStep(model, build_loss("asl", labels.cpu().numpy()).to(dev), opt, amp, ema=ModelEma(model),
                     refiner_l1=1e-3, clip_grad=1.0, in_chans=1, memory_format=model_memory_format(model),
                     max_bad_steps=20, device=dev)
    assert step.on_device
    for i in range(2):  # warm-up: lazy optimiser state, cuDNN plans
        step(images[8 * i:8 * i + 8], labels[8 * i:8 * i + 8], i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(2, 6):
            step(images[8 * i:8 * i + 8], labels[8 * i:8 * i + 8], i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    vals = step.tally.read()
    assert vals[step.tally.GOOD] + vals[step.tally.SKIPPED] == 6


def test_prox_threshold_is_preconditioned_like_adam():
    A = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([{"params": [A], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    assert step_mod._prox_threshold(opt, A, 0.5) == pytest.approx(0.05)  # before any step: lr * l1
    A.grad = torch.tensor([[0.0, 2.0], [0.01, 0.0]])
    opt.step()
    t = step_mod._prox_threshold(opt, A, 0.5)
    # after one step v_hat = g^2, so t = lr * l1 / (|g| + eps)
    torch.testing.assert_close(t, torch.tensor([[0.05 / 1e-8, 0.025], [5.0, 0.05 / 1e-8]]), rtol=1e-4, atol=0)
