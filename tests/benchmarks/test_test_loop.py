"""benchmarks/test_loop.py runs on the tiny set and accounts for the whole test run, stage by stage."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "test_loop.py"


def load_script():
    spec = importlib.util.spec_from_file_location("test_loop_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore")
def test_the_stage_profile_adds_up_to_the_test_run(tiny_root, capsys):
    script = load_script()
    text = script.main(
        ["--root", str(tiny_root), "--category", "fabric", "--image_size", "64", "--batch_size", "8"]
    )
    assert text in capsys.readouterr().out
    rows = dict(re.findall(r"^\| ([^|*]+?) \| (-?[\d.]+) \| -?[\d.]+% \|$", text, re.M))
    assert list(rows) == script.STAGES
    total = float(re.search(r"\*\*test, as the Trainer runs it\*\* \| \*\*([\d.]+)\*\*", text).group(1))
    assert abs(sum(float(v) for v in rows.values()) - total) < 0.01 * len(rows)  # rounding of each row only
    assert re.search(r"cpu: .+; torch \w+; \d+ threads", text)  # the hardware behind the figures
    ratio = float(re.search(r"ratio ([\d.]+)", text).group(1))
    assert 0 < ratio < 1.5


@pytest.mark.filterwarnings("ignore")
def test_every_stage_is_timed_where_it_runs(tiny_root):
    """Each wrapped function ran inside the timed test (unrounded seconds), and the rest is what is left."""
    script = load_script()
    args = script.parser().parse_args(
        ["--root", str(tiny_root), "--category", "fabric", "--image_size", "64"]
    )
    rows, facts = script.profile(args)
    seconds = dict(rows)
    for stage in (
        "checkpoint load",
        "decode",
        "backbone",
        "search",
        "metrics",
        "pictures drawn",
        "report page",
    ):
        assert seconds[stage] > 0, stage
    assert seconds["model, rest"] >= -1e-3
    assert sum(seconds.values()) == pytest.approx(facts["test_s"])
    assert facts["test_images"] == 12 and facts["search"].startswith("auto")
