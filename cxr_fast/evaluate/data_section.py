"""The report's data summary: where the images came from (the CSV, or the shards and the CSV they were built from),
images and patients per fold, the labels used and the columns left out (and why), and the images skipped.

Read from what the run recorded: config.json, folds.csv, the training CSV's header (and group column), and, for a
run trained from shards, the shards' manifest.json (its `source`, `totals` and `rejected`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import cxr_fast.evaluate.html as H
from cxr_fast.run_folder import RunPaths

SHOWN = 10  # skipped images named in the page; the rest are counted


def read_manifest(cfg: dict) -> dict | None:
    """The shards' manifest.json of a run trained from shards (None: not from shards, or unreadable)."""
    from cxr_fast.shards.format import MANIFEST

    if not cfg.get("shards"):
        return None
    try:
        doc = json.loads((Path(cfg["shards"]) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def source_lines(cfg: dict, manifest: dict | None) -> list[str]:
    """Sentences naming the training data: the CSV and image folder, or the shards and what they were built from."""
    if cfg.get("shards"):
        src = (manifest or {}).get("source") or {}
        line = f"Trained from the shards in {cfg['shards']}"
        if manifest is None:
            return [line + " (their manifest.json is not readable now: the CSV they came from is not known)."]
        line += (f", built by cxr-shard from {src.get('train_csv', '?')} with the images in "
                 f"{src.get('train_dir', '?')}")
        return [line + (f" (test images: {src['test_dir']})." if src.get("test_dir") else ".")]
    line = f"Trained from {cfg.get('train_csv') or '?'} with the images in {cfg.get('train_dir') or '?'}"
    return [line + (f"; test images from {cfg['test_dir']}." if cfg.get("test_dir") else ".")]


def _training_header(run: Path) -> list[str] | None:
    from cxr_fast.evaluate.runs import training_csv

    path = training_csv(run)
    if path is None:
        return None
    try:
        from cxr_fast.data.csv_read import read_csv_text

        return [str(c).strip() for c in read_csv_text(path).columns]
    except Exception:  # noqa: BLE001 - moved or changed since training: the columns are not listed
        return None


def label_lines(run: Path, cfg: dict, manifest: dict | None) -> list[str]:
    """The labels trained on, the unknown-label policies, and the training CSV's other columns with the reason
    each was not used as a label."""
    labels = cfg.get("labels") or (manifest or {}).get("labels") or []
    pol = (manifest or {}).get("policies") or {k: cfg.get(k) for k in ("uncertain", "missing")}
    out = [(f"{len(labels)} label(s) trained on: {', '.join(labels) or '?'}. Uncertain (-1) labels: "
            f"{pol.get('uncertain', '?')}; blank labels: {pol.get('missing', '?')}.")]
    header = _training_header(run)
    if header is None:
        return out + ["The training CSV is not readable now: the columns left out are not listed."]
    group = cfg.get("group_col") or (manifest or {}).get("group_col")
    why = {cfg.get("image_col"): "the image column", group: "the group (patient) column"}
    other = [f"{c} ({why.get(c, 'not a label: values other than 0, 1, -1 or blank, or not among --labels')})"
             for c in header if c and c not in labels]
    return out + [f"Columns of the training CSV left out as labels: {'; '.join(other) or 'none'}."]


def fold_table(run: Path, cfg: dict, manifest: dict | None) -> str:
    """Images (and patients, when the run was grouped) per fold, from folds.csv and the training CSV."""
    from cxr_fast.evaluate.runs import read_folds, read_groups

    try:
        folds = read_folds(run)
    except Exception:  # noqa: BLE001 - no readable folds.csv: said instead of the table
        return H.note("No readable folds.csv: images per fold are not shown.")
    f = folds.to_numpy()
    group = cfg.get("group_col") or (manifest or {}).get("group_col")
    groups, note = None, ""
    if group:
        try:
            groups = read_groups(run, group, folds.name, list(folds.index.astype(str)))
        except Exception as e:  # noqa: BLE001 - the CSV moved or changed: images only
            note = H.note(f"Patients per fold not shown: {e}")
    ks = sorted(int(k) for k in np.unique(f[np.isfinite(f)]) if k > 0)
    rows = [[k, int((f == k).sum())] + ([len(set(groups[f == k]))] if groups is not None else []) for k in ks]
    rows.append(["all", int(sum(r[1] for r in rows))] + ([len(set(groups[f > 0]))] if groups is not None else []))
    heads = ["fold", "images"] + ([f"patients ({group})"] if groups is not None else [])
    if not group:
        note += H.para("Not grouped (no --group_col): images of one patient may sit in different folds, which "
                       "makes the out-of-fold figures optimistic when patients have several images.")
    return H.table(heads, rows) + note


def skipped_lines(run: Path, cfg: dict, manifest: dict | None) -> list[str]:
    """Images left out: the shards' rejected images, or training-CSV rows absent from folds.csv."""
    if manifest is not None:
        rej = manifest.get("rejected") or []
        if not rej:
            return ["Images skipped: none (every image of the CSV was written to the shards)."]
        shown = "; ".join(f"{r.get('name')} ({r.get('split')}: {r.get('reason')})" for r in rej[:SHOWN])
        more = f"; and {len(rej) - SHOWN} more (manifest.json 'rejected')" if len(rej) > SHOWN else ""
        return [f"Images skipped (cxr-shard --skip_bad): {len(rej)}: {shown}{more}."]
    flag = "on" if cfg.get("skip_bad") else "off"
    return [f"--skip_bad was {flag}: unreadable test images it left out are listed in the training log."]


def data_section(run: Path, ctx: dict) -> str:
    """The data summary section's body."""
    cfg = ctx.get("config")
    if cfg is None:
        try:
            cfg = json.loads(RunPaths(run).config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return H.note("No readable config.json: the data the run was trained on is not known.")
        ctx["config"] = cfg
    manifest = read_manifest(cfg)
    ctx["manifest"] = manifest
    body = "".join(H.para(s) for s in source_lines(cfg, manifest))
    body += fold_table(run, cfg, manifest)
    body += "".join(H.para(s) for s in label_lines(run, cfg, manifest) + skipped_lines(run, cfg, manifest))
    return body
