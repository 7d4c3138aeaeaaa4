"""The learned label-coupling matrix A: averaged over fold checkpoints, its strongest entries, and a heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_fast.atomic import atomic_path
from cxr_fast.errors import UserError


def mean_coupling(checkpoints: list[tuple[Path, dict]]) -> tuple[np.ndarray, list[str]]:
    """Mean of A over the given fold checkpoints (which must share one label list)."""
    mats = []
    for path, ck in checkpoints:
        if ck.get("refiner") is None or "A" not in ck["refiner"]:
            raise UserError(f"{path}: this checkpoint has no refiner (trained with --no-refiner)")
        mats.append(ck["refiner"]["A"].float().numpy())
    a = np.mean(mats, axis=0)
    np.fill_diagonal(a, 0.0)
    return a, list(checkpoints[0][1]["labels"])


def top_couplings(a: np.ndarray, labels: list[str], top: int = 5) -> dict[str, list[dict]]:
    """Per label i, the `top` largest |A[i, j]| (j != i), skipping exact zeros."""
    out = {}
    for i, name in enumerate(labels):
        order = [j for j in np.argsort(-np.abs(a[i]), kind="stable") if j != i and a[i, j] != 0][:top]
        out[name] = [{"label": labels[j], "A": float(a[i, j])} for j in order]
    return out


HEATMAP_DPI = 120


def heatmap_figure(a: np.ndarray, labels: list[str], title: str = "Learned label couplings (A)"):
    """A as a matplotlib Figure (on its own Agg canvas, no pyplot), laid out: diverging colour map centred at 0,
    labels on both axes. `plot_heatmap` saves it; TensorBoard (`train.logger.coupling_image`) renders it in memory."""
    from matplotlib.colors import TwoSlopeNorm

    from cxr_fast.evaluate.plots import new_figure

    lim = float(np.abs(a).max()) or 1e-6
    n = len(labels)
    fig = new_figure((max(6, 0.5 * n + 3), max(5, 0.5 * n + 2)), dpi=HEATMAP_DPI)
    ax = fig.subplots()
    im = ax.imshow(a, cmap="bwr", norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("coupled label j (column)")
    ax.set_ylabel("label i (row)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_heatmap(a: np.ndarray, labels: list[str], out: str | Path, title: str = "Learned label couplings (A)") -> None:
    """`heatmap_figure` written to `out` (atomically), in the format its suffix names (png when none)."""
    out = Path(out)
    fig = heatmap_figure(a, labels, title)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=HEATMAP_DPI, format=out.suffix.lstrip(".").lower() or "png")
