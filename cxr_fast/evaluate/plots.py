"""Figures as base64 PNG strings (matplotlib, Agg backend) for embedding in self-contained HTML pages."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

DPI = 100  # figures are sized in inches for <= ~900 px: shown near full size at 800 px windows


def new_figure(figsize: tuple[float, float], dpi: float = DPI):
    """A matplotlib Figure on its own Agg canvas, without pyplot: nothing global to close (or to leak when a
    section fails half-way), and it can measure text before it is drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def to_base64(fig, layout: bool = True) -> str:
    """PNG bytes of `fig`, base64-encoded (laid out tight unless `layout` is False)."""
    buf = io.BytesIO()
    if layout:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _known(labels: np.ndarray, probs: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray] | None:
    known = ~np.isnan(labels[:, j])
    y = labels[known, j] > 0.5
    if y.all() or not y.any():
        return None
    return y, probs[known, j]


FEW_POSITIVES = 10  # under this many positives an AUC (and its bootstrap CI) is not stable
GRID_COLS = 4  # small multiples: one panel per label, 4 across (~880 px wide at 100 dpi)


# the grids' margins in inches (what tight_layout found for them): fixed, because tight_layout measures every tick
# label of every panel, which cost as much as drawing the figure (~40% of a report's CPU time)
GRID_IN = {"left": 0.63, "right": 0.2, "bottom": 0.56, "top": 0.8, "row_gap": 0.56, "col_gap": 0.3}
UNIT_TICKS = [0.0, 0.5, 1.0]  # fixed, and few: each tick of each panel is a handful of artists to build and draw
# y=1.0: where matplotlib puts a title anyway when no ticks are on top, given here so that it does not measure every
# panel's tick labels to find out (it does that at each draw)
PANEL_TITLE = {"fontsize": 8.5, "y": 1.0}


def _grid(names: Sequence[str], suptitle: str, xlabel: str, ylabel: str):
    """(fig, axes) of one square panel per label (no axes made for the grid's empty cells); shared 0..1 axes, tick
    labels on the outer panels only. Encode with `_grid_png`."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter

    n = max(len(names), 1)
    cols = min(GRID_COLS, n)
    rows = -(-n // cols)
    fig = new_figure((2.2 * cols, 2.2 * rows + 0.5))
    gs = fig.add_gridspec(rows, cols)
    axes = [fig.add_subplot(gs[0, 0])]
    axes += [fig.add_subplot(gs[divmod(i, cols)], sharex=axes[0], sharey=axes[0]) for i in range(1, n)]
    for axis in (axes[0].xaxis, axes[0].yaxis):  # shared: one locator and formatter serve every panel
        axis.set_major_locator(FixedLocator(UNIT_TICKS))
        axis.set_major_formatter(FormatStrFormatter("%.1f"))
    axes[0].set(xlim=(0, 1), ylim=(0, 1.02))  # shared: set once (per panel, each call updates every panel)
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.label_outer()
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel(xlabel, fontsize=9)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel, fontsize=9)
    fig.suptitle(suptitle, fontsize=11)
    return fig, axes


def _grid_png(fig, axes) -> str:
    """Place a `_grid`'s panels with the fixed GRID_IN margins; when the widest panel title (measured, not laid out)
    is wider than a panel, narrow the panels to give it room on both sides (up to a quarter of a column). Encode."""
    rows, cols = axes[0].get_subplotspec().get_gridspec().get_geometry()
    w, h = fig.get_size_inches()
    m = GRID_IN
    renderer = fig.canvas.get_renderer()
    widest = max(ax.title.get_window_extent(renderer).width / fig.dpi for ax in axes)
    room = w - m["left"] - m["right"] - (cols - 1) * m["col_gap"]  # the panels' total width with no overhang
    over = min(max(cols * widest - room, 0.0), 0.25 * w / cols)  # so that (widest - ax_w) / 2 <= over
    ax_w = (room - over * (2 * cols - 1)) / cols
    ax_h = (h - m["top"] - m["bottom"] - (rows - 1) * m["row_gap"]) / rows
    fig.subplots_adjust(left=m["left"] / w, right=1 - (m["right"] + over) / w, bottom=m["bottom"] / h,
                        top=1 - m["top"] / h, wspace=(m["col_gap"] + 2 * over) / ax_w, hspace=m["row_gap"] / ax_h)
    return to_base64(fig, layout=False)


def _few(y: np.ndarray) -> str:
    n_pos = int(y.sum())
    return f"n_pos {n_pos}" + (" (few)" if n_pos < FEW_POSITIVES else "")


def roc_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], title: str = "ROC curves") -> str:
    """One ROC panel per label (small multiples: 14 curves on one axis cannot be told apart); a label without both
    classes gets an empty panel saying so."""
    from sklearn.metrics import auc, roc_curve

    fig, axes = _grid(names, title, "1 - specificity", "sensitivity")
    for j, (name, ax) in enumerate(zip(names, axes)):
        d = _known(labels, probs, j)
        ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=0.8)
        if d is None:
            ax.set_title(f"{name}\none class only: no curve", **PANEL_TITLE)
            continue
        fpr, tpr, _ = roc_curve(*d)
        ax.plot(fpr, tpr, color="C0", lw=1.4)  # auc(roc_curve): what roc_auc_score computes, without a 2nd curve
        ax.set_title(f"{name}\nAUC {auc(fpr, tpr):.3f}, {_few(d[0])}", **PANEL_TITLE)
    return _grid_png(fig, axes)


def pr_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], title: str = "Precision-recall") -> str:
    """One precision-recall panel per label, drawn as sklearn's step function (no interpolation between operating
    points), with the prevalence (a random model's precision) dotted."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, axes = _grid(names, title, "recall (sensitivity)", "precision (PPV)")
    for j, (name, ax) in enumerate(zip(names, axes)):
        d = _known(labels, probs, j)
        if d is None:
            ax.set_title(f"{name}\none class only: no curve", **PANEL_TITLE)
            continue
        prec, rec, _ = precision_recall_curve(*d)
        ax.plot(rec, prec, color="C1", lw=1.4, drawstyle="steps-post")
        ax.axhline(d[0].mean(), color="0.6", ls=":", lw=0.8)
        ax.set_title(f"{name}\nAP {average_precision_score(*d):.3f}, {_few(d[0])}", **PANEL_TITLE)
    return _grid_png(fig, axes)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Mean |fraction positive - mean probability| over the uniform bins of `calibration_curve`, weighted by the
    bins' sizes."""
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(bins[1:-1], p)  # sklearn.calibration.calibration_curve's binning
    n = np.bincount(ids, minlength=n_bins)
    pos = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    mean_p = np.bincount(ids, weights=p, minlength=n_bins)
    nz = n > 0
    return float(np.sum(np.abs(pos[nz] - mean_p[nz])) / max(len(p), 1))


def calibration_figure(labels: np.ndarray, probs: np.ndarray, names: Sequence[str],
                       n_bins: int = 10) -> tuple[str, dict[str, float]]:
    """Reliability diagram per label (fraction positive per probability bin; the dotted diagonal is perfect
    calibration; marker area ~ images in the bin), and each label's expected calibration error."""
    from sklearn.calibration import calibration_curve

    fig, axes = _grid(names, "Reliability (calibration)", "mean predicted probability", "fraction positive")
    eces = {}
    for j, (name, ax) in enumerate(zip(names, axes)):
        ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=0.8)
        d = _known(labels, probs, j)
        if d is None:
            ax.set_title(f"{name}\none class only", **PANEL_TITLE)
            continue
        y, p = d
        frac, mean_p = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        counts = np.bincount(np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p), minlength=n_bins)
        sizes = counts[counts > 0]
        eces[name] = expected_calibration_error(y, p, n_bins)
        ax.plot(mean_p, frac, color="C2", lw=1)
        ax.scatter(mean_p, frac, s=8 + 60 * sizes / sizes.max(), color="C2", zorder=3)
        ax.set_title(f"{name}\nECE {eces[name]:.3f}, {_few(y)}", **PANEL_TITLE)
    return _grid_png(fig, axes), eces


def training_curves_figure(records: list[dict]) -> str:
    """Loss, learning rate and validation macro-AUC per epoch, one line per fold (whole-epoch ticks, the legend
    beside the plots)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((9.6, 3.3))
    axes = fig.subplots(1, 3)
    folds = sorted({r.get("fold") for r in records if r.get("fold") is not None})
    for key, ax, title in zip(("loss", "lr", "val_auc"), axes, ("training loss", "learning rate",
                                                                "validation macro-AUC")):
        for k in folds:
            pts = sorted((r["epoch"], r[key]) for r in records
                         if r.get("fold") == k and isinstance(r.get(key), (int, float)) and "epoch" in r)
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, lw=1.2, label=f"fold {k}")
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_title(title, fontsize=10, y=1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, fontsize=8, loc="lower center", ncol=min(len(names), 8), frameon=False)
    fig.tight_layout()  # then up over the legend: what rect=(0, 0.08, 1, 1) gives, in one layout pass instead of two
    if handles:
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.08)
    return to_base64(fig, layout=False)


def coupling_figure(effect: np.ndarray, labels: Sequence[str], title: str) -> str:
    """Heatmap of the couplings in logit units (row: the label that is certain; column: the label whose logit moves),
    a diverging colour scale centred at 0, sized to stay readable at 14 labels."""
    from matplotlib.colors import TwoSlopeNorm

    n = len(labels)
    lim = float(np.abs(effect).max()) or 1e-6
    side = min(8.6, max(4.5, 0.42 * n + 3.0))
    fig = new_figure((side + 0.8, side))
    ax = fig.subplots()
    im = ax.imshow(effect, cmap="bwr", norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim))
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("change of the column label's logit", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_xlabel("label whose logit moves (column)", fontsize=9)
    ax.set_ylabel("label that is certain (row)", fontsize=9)
    ax.set_title(title, fontsize=10, y=1.0)
    return to_base64(fig)

