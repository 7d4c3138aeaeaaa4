"""Results: the machine block, the targets, and the JSON / markdown / bar-chart outputs."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from pathlib import Path

import torch

from cxr_fast.atomic import atomic_path, write_text_atomic

SCHEMA_VERSION = 1

# (id, numerator row, denominator row or "bound", ratio, machine class it is meant for, where the rows live)
TARGETS = [
    ("dali-cpu >= 3x pil-files", "dali-cpu", "pil-files", 3.0, "cpu", "loader"),
    ("dali-cpu >= 1.0x pil-shards", "dali-cpu", "pil-shards", 1.0, "cpu", "loader"),
    ("dali-cpu >= 60% of decode-ceiling", "dali-cpu", "decode-ceiling", 0.6, "cpu", "loader"),
    # not one of issue 6's targets: the like-for-like version of the second one (pil-shards' interpolation)
    ("dali-cpu-exact >= 1.0x pil-shards (same interpolation)", "dali-cpu-exact", "pil-shards", 1.0, "cpu", "loader"),
    ("dali-gpu >= 10x pil-files", "dali-gpu", "pil-files", 10.0, "gpu", "loader"),
    ("DALI training >= 95% of fixed-tensor bound", "dali-gpu", "bound", 0.95, "gpu", "end_to_end"),
    # issue 16: on the CPU too, the DALI-fed training step should reach the fixed-tensor bound
    ("dali-cpu training >= 95% of fixed-tensor bound", "dali-cpu", "bound", 0.95, "cpu", "end_to_end"),
]


def cpu_model() -> str:
    """The CPU model /proc/cpuinfo names (platform.processor() where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    import numpy
    import PIL
    from PIL import features

    cuda = torch.cuda.is_available()
    pillow = PIL.__version__
    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "load_avg_start": list(os.getloadavg()), "load_avg_end": None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "torchvision": _version("torchvision"),
                     "dali": _version("nvidia-dali-cuda130") or _version("nvidia-dali-cuda120"),
                     "pillow": pillow, "pillow_simd": _version("pillow-simd") is not None or ".post" in pillow,
                     "libjpeg_turbo": features.version("libjpeg_turbo") if features.check("libjpeg_turbo") else None,
                     "zlib": features.version("zlib"), "timm": _version("timm"), "numpy": numpy.__version__},
    }


def machine_name(m: dict) -> str:
    def slug(s):
        return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")

    gpu = slug(m["gpu"].replace("NVIDIA", "")) if m["gpu"] else "nogpu"
    return f"{slug(m['cpu_model'])}-{m['cores_usable']}c-{gpu}"


def evaluate_targets(res: dict) -> list[dict]:
    """Every target with its measured ratio and pass/fail; "not measured here" for a target meant for another machine
    class (the GPU targets on a CPU run), "n/a" where a row was not run."""
    out = []
    on_gpu = res["machine"]["gpu"] is not None
    for tid, num, den, ratio, meant_for, section in TARGETS:
        rows = res.get(section) or {}
        rows = rows.get("rows", rows)
        have = num in rows and den in rows
        value = rows[num]["img_per_s"]["median"] / rows[den]["img_per_s"]["median"] if have else None
        applies = (meant_for == "gpu") == on_gpu
        # a target for another machine class is not judged by this machine's rows (a GPU target on a CPU run)
        status = ("not measured here" if not applies else "n/a" if value is None
                  else "pass" if value >= ratio else "FAIL")
        out.append({"target": tid, "rows": [num, den], "ratio_needed": ratio, "ratio": value,
                    "meant_for": meant_for, "applies_here": applies, "status": status,
                    "diagnosis": _diagnose(res, num, den) if status == "FAIL" else None})
    return out


def _diagnose(res: dict, num: str, den: str) -> str | None:
    """For a missed target: the two rows' one-thread per-image costs by category, from the breakdown."""
    per = (res.get("breakdown") or {}).get("per_pipeline", {})
    if num not in per or den not in per:
        return None

    def parts(p):
        return ", ".join(f"{k} {v:.2f}" for k, v in per[p].items() if k != "total" and v > 0)

    return (f"one thread, ms/img: {num} {per[num]['total']:.2f} ({parts(num)}); {den} {per[den]['total']:.2f} "
            f"({parts(den)}): the per-image work alone allows a ratio of {per[den]['total'] / per[num]['total']:.2f}")


def write(res: dict, out_dir: Path, stem: str | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{machine_name(res['machine'])}-{dt.date.today().isoformat()}"
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    write_text_atomic(paths["json"], json.dumps(res, indent=1) + "\n")
    write_text_atomic(paths["md"], markdown(res) + "\n")
    chart(res, paths["png"])
    return paths


def _f(x, nd=0) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(res: dict) -> str:
    m, c = res["machine"], res["config"]
    la = ", ".join(f"{v:.2f}" for v in m["load_avg_start"])
    lae = ", ".join(f"{v:.2f}" for v in m["load_avg_end"]) if m["load_avg_end"] else "-"
    lines = [f"### Throughput on {m['cpu_model']} ({m['cores_usable']} cores), GPU: {m['gpu'] or 'none'}", "",
             (f"{res['data']['images']} {res['data']['kind']} images ({res['data']['source_format']}"
             f"{', ' + str(res['data']['source_size']) + ' px' if res['data']['source_size'] else ''}) sharded to "
             f"{c['shard_size']} px JPEG; output {c['img_size']} px, batch {c['batch_size']}, {c['workers']} "
             f"workers/threads, median of {c['repeats']} interleaved repeats (min-max); load average "
             f"{la} at start, {lae} at end. torch {m['versions']['torch']}, DALI {m['versions']['dali']}, "
             f"Pillow {m['versions']['pillow']}, {res['date']}."), "",
             "| loader (train augmentation) | img/s | min-max | vs pil-files | images/epoch |",
             "|---|---:|---:|---:|---:|"]
    rows = res["loader"]
    base = rows.get("pil-files", {}).get("img_per_s", {}).get("median")
    for name, r in rows.items():
        s = r["img_per_s"]
        lines.append(f"| {name} | {s['median']:.0f} | {s['min']:.0f}-{s['max']:.0f} | "
                     f"{_f(s['median'] / base if base else None, 2)}x | {r['delivered_per_epoch'][0]} |")
    e2e = res.get("end_to_end")
    if e2e:
        lines += ["", (f"End to end: `train_one_epoch` with {e2e['model']} ({e2e['params'] / 1e6:.1f} M params, "
                  f"pretrained=False, {e2e['amp']}) at {e2e['img_size']} px on {e2e['device']}, one epoch of "
                  f"{e2e['images_per_epoch']} images per repeat; steady state (first {c['skip_batches']} batches "
                  "left out) and whole epoch (with the pipeline's start-up):"), "",
                  "| training fed by | img/s | min-max | % of bound | data wait | whole epoch img/s | data wait |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        bound = e2e["rows"]["bound"]["img_per_s"]["median"]
        for name, r in e2e["rows"].items():
            s = r["img_per_s"]
            lines.append(f"| {name if name != 'bound' else 'fixed tensors (bound)'} | {s['median']:.1f} | "
                         f"{s['min']:.1f}-{s['max']:.1f} | {100 * s['median'] / bound:.0f}% | "
                         f"{100 * r['data_wait_frac']['median']:.0f}% | {r['epoch_img_per_s']['median']:.1f} | "
                         f"{100 * r['epoch_data_wait_frac']['median']:.0f}% |")
    p = res.get("packing")
    if p:
        lines += ["", (f"Shard packing (`write_shards`, {p['workers']} workers, {res['data']['source_format']} -> "
                  f"{c['shard_size']} px JPEG): {p['img_per_s']:.0f} img/s ({p['images']} images in "
                  f"{p['seconds']:.1f} s).")]
    lines += ["", "| target | meant for | ratio | needed | result |", "|---|---|---:|---:|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['meant_for']}{'' if t['applies_here'] else ' (not this machine)'} | "
                     f"{_f(t['ratio'], 2)} | {t['ratio_needed']} | {t['status']} |")
    b = res.get("breakdown")
    if b:
        lines += ["", (f"Where the time goes: ms per image on ONE thread (PIL: median over {b['images']} images; DALI: "
                  "one epoch), against the measured loader rate:"), "",
                  ("| pipeline | decode | augment | to tensor | collate | total | 1-thread img/s | measured img/s "
                  f"| measured / ({c['workers']} x 1-thread) |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, p in b["per_pipeline"].items():
            one = 1000 / p["total"]
            meas = rows.get(name, {}).get("img_per_s", {}).get("median")
            eff = _f(meas / (c["workers"] * one) if meas else None, 2)
            lines.append(f"| {name} | {p['decode']:.2f} | {p['augment']:.2f} | {p['to tensor']:.2f} | "
                         f"{p['collate']:.2f} | {p['total']:.2f} | {one:.0f} | {_f(meas)} | {eff} |")
        lines += ["", "Stages: " + "; ".join(f"{s['pipeline']} {s['stage']} {s['ms']:.2f}" for s in b["stages"]) + "."]
    diag = [t for t in res["targets"] if t.get("diagnosis")]
    if diag:
        lines += ["", "Missed targets:"] + [f"- {t['target']}: {t['diagnosis']}" for t in diag]
    if res.get("notes"):
        lines += ["", res["notes"].strip()]
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loader only (img/s)", res["loader"])]
    if res.get("end_to_end"):
        panels.append((f"training, {res['end_to_end']['model']} (img/s)", res["end_to_end"]["rows"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.2), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        names = list(rows)
        med = [rows[n]["img_per_s"]["median"] for n in names]
        lo = [m - rows[n]["img_per_s"]["min"] for m, n in zip(med, names)]
        hi = [rows[n]["img_per_s"]["max"] - m for m, n in zip(med, names)]
        colors = ["#888888" if n in ("decode-ceiling", "bound") else "#76b900" if n.startswith("dali") else "#3b75af"
                  for n in names]
        ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
        top = max(m + h for m, h in zip(med, hi))
        for y, (v, h) in enumerate(zip(med, hi)):  # the value right of its error bar
            ax.text(v + h + 0.01 * top, y, f"{v:.0f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, top * 1.2)
    m = res["machine"]
    fig.suptitle(f"{m['cpu_model']} x{m['cores_usable']}, GPU {m['gpu'] or 'none'}, {res['date']}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
