"""The DALI loader (`--pipeline dali`): the graph of `dali_graph.py` behind the package's loader contract.

A batch leaves as (images uint8 (B, 1, S, S), labels float32 (B, C), index int64 (B,)) on the loader's device.
On CUDA the images never touch the host; labels and index are moved to the GPU inside the pipeline. `decode`
("auto", "crop", "full"; the trainer's `--dali_decode`) picks how training images are decoded (see `dali_graph`).

Epochs, shuffling and sharding (checked against DALI 2.4's iterator code and by tests/pipelines/test_dali.py):
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
import sys
from pathlib import Path

import torch

from cxr_fast import dist
from cxr_fast.data.augment import AugmentSpec
from cxr_fast.data.samples import Batch, Loader, SampleSet
from cxr_fast.errors import UserError, first_line
from cxr_fast.pipelines.dali_errors import loader_error
from cxr_fast.pipelines.dali_graph import (  # noqa: F401  (build_pipeline, require_dali: this module's API too)
    DECODES,
    READER,
    build_pipeline,
    png_warning,
    require_dali,
    resolve_decode,
    shard_sample_counts,
)

OUTPUTS = ("images", "labels", "index")
_warned: set[str] = set()  # start-up warnings already printed by this process (one per shard folder, not per fold)


def warn_once(key: str, message: str | None, rank: int = 0) -> None:
    """Print `warning: message` on stderr once per process and key, from rank 0 only."""
    if message and rank == 0 and key not in _warned:
        _warned.add(key)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class DALILoader(Loader):
    """The loader contract over a DALI pipeline: `len()`, `num_samples`, `set_epoch`, batches on the device."""

    def __init__(self, pipe, *, num_samples: int, num_batches: int, num_labels: int, device: torch.device,
                 root: Path | None = None, decode: str = "crop", rebuild=None):
        self.pipe, self.num_samples, self.device, self.epoch = pipe, num_samples, device, 0
        self._rebuild = rebuild  # checkpoint -> a new pipeline restored from it (training loaders)
        self._done = 0  # batches yielded in the current pass
        self._start = self._skip = 0  # the next pass: batches already done (restored), batches to drop (fallback)
        self.decode = decode  # the resolved decode form ("crop" or "full"), for logs and error advice
        self._root = root  # the shards' folder, named in read errors
        self._num_batches, self._num_labels = num_batches, num_labels
        self._restored = False
        self._start_iterator()

    def _start_iterator(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        try:  # the iterator starts the pipeline (prefetch): unreadable data can fail here already
            self._it = DALIGenericIterator([self.pipe], list(OUTPUTS), reader_name=READER,
                                           last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        except RuntimeError as e:
            self._raise(e)
        self._mid_epoch = False

    def __len__(self) -> int:
        return self._num_batches

    def _read_error(self, e: RuntimeError) -> Exception:
        """DALI's RuntimeError (with its C++ trace) as one line: a UserError naming `cxr-shard verify` when the shards
        are unreadable, a DALIPipelineError otherwise (see `dali_errors`)."""
        return loader_error(e, self._root, self.decode)

    def _raise(self, e: RuntimeError):
        err = self._read_error(e)
        raise err from (None if isinstance(err, UserError) else e)  # the C++ trace only where it may help

    def set_epoch(self, epoch: int) -> None:
        """Recorded only: DALI reshuffles by itself every pass (see the module docstring)."""
        self.epoch = epoch

    def resume_state(self) -> dict | None:
        """Where the current pass stands: DALI's own checkpoint (reader position, shuffle state, operator RNGs, the
        iterator's counters) and the batches yielded so far; None for a pipeline without checkpointing (eval)."""
        if not getattr(self.pipe, "_enable_checkpointing", False):
            return None
        try:
            return {"dali": self._it.checkpoints()[0], "batches": self._done, "epoch": self.epoch}
        except RuntimeError as e:  # an operator without checkpoint support: resume still works, not bit-identical
            warn_once("checkpoint", f"DALI could not checkpoint its pipeline ({first_line(e, 160)}): a resume "
                      "restarts its order and augmentation instead of continuing them", dist.rank())
            return None

    def resume_from(self, state: dict) -> None:
        """Rebuild the pipeline from `resume_state`'s checkpoint: the next pass continues the interrupted one. A
        checkpoint this pipeline refuses (DALI checks that it names this graph's operators; another graph is e.g.
        another `--device`'s) is said once and the loader keeps its fresh pipeline: a mid-epoch resume then drops
        the batches already done (`skip_batches`)."""
        pipe, it = self.pipe, self._it
        try:
            self.pipe = self._rebuild(state["dali"])
            self._start_iterator()
        except RuntimeError as e:  # DALIPipelineError too; unreadable shards (UserError) still stop the run
            self.pipe, self._it, self._mid_epoch = pipe, it, False
            warn_once("restore", f"DALI could not restore its pipeline from last.pth ({first_line(e, 160)}): the "
                      "resumed run's order and augmentation differ from the interrupted one's", dist.rank())
            return
        self._mid_epoch, self._restored = False, True

    def skip_batches(self, n: int) -> None:
        """The next pass starts at batch n: restored from a checkpoint it is there already; otherwise (no
        checkpoint, e.g. another number of processes) n batches are run through DALI and dropped."""
        if self._restored:
            self._start, self._restored = n, False
        else:
            self._skip = n

    def _drain(self) -> None:
        """Run the DALI epoch to its end (its iterator ignores a reset in mid-epoch)."""
        while True:
            try:
                next(self._it)
            except StopIteration:  # auto_reset has reset it for the next pass
                break
        self._mid_epoch = False

    def _unpack(self, out: dict) -> Batch:
        images, labels, index = out["images"], out["labels"], out["index"]
        b, s = images.shape[0], images.shape[1]
        if labels.ndim != 2 or labels.shape[1] != self._num_labels:
            raise UserError(f"shards hold {tuple(labels.shape[1:])} label values per sample, the sample list "
                            f"{self._num_labels}: shards and manifest/samples.csv disagree")
        # (B, S, S, 1) and (B, 1, S, S) share one memory layout when C = 1: a free view.
        return Batch(images.view(b, 1, s, s), labels, index.view(b))

    def __iter__(self):
        if self._mid_epoch:  # the previous pass was abandoned early
            self._drain()
        self._mid_epoch = True
        n, self._start, skip, self._skip = self._start, 0, self._skip, 0
        while True:
            try:
                out = next(self._it)[0]  # auto_reset: StopIteration leaves the iterator ready for the next pass
            except StopIteration:
                break
            except RuntimeError as e:
                self._raise(e)
            if n < self._num_batches and out["images"].shape[0] > 0:
                n += 1
                if n > skip:
                    self._done = n
                    yield self._unpack(out)
        self._mid_epoch = False
        assert n == self._num_batches, f"DALI yielded {n} batches, expected {self._num_batches}"


def start_check(device_type: str, hw_decoder_load: float | None = None, decode: str | None = None) -> None:
    """The registry's start-up check: DALI importable and new enough, and the --dali_decode form runnable on this
    device (crop is refused on CUDA with nvImageCodec 0.9.x), before shards are built or processes start."""
    require_dali(decode, device_type == "cuda")


def build_dali_loader(samples: SampleSet, spec: AugmentSpec, batch_size: int, device: torch.device, *,
                      num_workers: int = 4, seed: int = 0, rank: int = 0, world: int = 1,
                      hw_decoder_load: float = 0.65, prefetch: int = 2, fused_warp: bool | None = None,
                      decode: str = "auto") -> DALILoader:
    """Loader over `samples.shards` with augmentation `spec`; `num_workers` = DALI CPU threads.

    CUDA `device`: GPU ("mixed") decode on that device, batches stay on it. CPU `device`: CPU-only pipeline.
    `len()` = full batches per rank (train) or ceil(this rank's part / batch_size) (eval);
    `num_samples` = samples in the whole set (all ranks), as in the PIL loader.
    `fused_warp` (train): one nearest warp from the crop (default on CPU) or resize + warp (default on GPU).
    `decode` (train; `--dali_decode`): "crop" decodes only the crop window, "full" the whole image then crops,
    "auto" = "full" on CUDA, "crop" on the CPU.
    """
    require_dali()
    device = torch.device(device)
    form = resolve_decode(decode, device.type == "cuda")
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
        warn_once(f"png:{samples.shards[0][0].parent}", png_warning(samples.shards, gpu=True), rank)
    def rebuild(checkpoint: bytes | None):  # the pipeline, fresh or restored from a checkpoint (DALILoader.resume_from)
        return build_pipeline(samples, spec, batch_size, num_threads=max(1, num_workers), device_id=device_id,
                              seed=seed, rank=rank, world=world, hw_decoder_load=hw_decoder_load, prefetch=prefetch,
                              fused_warp=fused_warp, decode=form, checkpoint=checkpoint)

    return DALILoader(rebuild(None), num_samples=n, num_batches=num_batches, num_labels=samples.labels.shape[1],
                      device=device, root=samples.shards[0][0].parent, decode=form, rebuild=rebuild)
