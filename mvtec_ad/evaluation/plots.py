"""Pictures a person looks at: heatmap overlays (matplotlib-free, so they also work in workers)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> H x W x 3 uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(amap: torch.Tensor, vmin: float, vmax: float) -> np.ndarray:
    """Anomaly map -> JET colours (RGB uint8) on a fixed [vmin, vmax] range shared by a whole run."""
    scaled = ((amap.float().numpy() - vmin) / max(vmax - vmin, 1e-12)).clip(0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def heatmap_triptych(
    image: torch.Tensor, amap: torch.Tensor, mask: torch.Tensor, vmin: float, vmax: float
) -> np.ndarray:
    """image | image blended with its heatmap | ground-truth outline on the image, side by side."""
    rgb = to_rgb_uint8(image)
    blended = cv2.addWeighted(rgb, 0.5, colorize(amap, vmin, vmax), 0.5, 0)
    outlined = rgb.copy()
    contours, _ = cv2.findContours(
        (mask.numpy() > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(outlined, contours, -1, (255, 0, 0), 1)
    return np.concatenate([rgb, blended, outlined], axis=1)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
