"""Drawing one synthetic chest radiograph: a posed body frame, normal anatomy, then each labelled finding.

`render` paints one image for a 14-label row. `_frame` and `_anatomy` draw the patient (heart and mediastinum size
carry Cardiomegaly / Enlarged Cardiomediastinum); one painter per other finding (`_FINDINGS`) adds its pattern.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxr_fast.data.table import CHEXPERT_LABELS
from cxr_fast.synth.labels import FAINT, LABEL_INDEX

RENDER_SIZE = 256  # larger outputs are painted at this size and upsampled (4x faster at 512 px)


def _soft(z: np.ndarray, w: float) -> np.ndarray:
    """Smoothstep from 0 (z <= -w/2) to 1 (z >= w/2): a cheap soft edge."""
    t = z * (1.0 / w)
    t += 0.5
    np.clip(t, 0.0, 1.0, out=t)
    r = t * t
    t *= -2.0
    t += 3.0
    r *= t
    return r


def _r2(x, y, cx, cy, rx, ry):
    return ((x - cx) * (1.0 / rx)) ** 2 + ((y - cy) * (1.0 / ry)) ** 2


def _smooth_noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Band-limited noise (std ~1): a small random grid upsampled bicubically to (size, size)."""
    g = Image.fromarray(rng.standard_normal((grid, grid), dtype=np.float32), mode="F")
    return np.asarray(g.resize((size, size), Image.BICUBIC))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _frame(rng: np.random.Generator, size: int) -> SimpleNamespace:
    """Body coordinates (x right, y down; lungs within ~[-0.75, 0.75]) of every pixel, under a random pose."""
    sx, sy = _u(rng, 0.88, 1.02), _u(rng, 0.88, 1.02)
    dx, dy, th = _u(rng, -0.05, 0.05), _u(rng, -0.03, 0.07), _u(rng, -0.05, 0.05)
    c, s = np.cos(th), np.sin(th)
    u = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0)
    ux, vy = u[None, :] - dx, u[:, None] - dy
    x = ((c * ux + s * vy) * (1.0 / sx)).astype(np.float32)
    y = ((-s * ux + c * vy) * (1.0 / sy)).astype(np.float32)

    def to_px(bx: float, by: float) -> tuple[float, float]:
        px, py = c * bx * sx - s * by * sy + dx, s * bx * sx + c * by * sy + dy
        return (px + 1.0) * size / 2 - 0.5, (py + 1.0) * size / 2 - 0.5

    return SimpleNamespace(x=x, y=y, ax=np.abs(x), size=size, to_px=to_px, scale=(sx + sy) / 2)


def _vessels(rng: np.random.Generator, f: SimpleNamespace) -> np.ndarray:
    """Branching vessel trees from each hilum (drawn with PIL, then blurred), in [0, 1]."""
    n, im = f.size, Image.new("L", (f.size, f.size))
    d = ImageDraw.Draw(im)
    for s in (-1.0, 1.0):
        for _ in range(9):
            x0, y0 = s * _u(rng, 0.14, 0.2), _u(rng, -0.15, 0.08)
            ang = float(np.pi / 2 - s * (np.pi / 2) + s * rng.uniform(-1.1, 1.1))  # fan out laterally
            stack = [(x0, y0, ang, 0.1, 1.0)]
            while stack:
                x0, y0, ang, seg, w = stack.pop()
                ang += float(rng.normal(0, 0.25))
                x1, y1 = x0 + seg * np.cos(ang), y0 + seg * np.sin(ang)
                wpx = w * n / 130  # sub-pixel vessels at small sizes are drawn 1 px wide and fainter
                d.line([f.to_px(x0, y0), f.to_px(x1, y1)], fill=int((120 + 130 * w) * min(1.0, wpx)),
                       width=max(1, round(wpx)))
                if w > 0.3:
                    stack.append((x1, y1, ang, seg * 0.9, w * 0.75))
                    if rng.random() < 0.5:
                        stack.append((x1, y1, ang + float(rng.choice([-0.6, 0.6])), seg * 0.8, w * 0.6))
    im = im.filter(ImageFilter.GaussianBlur(max(0.7, 1.6 * n / 512)))
    return np.asarray(im, dtype=np.float32) * (1.0 / 255.0)


def _anatomy(rng: np.random.Generator, f: SimpleNamespace, labels: np.ndarray) -> SimpleNamespace:
    """Paint the normal chest (plus the findings that change anatomy: heart and mediastinum size) into f.A."""
    x, y, ax, n = f.x, f.y, f.ax, f.size
    # body: air above the sloping shoulders, thicker (brighter) centrally and below the diaphragm
    top = -0.93 + 0.3 * np.maximum(ax - 0.2, 0.0) ** 1.3
    body = np.maximum(_soft(y - top, 0.1), _soft(0.17 - ax, 0.12) * (0.8 + 0.2 * _soft(y + 0.8, 0.3)))
    A = body * (0.4 + 0.24 * (1.0 - x * x) + 0.08 * _soft(y - 0.35, 0.5))
    f.sides = []
    lungs = np.zeros_like(x)
    for s in (-1.0, 1.0):
        cx, rx, cy = s * _u(rng, 0.41, 0.44), _u(rng, 0.31, 0.35), _u(rng, 0.12, 0.18)
        ry = np.where(y < cy, np.float32(_u(rng, 0.84, 0.9)), np.float32(0.95))
        dome_top = _u(rng, 0.24, 0.3) + (0.06 if s > 0 else 0.0)  # patient's right (image left) sits higher
        dome = dome_top + 0.22 * ((x - (cx - s * 0.06)) * (1.0 / rx)) ** 2
        r2 = _r2(x, y, cx, cy, rx, ry)
        shape = _soft(1.0 - r2, 0.1)
        lung = shape * _soft(dome - y, 0.025)
        f.sides.append(SimpleNamespace(s=s, cx=cx, cy=cy, rx=rx, r2=r2, shape=shape, lung=lung, dome=dome,
                                       dome_top=dome_top))
        lungs += lung
    f.lungs = lungs
    A *= 1.0 - lungs * (0.5 + 0.08 * _soft(0.1 - y, 0.8))  # air: upper zones darkest
    # rib cage: posterior ribs arch out from the spine and fall laterally; t = rib phase (integer part = rib)
    cage = _soft(0.86 - ax, 0.08) * _soft(ax - 0.06, 0.04) * _soft(0.62 - y, 0.15)
    f.rib_sp, f.rib_y0 = _u(rng, 0.1, 0.115), _u(rng, -0.88, -0.82)
    f.rib_t = (y - _rib_arc(ax) - f.rib_y0) * (1.0 / f.rib_sp)
    f.rib_t = f.rib_t - 0.012 * f.rib_t * f.rib_t  # lower ribs spaced wider
    f.rib_in = cage * _soft(f.rib_t, 0.3) * _soft(10.0 - f.rib_t, 0.6)
    f.rib_w = 0.025 + 0.05 * lungs
    A += f.rib_w * f.rib_in * _rib_band(f.rib_t)
    ta = (y - 0.55 * ax + _u(rng, 0.2, 0.3)) * (1.0 / 0.16)  # faint anterior ribs, falling medially
    A += 0.025 * lungs * _soft(ta - np.floor(ta) - 0.2, 0.2) * _soft(0.55 - (ta - np.floor(ta)), 0.2)
    # vessels and hila
    f.markings = _vessels(rng, f) * lungs
    hil = 1.0 / (1.0 + ((ax - 0.2) ** 2 + (y + 0.03) ** 2) * 30.0)
    A += 0.1 * f.markings + 0.14 * hil * lungs + 0.02 * _smooth_noise(rng, 40, n) * lungs
    # mediastinum (widened by Enlarged Cardiomediastinum), aortic knob, heart (widened by Cardiomegaly)
    m_w, m_big = _u(rng, 0.1, 0.13), _u(rng, 1.9, 2.2)
    if labels[LABEL_INDEX["Enlarged Cardiomediastinum"]]:  # widest in the upper mediastinum
        m_w = m_w * (1.0 + (m_big - 1.0) / (1.0 + ((y + 0.22) * (1.0 / 0.28)) ** 4))
    med = _soft(m_w * (1.0 + 0.3 * _soft(y + 0.1, 0.6)) - np.abs(x - 0.01), 0.06) * _soft(0.3 - y, 0.2)
    med = np.maximum(med, _soft(1.0 - _r2(x, y, 0.1, -0.3, 0.08, 0.07), 0.8))
    hrx, hry = _u(rng, 0.28, 0.32), _u(rng, 0.22, 0.26)
    hcx, hcy, h_big = _u(rng, 0.08, 0.12), _u(rng, 0.2, 0.25), _u(rng, 1.5, 1.7)
    if labels[LABEL_INDEX["Cardiomegaly"]]:
        hrx, hry, hcx = hrx * h_big, hry * 1.1, hcx + 0.05
    dome_line = np.maximum(f.sides[0].dome, f.sides[1].dome)
    heart = _soft(1.0 - _r2(x, y - 0.35 * (x - hcx), hcx, hcy, hrx, hry), 0.3) * _soft(dome_line + 0.04 - y, 0.08)
    f.heart = SimpleNamespace(cx=hcx, cy=hcy, rx=hrx, ry=hry)
    shadow = np.maximum(med, heart)
    A += shadow * np.maximum(0.68 + 0.04 * heart - A, 0.0)
    # spine (faint through the mediastinum), trachea, clavicles, gastric bubble
    A += _soft(0.07 - ax, 0.04) * body * (0.03 + 0.008 * np.cos(y * (2 * np.pi / 0.085))) * (1.0 - 0.6 * shadow)
    A -= 0.1 * _soft(0.03 - np.abs(x + 0.01), 0.015) * _soft(-0.3 - y, 0.1) * body
    yc = -0.6 - 0.32 * ax + 0.2 * ax * ax - 0.05 * np.cos(ax * 7.0)
    A += 0.12 * _soft(0.045 - np.abs(y - yc), 0.03) * _soft(ax - 0.08, 0.05) * _soft(0.9 - ax, 0.1)
    A -= 0.14 * _soft(1.0 - _r2(x, y, 0.36, f.sides[1].dome_top + 0.14, 0.09, 0.05), 0.4) * body
    f.A = A
    return f


def _rib_arc(ax):
    return 0.9 * (ax - 0.3) ** 2 - 0.08


def _rib_band(t: np.ndarray, shift: float = 0.0) -> np.ndarray:
    fr = t + shift - np.floor(t + shift)
    return _soft(fr - 0.02, 0.1) * _soft(0.42 - fr, 0.1) * (0.75 + 0.6 * np.abs(fr - 0.2))


def _opacify(f: SimpleNamespace, mask: np.ndarray, strength: float, level: float = 0.68) -> None:
    """Blend toward soft-tissue density (dense opacities never get brighter than tissue)."""
    f.A += strength * mask * np.maximum(level - f.A, 0.0)


def _side(f: SimpleNamespace, rng: np.random.Generator) -> SimpleNamespace:
    return f.sides[int(rng.integers(2))]


def _blob_in_lung(rng, side, zone=(-0.45, 0.3)) -> tuple[float, float]:
    return side.cx + side.s * _u(rng, -0.12, 0.12), _u(rng, *zone)


def _patchy(f, rng, cx, cy, r, lump=0.6) -> np.ndarray:
    """Fluffy, ill-defined opacity around (cx, cy): a lumpy disc with noisy density, inside the lungs."""
    d = 1.0 - _r2(f.x, f.y, cx, cy, r, r * _u(rng, 0.8, 1.3))
    noise = _smooth_noise(rng, 12, f.size)
    return _soft(d + lump * noise, 0.8) * (0.85 + 0.15 * np.clip(noise, -1.0, 1.0)) * f.lungs


def _effusion(f, rng):
    for side in f.sides if rng.random() < 0.5 else [_side(f, rng)]:
        level = side.dome_top + 0.2 - _u(rng, 0.12, 0.28)
        lat = np.clip((side.s * (f.x - side.cx) * (1.0 / side.rx) + 1.0) * 0.5, 0.0, 1.0)
        yb = level - 0.2 * lat * lat  # meniscus, rising laterally; blunts the costophrenic angle
        mask = side.shape * _soft(f.y - yb, 0.05) * _soft(side.dome + 0.03 - f.y, 0.05)
        _opacify(f, mask * (0.75 + 0.25 * _soft(f.y - yb - 0.12, 0.2)), 1.0, 0.72)


def _edema(f, rng):
    haze = 1.0 / (1.0 + ((f.ax - 0.24) ** 2 * 9.0 + (f.y - 0.02) ** 2 * 5.0))
    _opacify(f, haze * f.lungs * (0.8 + 0.25 * _smooth_noise(rng, 8, f.size)), 0.55)
    f.A += 0.05 * f.markings


def _consolidation(f, rng):
    side = _side(f, rng)
    _opacify(f, _patchy(f, rng, *_blob_in_lung(rng, side, (-0.1, 0.3)), _u(rng, 0.13, 0.2)), 0.9)


def _pneumonia(f, rng):  # deliberately faint (FAINT)
    side = _side(f, rng)
    _opacify(f, _patchy(f, rng, *_blob_in_lung(rng, side), _u(rng, 0.15, 0.22)), 0.9 * FAINT["signal_scale"])


def _opacity(f, rng):
    for _ in range(int(rng.integers(1, 3))):
        side = _side(f, rng)
        _opacify(f, _patchy(f, rng, *_blob_in_lung(rng, side), _u(rng, 0.09, 0.14), 0.8), 0.6)


def _atelectasis(f, rng):
    side = _side(f, rng)
    cx, cy = side.cx + side.s * _u(rng, -0.05, 0.05), side.dome_top - _u(rng, 0.05, 0.2)
    a, half, w = _u(rng, -0.35, 0.35), _u(rng, 0.14, 0.2), _u(rng, 0.025, 0.04)
    dx, dy = f.x - cx, f.y - cy
    along, across = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    _opacify(f, _soft(w - np.abs(across), 0.03) * _soft(half - np.abs(along), 0.06) * f.lungs, 0.85)


def _lesion(f, rng):
    for _ in range(int(rng.integers(1, 3))):
        side = _side(f, rng)
        (cx, cy), r = _blob_in_lung(rng, side, (-0.5, 0.15)), _u(rng, 0.045, 0.075)
        _opacify(f, _soft(1.0 - _r2(f.x, f.y, cx, cy, r, r), 0.5) * f.lungs, 0.9)


def _pneumothorax(f, rng):
    side, k = _side(f, rng), _u(rng, 0.6, 0.72)  # lung collapsed toward the hilum by factor k
    hx, hy = side.s * 0.2, -0.05
    inner = _r2((f.x - hx) / k + hx, (f.y - hy) / k + hy, side.cx, side.cy, side.rx, 0.87)
    rim = side.lung * _soft(inner - 1.0, 0.1)
    f.A -= rim * (0.09 * f.markings + 0.08)  # no lung markings, darker
    f.A += 0.10 * _soft(0.06 - np.abs(inner - 1.0), 0.04) * side.lung  # visceral pleural line


def _fracture(f, rng):
    side, k, axf = _side(f, rng), int(rng.integers(3, 8)), _u(rng, 0.45, 0.65)
    on = (np.floor(f.rib_t) == k) & (f.x * side.s > 0)
    frag = on & (f.ax > axf) & (f.ax < axf + _u(rng, 0.12, 0.2))
    gap = on & (np.abs(f.ax - axf) < 0.02)
    w = f.rib_w * f.rib_in
    f.A += np.where(frag, w * (_rib_band(f.rib_t, _u(rng, 0.22, 0.32)) - _rib_band(f.rib_t)), 0.0)
    f.A -= np.where(gap, w * _rib_band(f.rib_t), 0.0)
    yk = f.rib_y0 + (k + 0.2) * f.rib_sp + _rib_arc(axf)
    f.A += 0.2 * _soft(1.0 - _r2(f.x, f.y, side.s * axf, yk, 0.06, 0.045), 0.6)  # healing callus


def _pleural_other(f, rng):
    side = _side(f, rng)
    lateral = _soft(side.s * (f.x - side.cx), 0.1) * _soft(side.dome_top - 0.05 - f.y, 0.1)
    _opacify(f, _soft(side.r2 - 0.66, 0.1) * side.lung * lateral, 0.8)


def _devices(f, rng):
    n, im = f.size, Image.new("L", (f.size, f.size))
    d = ImageDraw.Draw(im)

    def px(pts):
        return [f.to_px(*p) for p in pts]

    def w(t: float) -> int:  # width in body units -> pixels
        return max(1, round(t * n * f.scale / 2))

    kinds = rng.permutation(5)[: int(rng.integers(1, 4))]
    for kind in kinds:
        if kind == 0:  # endotracheal tube
            d.line(px([(-0.01, -1.1), (0.0, _u(rng, -0.45, -0.35))]), fill=255, width=w(0.028))
        elif kind == 1:  # central venous catheter
            pts = [(-0.3, -1.0), (-0.2, -0.75), (-0.07, -0.45), (-0.04, _u(rng, -0.22, -0.08))]
            d.line(px(pts), fill=255, width=w(0.014))
        elif kind == 2:  # nasogastric tube into the stomach
            dt = f.sides[1].dome_top
            d.line(px([(0.01, -1.1), (0.0, -0.3), (0.04, dt), (0.2, dt + 0.15), (0.33, dt + 0.2)]), fill=255,
                   width=w(0.016))
        elif kind == 3:  # ECG electrodes and leads
            for _ in range(int(rng.integers(2, 5))):
                cx, cy, r = _u(rng, -0.7, 0.7), _u(rng, -0.7, 0.45), 0.035
                (x0, y0), (x1, y1) = f.to_px(cx - r, cy - r), f.to_px(cx + r, cy + r)
                d.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
                d.line(px([(cx, cy), (cx + _u(rng, -0.3, 0.3), 1.1)]), fill=200, width=w(0.008))
        else:  # pacemaker generator with a lead into the heart
            gx, gy = _u(rng, 0.4, 0.6), _u(rng, -0.78, -0.65)
            (x0, y0), (x1, y1) = f.to_px(gx - 0.07, gy - 0.05), f.to_px(gx + 0.07, gy + 0.05)
            d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
            d.line(px([(gx, gy), (0.1, -0.5), (-0.02, f.heart.cy), (0.12, f.heart.cy + 0.1)]), fill=255,
                   width=w(0.012))
    im = im.filter(ImageFilter.GaussianBlur(0.4 * n / 256))
    f.A += 0.55 * np.asarray(im, dtype=np.float32) * (1.0 / 255.0)


# Painters in CHEXPERT_LABELS order (Cardiomegaly / Enlarged Cardiomediastinum are drawn by _anatomy).
_FINDINGS = {
    "Atelectasis": _atelectasis, "Consolidation": _consolidation, "Edema": _edema, "Fracture": _fracture,
    "Lung Lesion": _lesion, "Lung Opacity": _opacity, "Pleural Effusion": _effusion, "Pleural Other": _pleural_other,
    "Pneumonia": _pneumonia, "Pneumothorax": _pneumothorax, "Support Devices": _devices,
}


def render(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size) float32 radiograph in [0, 1] (bright = dense) showing the findings in `labels` (14 ints).

    Each finding draws from its own child RNG, so the same `rng` state with different labels gives the same
    patient and pose: only the findings change (useful for counterfactual tests).
    """
    kids = rng.spawn(len(CHEXPERT_LABELS))
    m = min(size, RENDER_SIZE)
    f = _anatomy(rng, _frame(rng, m), labels)
    for name, paint in _FINDINGS.items():
        if labels[LABEL_INDEX[name]]:
            paint(f, kids[LABEL_INDEX[name]])
    c, b, g = _u(rng, 0.9, 1.1), _u(rng, -0.04, 0.04), _u(rng, 0.85, 1.2)  # exposure
    A = np.clip((f.A + 0.025 * _smooth_noise(rng, 6, m)) * c + b, 0.0, 1.0) ** g
    if m < size:  # the anatomy is smooth: paint it at RENDER_SIZE, upsample, then add full-resolution grain
        A = np.asarray(Image.fromarray(A.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    A = A + rng.standard_normal((size, size), dtype=np.float32) * 0.008
    return np.clip(A, 0.0, 1.0, out=A)
