"""Charts of a test run: ROC curve, score histogram with the threshold, confusion matrix.

Each draws the `ImageCurves` the metrics computed (mvtec_ad.evaluation.metrics): a chart never
counts again what metrics.json reports. matplotlib's Figure API on an Agg canvas: no pyplot
global state, no display. Each function returns an H x W x 3 RGB uint8 array (FIGURE_SIZE at
DPI), so the same picture goes to a PNG and to TensorBoard.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mvtec_ad.evaluation.metrics import ImageCurves

FIGURE_SIZE = (5.0, 4.0)  # inches
DPI = 100  # so every chart is 500 x 400 pixels


def new_figure() -> Figure:
    return Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")


def render(fig: Figure) -> np.ndarray:
    """Draw `fig` on an Agg canvas and return its pixels as RGB uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def note(ax, text: str) -> None:
    """Say in the middle of `ax` why it holds no curve."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)


def roc_figure(curves: ImageCurves) -> np.ndarray:
    """Image-level ROC curve with its AUROC, and the operating point when there is a threshold."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if curves.roc is None:
        note(ax, "ROC needs normal and defective test images")
        ax.set_title("Image ROC")
    else:
        fpr, tpr = curves.roc
        auroc = curves.auroc
        ax.plot(np.r_[0.0, fpr.numpy()], np.r_[0.0, tpr.numpy()], color="C0", label=f"AUROC {auroc:.3f}")
        point = curves.operating_point
        if point is not None:
            ax.plot(*point, "o", color="C3", label=f"threshold {curves.threshold:.4g}")
        ax.set_title(f"Image ROC (AUROC {auroc:.3f})")
        ax.legend(loc="lower right")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate")
    return render(fig)


def score_histogram(curves: ImageCurves, bins: int = 30) -> np.ndarray:
    """Image scores of normal vs defective test images on shared bins, the threshold as a vertical line."""
    scores = curves.scores.double().numpy()
    labels = curves.labels.numpy()
    threshold = curves.threshold
    finite = np.isfinite(scores)
    scores, labels = scores[finite], labels[finite]
    fig = new_figure()
    ax = fig.add_subplot()
    if scores.size == 0:
        note(ax, "no finite test scores")
    else:
        # the threshold joins the range so its line is always inside the plot
        span = np.r_[scores, threshold] if math.isfinite(threshold) else scores
        edges = np.histogram_bin_edges(span, bins=bins)
        for name, chosen, colour in (("normal", ~labels, "C0"), ("defective", labels, "C3")):
            if chosen.any():
                ax.hist(
                    scores[chosen], bins=edges, alpha=0.6, color=colour, label=f"{name} (n={chosen.sum()})"
                )
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        else:
            ax.plot([], [], " ", label="no threshold")  # a legend entry that says so
        ax.legend()
    ax.set(title="Image scores", xlabel="anomaly score", ylabel="images")
    return render(fig)


def confusion_matrix(curves: ImageCurves) -> np.ndarray | None:
    """Counts of score >= threshold: rows true normal / defective, columns predicted; None without a threshold."""
    at = curves.confusion
    if at is None:
        return None
    return np.array([[at["tn"], at["fp"]], [at["fn"], at["tp"]]], dtype=np.int64)


def confusion_figure(curves: ImageCurves) -> np.ndarray:
    """2 x 2 confusion matrix at the operating threshold, with counts; a note when there is none."""
    fig = new_figure()
    ax = fig.add_subplot()
    names = ["normal", "defective"]
    counts = confusion_matrix(curves)
    if counts is None:
        note(ax, "no operating threshold (no validation data was seen)")
        ax.set(title="Confusion matrix", xticks=[], yticks=[])
        return render(fig)
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for (row, col), count in np.ndenumerate(counts):
        dark = count > counts.max() / 2
        ax.text(
            col, row, str(count), ha="center", va="center", fontsize=16, color="white" if dark else "black"
        )
    ax.set(
        title=f"Confusion matrix at threshold {curves.threshold:.4g}",
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
    )
    return render(fig)
