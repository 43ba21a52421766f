"""Progress a person can follow for long work outside Lightning's training loops.

Coreset selection, the classical detectors' grid search, writing a report's pictures, the
benchmark's runs, dataset statistics: each shows a Rich progress bar on the terminal, as do the
Trainer's own loops (RunProgressBar, which calls a memory bank's training pass feature
extraction). It stays
quiet when stderr is not a terminal (logs, CI, subprocesses of the benchmark), when
MVTEC_AD_PROGRESS=0, or inside a run whose Trainer has `enable_progress_bar: false`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

T = TypeVar("T")
DISABLE_ENV = "MVTEC_AD_PROGRESS"


def progress_enabled(trainer=None) -> bool:
    """True when a bar would reach a person: stderr is a terminal and nothing switched bars off."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if trainer is not None and getattr(trainer, "progress_bar_callback", None) is None:
        return False  # --trainer.enable_progress_bar false
    if trainer is not None and not getattr(trainer, "is_global_zero", True):
        return False  # one bar per run, not one per process
    return sys.stderr.isatty()


class Steps:
    """What `steps` hands out: `advance(n)` moves the bar (a no-op when quiet); `done` counts."""

    def __init__(self, bar=None, task=None) -> None:
        self._bar, self._task, self.done = bar, task, 0

    def advance(self, n: int = 1) -> None:
        self.advance_to(self.done + n)

    def advance_to(self, done: int, total: int | None = None) -> None:
        """Set the count (and the total, where it is known only now)."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, **({"total": total} if total is not None else {}))


@contextmanager
def steps(description: str, total: int | None, trainer=None, enabled: bool | None = None) -> Iterator[Steps]:
    """A bar of `total` steps for the `with` block (advance it by hand), removed when the block ends."""
    if not (progress_enabled(trainer) if enabled is None else enabled):
        yield Steps()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        yield Steps(bar, bar.add_task(description, total=total))


def track(
    items: Iterable[T], description: str, total: int | None = None, trainer=None, enabled: bool | None = None
) -> Iterator[T]:
    """`items`, one bar step each (total: len(items) where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with steps(description, total, trainer, enabled) as bar:
        for item in items:
            yield item
            bar.advance()


class RunProgressBar(RichProgressBar):
    """Lightning's Rich bar for the Trainer's loops; a fit-once detector's one training pass (it only
    embeds the training images: memory banks, classical features) is called what it is."""

    def _get_train_description(self, current_epoch: int) -> str:
        if getattr(self.trainer.lightning_module, "fits_once", False):
            return "Feature extraction"
        return super()._get_train_description(current_epoch)


def with_progress_bar(callbacks, enable_progress_bar: bool | None) -> list:
    """`callbacks` plus RunProgressBar where a bar reaches a terminal and none was chosen (else as given)."""
    callbacks = (
        [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    )
    wanted = enable_progress_bar is not False and progress_enabled()
    if wanted and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(RunProgressBar())
    return callbacks
