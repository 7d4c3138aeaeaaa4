"""Pictures for `cxr-explain`: a heat-map overlay on the radiograph with the label's probability in the corner, and
the `index.html` contact sheet (one row per image, one column per label)."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] map (h, w) -> float32 (height, width) in [0, 1], bilinear."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != (height, width):
        cam = np.asarray(Image.fromarray(cam).resize((width, height), resample=Image.BILINEAR))
    return np.clip(cam, 0.0, 1.0).astype(np.float32)


def _font(draw: ImageDraw.ImageDraw, text: str, height: int, width: int):
    """A font about 1/28 of the image height, smaller when the text would not fit in 90% of the width."""
    size = max(8, height // 28)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()
    text_w = draw.textlength(text, font=font)
    if text_w > 0.9 * width:
        font = ImageFont.load_default(size=max(6, int(size * 0.9 * width / text_w)))
    return font


def overlay(gray: np.ndarray, cam: np.ndarray, text: str, alpha: float = 0.45) -> Image.Image:
    """RGB image: the uint8 radiograph (H, W) blended with the jet-coloured map (H, W) in [0, 1], `text` top left."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](cam)[..., :3]  # (H, W, 3) float in [0, 1]
    base = (gray.astype(np.float32) / 255.0)[..., None]
    rgb = (1.0 - alpha) * base + alpha * heat
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = _font(draw, text, img.height, img.width)
    pad = max(2, img.height // 100)
    box = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return img


def contact_sheet(rows: list[dict], labels: list[str], title: str) -> str:
    """index.html: rows of {"image": shown name, "cells": {label: (png file name, probability)}}."""
    esc = html.escape
    head = "".join(f"<th>{esc(lb)}</th>" for lb in labels)
    body = []
    for row in rows:
        cells = []
        for lb in labels:
            png, prob = row["cells"][lb]
            src = quote(png)
            cells.append(f'<td><a href="{src}"><img src="{src}" loading="lazy" alt="{esc(lb)}"></a>'
                         f"<div>{esc(lb)}: p = {prob:.3f}</div></td>")
        body.append(f"<tr><th class=name>{esc(row['image'])}</th>{''.join(cells)}</tr>")
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{padding:4px;"
             "text-align:center;vertical-align:top;font-size:13px}img{width:220px;display:block}"
             ".name{text-align:left;max-width:14em;word-break:break-all}")
    return (f"<!doctype html>\n<html><head><meta charset=utf-8><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body><h1>{esc(title)}</h1>\n<table><tr><th>image</th>{head}</tr>\n" + "\n".join(body)
            + "\n</table></body></html>\n")


def save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG")
