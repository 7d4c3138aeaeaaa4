"""The report's refiner/ablation verdict from a `cxr-compare` output (compare.json): the verdict, the headline
within-fold delta with both intervals, the per-fold deltas, and the pooled delta as a secondary figure."""

from __future__ import annotations

import json
from pathlib import Path

import cxr_fast.evaluate.html as H
from cxr_fast.errors import UserError

REQUIRED = ("verdict", "delta")


def load_compare(path: str | Path) -> dict:
    """Read and check a compare.json (UserError naming the file otherwise)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--compare {path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--compare {path}: not a readable JSON file ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise UserError(f"--compare {path}: no {', '.join(missing)} key(s): not a cxr-compare --out file")
    doc["_path"] = str(path)
    return doc


def _iv(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "-"


def _num(v, sign: bool = False) -> str:
    return "-" if not isinstance(v, (int, float)) else (f"{v:+.3f}" if sign else f"{v:.3f}")


def _arm(runs, fallback) -> str:
    runs = runs if isinstance(runs, list) and runs else [fallback] if fallback else []
    return ", ".join(map(str, runs)) or "?"


def _which(run: Path, doc: dict) -> str:
    here = run.resolve()
    for arm, key in (("A", "runs_a"), ("B", "runs_b")):
        runs = doc.get(key) or [doc.get(arm.lower())]
        if any(Path(str(r)).resolve() == here for r in runs if r):
            return f"This run is arm {arm}."
    return "This run is in neither arm of the comparison."


def compare_section(run: Path, doc: dict | None) -> str:
    """The section body; a note on how to add it when no compare.json was given."""
    if doc is None:
        return H.note("No comparison given: run cxr-compare --a RUN_A --b RUN_B --out compare.json (e.g. this run "
                      "and one trained with --no-refiner on the same folds), then cxr-report RUN --compare "
                      "compare.json.")
    d = doc.get("delta") if isinstance(doc.get("delta"), dict) else {"value": doc.get("delta")}
    ci, t_ci = d.get("ci95", doc.get("ci95")), d.get("t_ci95", doc.get("t_ci95"))
    body = H.para(str(doc.get("verdict")), "lead")
    body += H.para(f"A: {_arm(doc.get('runs_a'), doc.get('a'))}. B: {_arm(doc.get('runs_b'), doc.get('b'))}. "
                   f"{_which(run, doc)} From {doc.get('_path', 'compare.json')}.")
    body += H.table(["macro-AUC", "A", "B", "delta A - B", "bootstrap 95% CI", "corrected t 95% CI"],
                    [["mean within-fold (headline)", _num(doc.get("a_value")), _num(doc.get("b_value")),
                      _num(d.get("value"), True), _iv(ci), _iv(t_ci)]])
    by = doc.get("decided_by") or []
    body += H.para("Within-fold: each fold's models scored on that fold's out-of-fold images. Bootstrap CI: "
                   "images (or patients) resampled within folds, A and B on the same resamples (evaluation noise). "
                   "Corrected t CI: over the per-fold deltas (Nadeau-Bengio), carrying training noise. A run is called "
                   "better only when both exclude 0 on the same side"
                   + (f"; decided by: {', '.join(map(str, by))}." if by else "."))
    folds = [f for f in doc.get("per_fold") or [] if isinstance(f, dict)]
    if folds:
        pair = any(f.get("pair", 1) != 1 for f in folds)
        body += H.section("Per-fold deltas", H.table(
            (["run pair"] if pair else []) + ["fold", "images", "A", "B", "delta A - B"],
            [([f.get("pair")] if pair else []) + [f.get("fold"), f.get("n"), _num(f.get("a")), _num(f.get("b")),
                                                  _num(f.get("delta"), True)] for f in folds]), 3)
    pooled = doc.get("pooled")
    if isinstance(pooled, dict) and pooled.get("value") is not None:
        body += H.para(f"Secondary: pooled out-of-fold macro-AUC A {_num(pooled.get('a_value'))}, B "
                       f"{_num(pooled.get('b_value'))}, delta {_num(pooled.get('value'), True)} (bootstrap 95% CI "
                       f"{_iv(pooled.get('ci95'))})" + (f": {pooled['note']}." if pooled.get("note") else "."))
    return body
