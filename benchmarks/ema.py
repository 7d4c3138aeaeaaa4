"""Host time of one EMA update against its arithmetic floor: a single `_foreach_lerp_` over the same tensors.

    .venv/bin/python -m benchmarks.ema                      # resnet50 on the CPU -> benchmarks/results/ema.json
    .venv/bin/python -m benchmarks.ema --device cuda --out benchmarks/results/ema-cuda.json

Rows, each timed over `--calls` back-to-back calls per repeat, median (min, max) of `--repeats` repeats after
`--warmup` untimed calls, rows interleaved within each repeat so that drift hits them alike:
- `lerp`: `torch._foreach_lerp_(ema_floats, model_floats, w)` alone, the floor (no integer buffers, no bookkeeping);
- `update`: `ModelEma.update(model, step)` (cached tensor pairs: one lerp plus one `_foreach_copy_` of the
  integer buffers);
- `update_state_dict`: the previous implementation, which rebuilt both state dicts on every update (reference).

Host time is the time the calls take to return (on CUDA: to enqueue, after a synchronize before the clock starts);
`wall_ms` adds a synchronize at the end. On the CPU both are the same. The target (issue 16): update <= 1.15x lerp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from cxr_fast.atomic import write_json_atomic
from cxr_fast.model import CXRClassifier, LabelGraphRefiner, unwrap
from cxr_fast.model.backbone import create_backbone
from cxr_fast.model.ema import ModelEma

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="timm backbone (pretrained=False)")
    p.add_argument("--labels", type=int, default=14)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--calls", type=int, default=5, help="calls per timed repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "ema.json"))
    return p.parse_args(argv)


def _state_dict_update(ema: ModelEma, model: torch.nn.Module, step: int) -> None:
    """The update as it was before the cache: two state dicts rebuilt per call (kept here as the reference row)."""
    decay = ema.get_decay(step)
    ema_f, model_f = [], []
    for ema_v, model_v in zip(ema.module.state_dict().values(), unwrap(model).state_dict().values(), strict=True):
        if ema_v.is_floating_point():
            ema_f.append(ema_v)
            model_f.append(model_v.to(dtype=ema_v.dtype))
        else:
            ema_v.copy_(model_v)
    torch._foreach_lerp_(ema_f, model_f, 1.0 - decay)


def _timed(fn, calls: int, device: torch.device) -> tuple[float, float]:
    """(host ms, wall ms) per call over `calls` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return 1e3 * (t1 - t0) / calls, 1e3 * (t2 - t0) / calls


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CXRClassifier(create_backbone(args.model, args.labels, in_chans=1, pretrained=False),
                          LabelGraphRefiner(args.labels)).to(device)
    ema = ModelEma(model, decay=0.999)
    ema.update(model, 10**6)  # collects the cached pairs
    pairs = ema._pairs
    rows = {
        "lerp": lambda: torch._foreach_lerp_(pairs.ema_f, pairs.model_f, 0.001),
        "update": lambda: ema.update(model, 10**6),
        "update_state_dict": lambda: _state_dict_update(ema, model, 10**6),
    }
    with torch.no_grad():
        for fn in rows.values():
            for _ in range(args.warmup):
                fn()
        host: dict[str, list[float]] = {k: [] for k in rows}
        wall: dict[str, list[float]] = {k: [] for k in rows}
        for r in range(args.repeats):
            names = list(rows) if r % 2 == 0 else list(reversed(rows))
            for name in names:
                h, w = _timed(rows[name], args.calls, device)
                host[name].append(h)
                wall[name].append(w)
    res = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "python": sys.version.split()[0],
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "config": {"model": args.model, "labels": args.labels, "device": args.device, "repeats": args.repeats,
                   "calls": args.calls, "warmup": args.warmup, "threads": torch.get_num_threads()},
        "tensors": {"float": len(pairs.ema_f), "integer": len(pairs.ema_i),
                    "float_elements": sum(t.numel() for t in pairs.ema_f)},
        "rows": {k: {"host_ms": _summary(host[k]), "wall_ms": _summary(wall[k])} for k in rows},
    }
    floor = res["rows"]["lerp"]["host_ms"]["median"]
    res["ratio_to_lerp"] = {k: res["rows"][k]["host_ms"]["median"] / floor for k in rows if k != "lerp"}
    res["overhead_ms"] = {k: res["rows"][k]["host_ms"]["median"] - floor for k in rows if k != "lerp"}
    res["target"] = {"update_over_lerp_max": 1.15, "met": res["ratio_to_lerp"]["update"] <= 1.15}
    return res


def _summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    write_json_atomic(args.out, res)
    for name, row in res["rows"].items():
        ratio = res["ratio_to_lerp"].get(name)
        print(f"{name:18s} host {row['host_ms']['median']:9.3f} ms  wall {row['wall_ms']['median']:9.3f} ms"
              + (f"  {ratio:.3f}x lerp" if ratio is not None else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
