"""Child process of `cxr-doctor`'s decode checks (run as `python -m cxr_fast.doctor.probe KIND ...`): one JSON line
on stdout. Run in a subprocess because a broken decoder may kill its process (SIGSEGV, nvImageCodec#55).

    decode --device cpu|gpu --decode crop|full   DALI decodes a small grey baseline JPEG in that form (the training
                                                 graph's `decode_crop`): whole window vs PIL, random window's area
    hw                                           nvImageCodec's hardware-only JPEG backend decodes the same JPEG
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np

H, W = 448, 512


def test_jpeg() -> tuple[bytes, np.ndarray]:
    """A smooth grey test image (gradient + discs) as baseline 1-channel JPEG, and PIL's decode of it."""
    from PIL import Image

    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = 40 + 150 * x / W + 30 * np.sin(y / 23.0)
    for cx, cy, r in ((150, 120, 60), (360, 300, 90)):
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += 40
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def decode(device: str, form: str) -> dict:
    from nvidia import dali
    from nvidia.dali import fn, types

    from cxr_fast.data.augment import AugmentSpec
    from cxr_fast.pipelines.dali_graph import decode_crop, require_dali

    require_dali()
    data, ref = test_jpeg()
    gpu = device == "gpu"
    batch = [np.frombuffer(data, np.uint8)] * 4
    pipe = dali.Pipeline(batch_size=4, num_threads=2, device_id=0 if gpu else None, seed=1)
    kw = {"device": "mixed" if gpu else "cpu", "output_type": types.GRAY}
    whole_spec = AugmentSpec(img_size=64, scale=(1.0, 1.0), ratio=(W / H, W / H))
    with pipe:
        enc = fn.external_source(source=lambda: batch, batch=True)
        pipe.set_outputs(decode_crop(enc, whole_spec, kw, form, 7),
                         decode_crop(enc, AugmentSpec.for_training(64), kw, form, 8))
    pipe.build()
    for _ in range(3):
        whole, rand = pipe.run()
    if gpu:
        whole, rand = whole.as_cpu(), rand.as_cpu()
    mads, areas = [], []
    for k in range(4):
        a = np.asarray(whole[k])[..., 0].astype(np.float32)
        h, w = min(a.shape[0], H), min(a.shape[1], W)
        mads.append(float(np.abs(a[:h, :w] - ref[:h, :w]).mean()))
        r = np.asarray(rand[k])
        areas.append(r.shape[0] * r.shape[1] / (H * W))
    return {"device": device, "decode": form, "mad_vs_pil": max(mads), "area_min": min(areas),
            "area_max": max(areas), "ok": max(mads) < 3.0 and 0.8 <= min(areas) and max(areas) <= 1.0 + 1e-6}


def hw() -> dict:
    from nvidia import nvimgcodec

    data, ref = test_jpeg()
    dec = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
    # grey out, as DALI asks for (output_type=GRAY): the default sRGB request may be declined by the hardware backend
    # for a 1-channel JPEG, which would report the decoder absent where it is present
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.GRAY)
    img = dec.decode(nvimgcodec.CodeStream(data), params=params)
    if img is None:
        return {"present": False, "detail": "the hardware-only backend declined a baseline grey JPEG (grey output)"}
    out = np.asarray(img.cpu())
    mad = float(np.abs(out.reshape(ref.shape).astype(np.float32) - ref).mean()) if out.size == ref.size else None
    return {"present": True, "mad_vs_pil": mad,
            "detail": f"decoded {out.shape} grey with the hardware-only backend"
                      + (f", mean |HW - PIL| {mad:.2f}" if mad is not None else "")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_fast.doctor.probe")
    p.add_argument("kind", choices=("decode", "hw"))
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--decode", choices=("crop", "full"), default="full")
    a = p.parse_args(argv)
    res = decode(a.device, a.decode) if a.kind == "decode" else hw()
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
