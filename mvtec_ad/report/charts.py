"""Charts of a test run: ROC curve, score histogram with the threshold, confusion matrix, pixel PRO curve.

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

from mvtec_ad.evaluation.metrics import ImageCurves, PixelCurves

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
    labels = curves.labels.numpy()
    groups = {"normal": ~labels, "defective": labels}
    return histogram_figure(curves.scores.double().numpy(), groups, curves.threshold, "Image scores", bins)


def prediction_histogram(scores: np.ndarray, threshold: float | None, bins: int = 30) -> np.ndarray:
    """The scores of a predict run (no truth: one colour per verdict), the threshold as a vertical line."""
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is None or not math.isfinite(threshold):
        return histogram_figure(
            scores, {"images": np.ones(len(scores), bool)}, math.nan, "Predicted scores", bins
        )
    flagged = scores >= threshold
    groups = {"passed": ~flagged, "flagged": flagged}
    return histogram_figure(scores, groups, threshold, "Predicted scores", bins)


def histogram_figure(
    scores: np.ndarray, groups: dict[str, np.ndarray], threshold: float, title: str, bins: int
) -> np.ndarray:
    """Histograms of `scores` split by the boolean `groups` on shared bins; the threshold (NaN = none) as a line."""
    finite = np.isfinite(scores)
    scores = scores[finite]
    fig = new_figure()
    ax = fig.add_subplot()
    if scores.size == 0:
        note(ax, "no finite scores")
    else:
        # the threshold joins the range so its line is always inside the plot
        span = np.r_[scores, threshold] if math.isfinite(threshold) else scores
        edges = np.histogram_bin_edges(span, bins=bins)
        for (name, chosen), colour in zip(groups.items(), ("C0", "C3"), strict=False):
            chosen = chosen[finite]
            if chosen.any():
                ax.hist(
                    scores[chosen], bins=edges, alpha=0.6, color=colour, label=f"{name} (n={chosen.sum()})"
                )
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        else:
            ax.plot([], [], " ", label="no threshold")  # a legend entry that says so
        ax.legend()
    ax.set(title=title, xlabel="anomaly score", ylabel="images")
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


def pro_figure(curves: PixelCurves | None) -> np.ndarray:
    """Pixel PRO curve (mean per-region overlap against pixel FPR) up to the AUPRO's FPR limit, and the
    pixel ROC curve in the same axes; a note when the run has no pixel metrics."""
    fig = new_figure()
    ax = fig.add_subplot()
    if curves is None:
        note(ax, "no pixel metrics (an image-only detector, or masks without defective or normal pixels)")
        ax.set(title="Pixel PRO curve", xticks=[], yticks=[])
        return render(fig)
    limit = curves.fpr_limit
    fpr, pro = curves.pro
    ax.plot(
        np.r_[0.0, fpr.numpy()], np.r_[0.0, pro.numpy()], color="C2", label=f"PRO (AUPRO {curves.aupro:.3f})"
    )
    roc_fpr, tpr = curves.roc
    within = roc_fpr.numpy() <= limit
    ax.plot(
        np.r_[0.0, roc_fpr.numpy()[within]],
        np.r_[0.0, tpr.numpy()[within]],
        color="C0",
        linestyle=":",
        label=f"pixel ROC (AUROC {curves.auroc:.3f})",
    )
    ax.set(
        xlim=(0, limit),
        ylim=(0, 1.02),
        xlabel="pixel false positive rate",
        ylabel="per-region overlap / true positive rate",
        title=f"Pixel PRO curve to FPR {limit:g}",
    )
    ax.legend(loc="lower right")
    return render(fig)
