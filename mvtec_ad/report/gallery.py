"""Every image of a test or predict run as files for the report page: a thumbnail and full-size panels.

Batch by batch, each image's picture (the part of the canvas that is the image), its anomaly map
(float16) and its ground-truth mask go to a staging folder on disk, so a run of thousands of
images holds none of them in memory. At the end, when the colour range of the whole run is
known (min and max of all its maps, so heatmaps compare across images), each picture is drawn
once into the report folder:

    thumbs/<name>.jpg            the heatmap overlay (the image itself for image-only detectors),
                                 longest side THUMB_SIDE: what the page's grid loads
    full/<name>.png              the image as the model saw it (lossless)
    full/<name>_heatmap.jpg      the image with its heatmap blended over it
    full/<name>_predicted.jpg    the pixels the pixel threshold calls anomalous (predicted_mask)
    full/<name>_truth.jpg        the ground-truth mask (test runs only)

The three overlays are JPEG (quality FULL_QUALITY): a quarter of the PNGs' bytes at 224 px, so a
run of 2,000 images stays near 200 MB; the image itself stays PNG, pixel for pixel.

<name> is the file's stem, its parent folder in front where stems repeat (output_stems).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.progress import track
from mvtec_ad.report.files import DiskFullError, is_disk_full, save_jpeg, save_png
from mvtec_ad.report.overlays import (
    GROUND_TRUTH_COLOUR,
    PREDICTED_COLOUR,
    blend,
    colorize,
    predicted_mask,
    tint,
    to_rgb_uint8,
)

THUMB_SIDE = 192  # pixels, longest side: a grid of 2,000 cards loads ~10 MB of thumbnails
FULL_QUALITY = 92  # JPEG quality of the full-size overlays
DRAW_THREADS = min(4, os.cpu_count() or 1)  # pictures drawn at once at the end of a test
DRAW_CHUNK = 64  # pictures handed to the threads at a time


def output_stems(paths: list[Path]) -> list[str]:
    """Names for each image's files: its stem; parent_stem where stems repeat; numbered if still not unique."""
    stems = Counter(p.stem for p in paths)
    names = [p.stem if stems[p.stem] == 1 else f"{p.parent.name}_{p.stem}" for p in paths]
    repeated, seen = Counter(names), Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if repeated[name] == 1 else f"{name}_{seen[name]}")
    return unique


@dataclass
class Card:
    """One image of the run as the report page shows it; `files` are relative to the report folder."""

    index: int  # position in the dataset: the page's default order
    path: str
    score: float
    truth: int | None  # 0 good, 1 defective; None where the truth is unknown (predict)
    defect: str | None  # the test folder it came from (MVTec: good, crack, ...); None in predict
    map_range: tuple[float, float] | None  # None for image-only detectors
    name: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def verdict(self, threshold: float | None) -> int | None:
        """1 = flagged anomalous (score >= threshold), 0 = passed, None without a threshold."""
        return None if threshold is None else int(self.score >= threshold)

    def outcome(self, threshold: float | None) -> str | None:
        """TP / FP / TN / FN at the threshold; None without a threshold or a truth."""
        verdict = self.verdict(threshold)
        if verdict is None or self.truth not in (0, 1):
            return None
        return ("TP" if verdict else "FN") if self.truth else ("FP" if verdict else "TN")


class Gallery:
    """Stages each image of a run (`add`, batch by batch) and draws them all at the end (`finish`)."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = Path(report_dir)
        self.cards: dict[int, Card] = {}
        self._staged: dict[int, Path] = {}
        self._staging: Path | None = None
        self._next_position = 0  # for images without a dataset position: one past the largest seen

    def add(
        self,
        scores: torch.Tensor,
        paths: list[str],
        images: torch.Tensor,
        maps: torch.Tensor | None,
        index: torch.Tensor | None = None,
        content: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        """One batch: images [B, 3, H, W] in [0, 1], maps / masks [B, 1, H, W] (maps None = image-only).

        `labels` and `masks` only where the truth is known (test); `content` [B, 2] cuts padding off.
        Images whose dataset index was seen already (DDP padding repeats) are skipped.
        """
        scores = scores.detach().flatten().float().cpu()
        positions = index.detach().flatten().tolist() if index is not None else [-1] * len(paths)
        truth = labels.detach().flatten().tolist() if labels is not None else [None] * len(paths)
        for i, position in enumerate(positions):
            if position < 0:  # no dataset position: the next free one
                position = self._next_position
            if position in self.cards:
                continue
            self._next_position = max(self._next_position, position + 1)
            h, w = content[i].tolist() if content is not None else images.shape[-2:]
            amap = None if maps is None else maps[i, 0, :h, :w].detach().float().cpu()
            arrays = {"image": to_rgb_uint8(images[i, :, :h, :w].detach().float().cpu())}
            if amap is not None:
                arrays["map"] = amap.half().numpy()
            if masks is not None:
                arrays["mask"] = (masks[i, 0, :h, :w].detach().cpu().numpy() > 0.5).astype(np.uint8)
            self._staged[position] = self._stage(position, arrays)
            path = Path(paths[i])
            self.cards[position] = Card(
                index=position,
                path=str(paths[i]),
                score=float(scores[i]),
                truth=None if truth[i] is None else int(truth[i] != 0),
                defect=path.parent.name if truth[i] is not None else None,
                map_range=None if amap is None else (float(amap.min()), float(amap.max())),
            )

    def _stage(self, position: int, arrays: dict[str, np.ndarray]) -> Path:
        """Write one image's arrays to the staging folder (made on first use); the file.

        A full disk removes the staging folder, so nothing half-written is left, and says so in one line.
        """
        try:
            if self._staging is None:
                self.report_dir.mkdir(parents=True, exist_ok=True)
                self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.report_dir))
            staged = self._staging / f"{position}.npz"
            np.savez(staged, **arrays)
            return staged
        except Exception as error:
            if not is_disk_full(error):
                raise
            self.close()
            raise DiskFullError(
                f"No space left on the device to write the report pictures in '{self.report_dir}'; the ones "
                f"staged so far are removed. Free space on {self.report_dir} and run again."
            ) from error

    def gathered_cards(self, trainer: L.Trainer | None) -> list[Card]:
        """Every process's cards, each image once, in dataset order."""
        cards = list(self.cards.values())
        if trainer is not None and trainer.world_size > 1:
            parts: list[list[dict]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(parts, [asdict(c) for c in cards])
            cards = [Card(**c) for part in parts for c in part]
        return sorted({c.index: c for c in cards}.values(), key=lambda c: c.index)

    def finish(
        self,
        trainer: L.Trainer | None,
        threshold: float | None,
        pixel_threshold: float | None = None,
        on_picture=None,
    ) -> list[Card]:
        """Draw this process's staged images into the report folder; every card of the run, named.

        `threshold` (image scores) gives each card its verdict; `pixel_threshold` (maps) the
        predicted-mask pictures, none without it.
        Every process must call it (it gathers under DDP). `on_picture(card, image, heatmap, overlay,
        predicted)`, when given, also receives each drawn image, its coloured map, the image with the
        map blended over it (RGB uint8; heatmap and overlay None without a map) and the predicted
        mask (bool; None without a map or a pixel threshold).
        """
        cards = self.gathered_cards(trainer)
        for card, name in zip(cards, output_stems([Path(c.path) for c in cards]), strict=True):
            card.name = name
        ranges = [c.map_range for c in cards if c.map_range is not None]
        vmin = min((r[0] for r in ranges), default=0.0)
        vmax = max((r[1] for r in ranges), default=1.0)
        own = [c for c in cards if c.index in self._staged]
        start = time.perf_counter()

        def load_and_draw(card: Card) -> tuple[np.ndarray | None, ...]:
            with np.load(self._staged[card.index], allow_pickle=False) as staged:
                arrays = {key: staged[key] for key in staged.files}
            drawn = self.draw(card, arrays, pixel_threshold, vmin, vmax)
            return (arrays["image"], *drawn) if on_picture is not None else (None, None, None, None)

        # OpenCV encodes and torch colours with the GIL released: the cores the test used draw in
        # parallel; in chunks, so that only a chunk's pictures wait in memory for on_picture
        with ThreadPoolExecutor(max_workers=DRAW_THREADS) as pool:
            progress = iter(track(own, "Report pictures", trainer=trainer))
            for at in range(0, len(own), DRAW_CHUNK):
                chunk = own[at : at + DRAW_CHUNK]
                for card, drawn in zip(chunk, pool.map(load_and_draw, chunk), strict=True):
                    next(progress, None)
                    if on_picture is not None:
                        on_picture(card, *drawn)
            for _ in progress:  # ends the bar
                pass
        rank_zero_info(f"Report pictures: {len(own)} images drawn in {time.perf_counter() - start:.1f} s.")
        for card in cards:  # every process names the same files; only their images' were drawn here
            card.files = self.file_names(card, pixel_threshold)
        self.close()
        return cards

    def file_names(self, card: Card, pixel_threshold: float | None) -> dict[str, str]:
        files = {"thumb": f"thumbs/{card.name}.jpg", "image": f"full/{card.name}.png"}
        if card.map_range is not None:
            files["heatmap"] = f"full/{card.name}_heatmap.jpg"
            if pixel_threshold is not None:
                files["predicted"] = f"full/{card.name}_predicted.jpg"
        if card.truth is not None:
            files["truth"] = f"full/{card.name}_truth.jpg"
        return files

    def draw(
        self,
        card: Card,
        arrays: dict[str, np.ndarray],
        pixel_threshold: float | None,
        vmin: float,
        vmax: float,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Write one image's files (see the module docstring); its heatmap, overlay and predicted mask.

        Each is None without a map; the mask also without a pixel threshold.
        """
        files = self.file_names(card, pixel_threshold)
        image = arrays["image"]
        save_png(self.report_dir / files["image"], image)
        heatmap = overlay = predicted = None
        if "map" in arrays:
            amap = torch.from_numpy(arrays["map"].astype(np.float32))
            heatmap = colorize(amap, vmin, vmax)
            overlay = blend(image, heatmap)
            save_jpeg(self.report_dir / files["heatmap"], overlay, FULL_QUALITY)
            if "predicted" in files:
                predicted = predicted_mask(amap, pixel_threshold).numpy()
                marked = tint(image, predicted.astype(np.uint8), PREDICTED_COLOUR)
                save_jpeg(self.report_dir / files["predicted"], marked, FULL_QUALITY)
        if "truth" in files:
            mask = arrays.get("mask", np.zeros(image.shape[:2], np.uint8))
            save_jpeg(self.report_dir / files["truth"], tint(image, mask, GROUND_TRUTH_COLOUR), FULL_QUALITY)
        save_jpeg(self.report_dir / files["thumb"], thumbnail(overlay if overlay is not None else image))
        return heatmap, overlay, predicted

    def close(self) -> None:
        """Remove the staging folder (also when a run stops early)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging, self._staged = None, {}


def thumbnail(rgb: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """`rgb` with its longest side shrunk to `side` (never enlarged: the page scales small ones up)."""
    scale = side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
