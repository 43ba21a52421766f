"""Session-wide fixtures: one tiny demo set (built once), and a hand-made category per test."""

import os
from pathlib import Path

import pytest

from mvtec_ad.data.demo_set import make_demo_dataset
from tests.helpers import TINY, make_category


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory) -> Path:
    """Built search kernels go to a session folder, not the user's ~/.cache (the CLI runs inherit it)."""
    folder = tmp_path_factory.mktemp("kernels")
    os.environ.setdefault("MVTEC_AD_CACHE", str(folder))
    return Path(os.environ["MVTEC_AD_CACHE"])


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The procedural demo set at 64 px, 12 train / 4 good / 8 defective test images per category."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), **TINY)


@pytest.fixture
def category_root(tmp_path) -> Path:
    """4 train, 2 good test, crack x2 + scratch x1 defective test images with masks."""
    return make_category(tmp_path / "data")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (tests/browser.py) for the report page tests; skipped, saying why, without one."""
    from tests.browser import start_browser

    try:
        started, why = start_browser()
    except Exception as error:  # e.g. a Chromium that cannot start here
        started, why = None, f"Chromium did not start: {error}"
    if started is None:
        pytest.skip(f"report page checks need a browser: {why}")
    yield started
    started.close()
