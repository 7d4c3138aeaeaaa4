"""Tiny NIH ChestX-ray14 and CheXpert folders in their real layouts (CSV quirks included), for the converter tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).parents[1] / "assets"


def tiny_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)


# (image, findings, patient); two real radiographs, the rest tiny images; images_001 and images_002 folders
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1), ("00000001_001.png", "Cardiomegaly|Emphysema", 1),
    ("00000001_002.png", "Cardiomegaly|Effusion", 1), ("00000002_000.png", "No Finding", 2),
    ("00000003_000.png", "Hernia", 3), ("00000003_001.png", "Hernia|Infiltration|Pleural_Thickening|Mass", 3),
    ("00000004_000.png", "Mass|Nodule", 4), ("00000005_000.png", "No Finding", 5),
    ("00000006_000.png", "Atelectasis|Pneumonia|Pneumothorax", 6), ("00000007_000.png", "Consolidation|Edema", 7),
    ("00000007_001.png", "Fibrosis", 7), ("00000008_000.png", "Effusion|Atelectasis", 8),
    ("00000009_000.png", "No Finding", 9), ("00027426_000.png", "No Finding", 27426),
]
NIH_TEST_PATIENTS = {3, 7, 27426}


def write_nih(root: Path, rows=NIH_ROWS, images=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # The real header ends in a comma and its bracketed names hold commas: pandas sees 12 columns, rows have 11.
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    lines = [header]
    for i, (name, findings, pid) in enumerate(rows):
        lines.append(f"{name},{findings},{int(name[9:12])},{pid},{40 + i},{'MF'[i % 2]},PA,2500,2048,0.143,0.143")
        if images:
            folder = root / ("images_001" if i < 8 else "images_002") / "images"
            if (DATA / name).exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(DATA / name, folder / name)
            else:
                tiny_image(folder / name, i)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n, _, p in rows if p not in NIH_TEST_PATIENTS))
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n, _, p in rows if p in NIH_TEST_PATIENTS))
    return root


# ---------------------------------------------------------------- CheXpert

CHX_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
              "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
              "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
# (path under CheXpert-v1.0-small/, frontal?, {label: value}); unnamed labels are blank
CHX_ROWS = [
    ("train/patient00001/study1/view1_frontal.jpg", True, {"No Finding": "1.0", "Support Devices": "1.0"}),
    ("train/patient00002/study2/view1_frontal.jpg", True,
     {"Atelectasis": "-1.0", "Edema": "-1.0", "Cardiomegaly": "-1.0", "Lung Opacity": "1.0", "Pneumonia": "0.0"}),
    ("train/patient00002/study2/view2_lateral.jpg", False, {"Atelectasis": "-1.0", "Lung Opacity": "1.0"}),
    ("train/patient00003/study1/view1_frontal.jpg", True,
     {"Pleural Effusion": "1.0", "Edema": "0.0", "Consolidation": "-1.0", "Fracture": "0.0"}),
    ("train/patient00004/study1/view1_frontal.jpg", True, {"Atelectasis": "1.0", "Cardiomegaly": "-1.0"}),
]


def write_chexpert(base: Path, rows=CHX_ROWS, folder="CheXpert-v1.0-small") -> Path:
    root = base / folder
    lines = [",".join(CHX_HEADER)]
    for i, (rel, frontal, vals) in enumerate(rows):
        sex, view = ("Female" if i % 2 else "Male"), ("Frontal" if frontal else "Lateral")
        meta = [sex, str(50 + i), view, "AP" if frontal else ""]
        cells = [f"{folder}/{rel}"] + meta + [vals.get(c, "") for c in CHX_HEADER[5:]]
        lines.append(",".join(cells))
        tiny_image((root / rel).with_suffix(".png"), i)
        (root / rel).with_suffix(".png").rename(root / rel)  # content format does not matter here
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"
