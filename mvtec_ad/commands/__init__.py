"""The verbs of `python -m mvtec_ad` beside LightningCLI's (fit, validate, test, predict, train).

Each verb is the module of the same name in this package, with a `main(argv)`; it is imported
only when used, so `--help` and light verbs (synth, stats) start without torch's import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

COMMANDS = {
    "synth": "write the procedural demo set (MVTec layout)",
    "demo": "make the demo set, train every demo category, print a table",
    "benchmark": "train + test every config on every category; results.csv and results.md (resumable)",
    "stats": "dataset exploration: counts, sizes, anomaly areas, brightness; CSV, markdown and plots",
    "export": "export a checkpoint's detector to ONNX or OpenVINO FP32/FP16/INT8 (scores, maps, thresholds)",
    "submit": "MVTec AD 2 submission of a checkpoint: float16 TIFF maps and 0/255 PNG masks per image",
}


def run_command(name: str, argv: Sequence[str]) -> None:
    """Run verb `name` (a key of COMMANDS) with the arguments after it."""
    importlib.import_module(f"{__name__}.{name}").main(list(argv))
