"""Label side of the synthetic chest radiographs: the 14 CheXpert labels drawn with planted co-occurrence structure.

`sample_labels` draws labels from latent causes (heart failure, infection, ICU stay), so labels co-occur as in real
data; `PLANTED_PAIRS` and `FAINT` name the structure that was planted, and `label_structure` measures it as the
JSON-able numbers that `synth.generate` writes to couplings.json (for checking what a model learned).
"""

from __future__ import annotations

import numpy as np

from cxr_fast.data.table import CHEXPERT_LABELS

LABEL_INDEX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

# The deliberately faint label: its own pattern is drawn at this fraction of a normal opacity's strength, while
# P(Consolidation | Pneumonia) is ~0.95, so a model must lean on the label coupling to score it.
FAINT = {"label": "Pneumonia", "partner": "Consolidation", "signal_scale": 0.15}
# Label pairs that the sampler makes co-occur through a shared latent cause or a direct dependency.
PLANTED_PAIRS = [
    ("Edema", "Pleural Effusion"), ("Cardiomegaly", "Edema"), ("Cardiomegaly", "Pleural Effusion"),
    ("Cardiomegaly", "Enlarged Cardiomediastinum"), ("Pneumonia", "Consolidation"), ("Consolidation", "Lung Opacity"),
    ("Edema", "Lung Opacity"), ("Pleural Effusion", "Atelectasis"), ("Support Devices", "Pneumothorax"),
]


def sample_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 14) int8 0/1 labels in CHEXPERT_LABELS order; No Finding = 1 iff no other label is 1."""

    def b(p: float) -> np.ndarray:
        return rng.random(n) < p

    chf, infection, icu = b(0.20), b(0.18), b(0.28)  # latent causes
    y = {}
    y["Cardiomegaly"] = (chf & b(0.70)) | b(0.04)
    y["Enlarged Cardiomediastinum"] = (y["Cardiomegaly"] & b(0.35)) | b(0.03)
    y["Edema"] = (chf & b(0.60)) | b(0.02)
    y["Pleural Effusion"] = (chf & b(0.60)) | (infection & b(0.20)) | b(0.04)
    y["Consolidation"] = (infection & b(0.70)) | b(0.02)
    y["Pneumonia"] = (infection & y["Consolidation"] & b(0.60)) | (infection & b(0.05))
    y["Atelectasis"] = b(0.08) | (icu & b(0.10)) | (y["Pleural Effusion"] & b(0.20))
    y["Lung Lesion"] = b(0.05)
    parents = y["Consolidation"] | y["Pneumonia"] | y["Edema"] | y["Atelectasis"] | y["Lung Lesion"]
    y["Lung Opacity"] = (parents & b(0.75)) | b(0.05)
    y["Pneumothorax"] = b(0.03) | (icu & b(0.08))
    y["Support Devices"] = (icu & b(0.85)) | b(0.04)
    y["Fracture"] = b(0.03)
    y["Pleural Other"] = b(0.02)
    y["No Finding"] = ~np.logical_or.reduce([v for v in y.values()])
    return np.stack([y[name] for name in CHEXPERT_LABELS], axis=1).astype(np.int8)


def label_structure(labels: np.ndarray | None = None, n: int = 200_000) -> dict:
    """The planted structure as JSON-able numbers, from a large fixed-seed sample (plus `labels`' prevalence)."""
    big = sample_labels(n, np.random.default_rng(12345)).astype(bool)
    prev = big.mean(0)
    pairs = []
    for a, b in PLANTED_PAIRS:
        ia, ib = LABEL_INDEX[a], LABEL_INDEX[b]
        p_b_a = big[big[:, ia], ib].mean()
        pairs.append({"a": a, "b": b, "p_b_given_a": round(float(p_b_a), 4), "p_b": round(float(prev[ib]), 4),
                      "lift": round(float(p_b_a / prev[ib]), 2)})
    fi, pi = LABEL_INDEX[FAINT["label"]], LABEL_INDEX[FAINT["partner"]]
    faint = dict(FAINT, p_partner_given_label=round(float(big[big[:, fi], pi].mean()), 4))
    out = {
        "labels": list(CHEXPERT_LABELS),
        "prevalence": {k: round(float(p), 4) for k, p in zip(CHEXPERT_LABELS, prev)},
        "cooccur": pairs,
        "exclusive": {"label": "No Finding", "excludes": [k for k in CHEXPERT_LABELS if k != "No Finding"],
                      "rule": "No Finding = 1 iff every other label = 0"},
        "faint": [faint],
        "latent_causes": {"heart_failure": ["Cardiomegaly", "Edema", "Pleural Effusion"],
                          "infection": ["Consolidation", "Pneumonia", "Pleural Effusion"],
                          "icu": ["Support Devices", "Pneumothorax", "Atelectasis"]},
    }
    if labels is not None:
        out["sample_prevalence"] = {k: round(float(p), 4) for k, p in zip(CHEXPERT_LABELS, labels.mean(0))}
    return out
