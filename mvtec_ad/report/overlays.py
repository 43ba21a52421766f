"""Pictures a person looks at: heatmap overlays drawn with cv2 at the images' own resolution.

matplotlib-free, so they also work in workers; the charts (ROC, histogram, confusion) live in
charts.py. Every function returns an H x W x 3 RGB uint8 array: the same array goes to a PNG and
to TensorBoard.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

MIN_PANEL_SIZE = 160  # smaller images are enlarged (nearest neighbour) so the labels stay legible
PREDICTED_COLOUR = (255, 0, 0)
GROUND_TRUTH_COLOUR = (0, 200, 0)


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> H x W x 3 uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(amap: torch.Tensor, vmin: float, vmax: float) -> np.ndarray:
    """Anomaly map -> JET colours (RGB uint8) on a fixed [vmin, vmax] range shared by a whole run."""
    scaled = ((amap.float().numpy() - vmin) / max(vmax - vmin, 1e-12)).clip(0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The image with its coloured heatmap laid over it, half and half (test overlays and predict)."""
    return cv2.addWeighted(rgb, 0.5, heatmap, 0.5, 0)


def predicted_mask(amap: torch.Tensor, pixel_threshold: float | None) -> torch.Tensor | None:
    """Pixels the model's pixel threshold calls anomalous (map >= it); None without one.

    The pixel threshold is fitted on the maps of normal validation images (evaluation.thresholds),
    apart from the image threshold: the masks mean the same on every image, flagged or passed.
    """
    if pixel_threshold is None or not math.isfinite(pixel_threshold):
        return None
    return amap >= pixel_threshold


def tint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """`rgb` with `mask` filled half-transparent in `colour` and outlined in it."""
    mask = mask.astype(np.uint8)
    out = rgb.copy()
    fill = mask.astype(bool)
    out[fill] = (0.5 * out[fill] + 0.5 * np.array(colour)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def text_strip(lines: list[str], width: int) -> np.ndarray:
    """White strip of black text lines, the font shrunk until the longest line fits `width`."""
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    widest = max(cv2.getTextSize(line, font, 1.0, thickness)[0][0] for line in lines)
    scale = min(0.45, (width - 8) / max(widest, 1))
    height = cv2.getTextSize("Ag", font, scale, thickness)[0][1]
    step = int(height * 1.8) + 2
    strip = np.full((step * len(lines) + 4, width, 3), 255, np.uint8)
    for n, line in enumerate(lines):
        cv2.putText(strip, line, (4, step * (n + 1) - 2), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def note_panel(text: str, height: int, width: int) -> np.ndarray:
    """A grey panel saying why it is empty (e.g. no operating threshold)."""
    panel = np.full((height, width, 3), 200, np.uint8)
    strip = text_strip([text], width)[:height]
    top = (height - strip.shape[0]) // 2
    panel[top : top + strip.shape[0]] = strip
    return panel


def overlay_panels(
    image: torch.Tensor,
    amap: torch.Tensor | None,
    mask: torch.Tensor,
    pixel_threshold: float | None,
    vmin: float,
    vmax: float,
    caption: list[str],
) -> np.ndarray:
    """image | heatmap | predicted mask | ground truth, labelled, with `caption` lines above.

    Image-only detectors (`amap` None) get image | ground truth: they have no map to show. The
    heatmap colours span [vmin, vmax], one range for a whole run so panels compare; the predicted
    mask follows `predicted_mask`.
    """
    rgb = to_rgb_uint8(image)
    zoom = max(1, math.ceil(MIN_PANEL_SIZE / min(rgb.shape[:2])))

    def enlarge(array: np.ndarray) -> np.ndarray:
        return cv2.resize(array, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)

    shown = enlarge(rgb)
    ground_truth = tint(shown, enlarge((mask.numpy() > 0.5).astype(np.uint8)), GROUND_TRUTH_COLOUR)
    if amap is None:
        panels, names = [shown, ground_truth], ["image", "ground truth"]
    else:
        heatmap = blend(shown, enlarge(colorize(amap, vmin, vmax)))
        predicted = predicted_mask(amap, pixel_threshold)
        if predicted is None:
            predicted_panel, predicted_name = note_panel("no pixel threshold", *shown.shape[:2]), "predicted"
        else:
            predicted_panel = tint(shown, enlarge(predicted.numpy().astype(np.uint8)), PREDICTED_COLOUR)
            predicted_name = f"predicted (pixel t = {pixel_threshold:.4g})"
        panels = [shown, heatmap, predicted_panel, ground_truth]
        names = ["image", "heatmap", predicted_name, "ground truth"]
    row = np.concatenate(
        [
            np.concatenate([text_strip([name], p.shape[1]), p], axis=0)
            for p, name in zip(panels, names, strict=True)
        ],
        axis=1,
    )
    return np.concatenate([text_strip(caption, row.shape[1]), row], axis=0)
