"""Which test images a person should look at, chosen batch by batch without keeping every image.

Three groups: the worst-scored normals (highest normal scores: false-alarm candidates), the
best-scored defects (highest defect scores: what the detector finds) and the worst-scored defects
(lowest defect scores: what it misses). Images, maps and masks are kept only for the current
candidates, on the CPU; the dataset indices seen, to skip DDP padding repeats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

GROUPS = ("worst_normal", "best_defect", "worst_defect")


@dataclass
class Candidate:
    """One test image kept for drawing: its score, label, file and the tensors to draw."""

    score: float
    label: int
    index: int
    path: str
    image: torch.Tensor  # [3, H, W] in [0, 1]
    map: torch.Tensor | None  # [H, W]; None for image-only detectors
    mask: torch.Tensor  # [H, W] in {0, 1}

    def file_name(self, group: str, rank: int) -> str:
        """<group>_<rank>_<defect>_<stem>.png: MVTec's test/<defect>/<stem> stays readable."""
        path = Path(self.path)
        return f"{group}_{rank:02d}_{path.parent.name}_{path.stem}.png"

    def caption(self, group: str, rank: int, threshold: float) -> list[str]:
        """Which image this is, its score, and what the operating threshold makes of it."""
        path = Path(self.path)
        verdict = ""
        if math.isfinite(threshold):
            verdict = "flagged anomalous" if self.score >= threshold else "passed as normal"
        return [f"{group} #{rank}: {path.parent.name}/{path.name}", f"score {self.score:.4g}  {verdict}"]


class OverlaySelection:
    """Keeps the `k` most extreme test images of each group (so up to 3k images are drawn).

    Ties keep the image seen first. Images whose dataset index was already seen (DDP padding
    repeats) are skipped. Under DDP every process selects among its own images only, so rank 0
    draws its local extremes: approximate there, exact in a single process.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self._worst_normal: list[Candidate] = []  # highest normal scores
        self._high_defect: list[Candidate] = []  # highest defect scores
        self._low_defect: list[Candidate] = []  # lowest defect scores
        self._seen: set[int] = set()
        self._rows = 0

    def update(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        index: torch.Tensor | None,
        paths: list[str],
        images: torch.Tensor,
        maps: torch.Tensor | None,
        masks: torch.Tensor,
        content: torch.Tensor | None = None,
    ) -> None:
        """One test batch: images [B, 3, H, W], maps / masks [B, 1, H, W] (maps None = image-only).

        `content` [B, 2] (h, w): the part of each canvas that is the image; the padding is cut off.
        """
        scores = scores.detach().flatten().float().cpu()  # one host sync per batch, not per image
        labels = labels.detach().flatten().long().cpu()
        if index is None:  # no dataset positions: every row is a distinct image
            index = torch.arange(self._rows, self._rows + len(scores))
        index = index.detach().flatten().long().cpu()
        self._rows += len(scores)
        fresh = torch.zeros(len(index), dtype=torch.bool)
        for row, i in enumerate(index.tolist()):
            fresh[row] = i not in self._seen
            self._seen.add(i)

        def candidate(i: int) -> Candidate:
            h, w = content[i].tolist() if content is not None else images.shape[-2:]
            return Candidate(
                score=float(scores[i]),
                label=int(labels[i]),
                index=int(index[i]),
                path=paths[i],
                # copies: a CPU view would keep its whole batch alive
                image=images[i, :, :h, :w].detach().to("cpu", torch.float32, copy=True),
                map=None if maps is None else maps[i, 0, :h, :w].detach().to("cpu", torch.float32, copy=True),
                mask=masks[i, 0, :h, :w].detach().to("cpu", copy=True),
            )

        normal = (fresh & (labels == 0)).nonzero().flatten().tolist()
        defect = (fresh & (labels != 0)).nonzero().flatten().tolist()
        self._worst_normal = self._keep(self._worst_normal, normal, scores, candidate, highest=True)
        self._high_defect = self._keep(self._high_defect, defect, scores, candidate, highest=True)
        self._low_defect = self._keep(self._low_defect, defect, scores, candidate, highest=False)

    def _keep(
        self,
        kept: list[Candidate],
        rows: list[int],
        scores: torch.Tensor,
        candidate: Callable[[int], Candidate],
        highest: bool,
    ) -> list[Candidate]:
        """The k most extreme of `kept` and the batch `rows`; only newly chosen rows are copied."""
        sign = 1.0 if highest else -1.0
        pool: list[tuple[float, int, Candidate | int]] = [(sign * c.score, n, c) for n, c in enumerate(kept)]
        pool += [(sign * float(scores[i]), len(kept) + n, i) for n, i in enumerate(rows)]
        pool.sort(key=lambda item: (-item[0], item[1]))  # most extreme first, earlier first on ties
        return [c if isinstance(c, Candidate) else candidate(c) for _, _, c in pool[: self.k]]

    def selected(self) -> dict[str, list[Candidate]]:
        """Each group, most extreme first; a defect among the best is not repeated among the worst."""
        best = self._high_defect
        best_index = {c.index for c in best}
        worst = [c for c in self._low_defect if c.index not in best_index]
        return dict(zip(GROUPS, (list(self._worst_normal), list(best), worst), strict=True))

    def map_range(self) -> tuple[float, float]:
        """Min and max over the chosen maps: one colour range for a whole run, so heatmaps compare."""
        maps = [c.map for chosen in self.selected().values() for c in chosen if c.map is not None]
        if not maps:
            return 0.0, 1.0
        return min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
