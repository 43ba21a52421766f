"""Progress bars: on a terminal only, off by MVTEC_AD_PROGRESS=0 or a Trainer without a bar."""

import io
import sys
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from mvtec_ad.progress import RunProgressBar, progress_enabled, steps, track, with_progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_when_stderr_is_not_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(track(range(5), "work")) == [0, 1, 2, 3, 4]
    assert not progress_enabled() and err.getvalue() == ""


def test_a_terminal_gets_a_bar_unless_switched_off(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_enabled()
    assert not progress_enabled(SimpleNamespace(progress_bar_callback=None, is_global_zero=True))
    assert not progress_enabled(SimpleNamespace(progress_bar_callback=object(), is_global_zero=False))
    assert progress_enabled(SimpleNamespace(progress_bar_callback=object(), is_global_zero=True))
    monkeypatch.setenv("MVTEC_AD_PROGRESS", "0")
    assert not progress_enabled()


def test_steps_count_and_take_a_late_total(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with steps("Coreset selection", None) as bar:
        bar.advance_to(3, total=10)
        bar.advance(2)
        assert bar.done == 5
        task = bar._bar.tasks[0]
        assert (task.completed, task.total, task.description) == (5, 10, "Coreset selection")


@pytest.mark.parametrize(
    ("terminal", "enable", "chosen", "expected"),
    [
        (True, None, [], RunProgressBar),
        (True, False, [], None),
        (False, None, [], None),
        (True, None, [TQDMProgressBar()], TQDMProgressBar),
    ],
)
def test_the_trainer_gets_the_rich_bar_on_a_terminal_only(monkeypatch, terminal, enable, chosen, expected):
    monkeypatch.setattr(sys, "stderr", Terminal() if terminal else io.StringIO())
    callbacks = with_progress_bar(chosen, enable)
    bars = [type(c) for c in callbacks]
    assert bars == ([] if expected is None else [expected])


def test_a_fit_once_training_pass_is_called_feature_extraction():
    bar = RunProgressBar()
    bar._trainer = SimpleNamespace(lightning_module=SimpleNamespace(fits_once=True), max_epochs=1)
    assert bar._get_train_description(0) == "Feature extraction"
    bar._trainer = SimpleNamespace(lightning_module=SimpleNamespace(), max_epochs=3)
    assert bar._get_train_description(0).strip() == "Epoch 0/2"
