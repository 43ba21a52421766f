"""Command line: LightningCLI verbs (fit/validate/test/predict + train) and the extra verbs.

    python -m mvtec_ad fit   --config configs/dfr.yaml --data.root datasets/mvtec --data.category bottle
    python -m mvtec_ad test  --config configs/dfr.yaml --ckpt_path lightning_logs/version_0/checkpoints/best.ckpt
    python -m mvtec_ad train --config configs/demo/dfr.yaml      # fit, then test on the best checkpoint
    python -m mvtec_ad synth --out datasets/demo                 # the procedural demo set
    python -m mvtec_ad demo                                      # synth + train every demo category + table
    python -m mvtec_ad predict --config ... --ckpt_path ... --data.path some/folder/
    python -m mvtec_ad predict --model_path model.xml --data.path some/folder/   # an exported model
    python -m mvtec_ad benchmark --configs A.yaml B.yaml --data.root R --categories all --out results.csv
    python -m mvtec_ad stats --data.root R --out stats/
    python -m mvtec_ad export --config ... --ckpt_path ... --format onnx|openvino [--fp16 | --int8]
    python -m mvtec_ad submit --config ... --ckpt_path ... --data.root R --data.category can --out submission/

One YAML config serves every LightningCLI verb; it is parsed in omegaconf mode, so `${...}`
interpolation works. The verbs live in mvtec_ad.commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mvtec_ad.commands import COMMANDS, run_command
from mvtec_ad.errors import find_user_error


def print_usage() -> None:
    print(__doc__)
    print("Extra commands:")
    for name, text in COMMANDS.items():
        print(f"  {name:10s} {text}")
    print("\nLightning verbs (fit, validate, test, predict, train): `python -m mvtec_ad <verb> --help`.")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point. Errors in what the user passed print their message alone (exit 2);
    set MVTEC_AD_DEBUG=1 for the full traceback."""
    try:
        dispatch(argv)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None or os.environ.get("MVTEC_AD_DEBUG"):
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


def dispatch(argv: Sequence[str] | None = None) -> None:
    from_sys = argv is None
    argv = list(sys.argv[1:] if from_sys else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_usage()
        return
    if argv[0] in COMMANDS:
        run_command(argv[0], argv[1:])
        return
    if argv[0] == "predict":  # an exported model: the Inferencer, not LightningCLI
        from mvtec_ad.commands.predict_model import main as predict_model
        from mvtec_ad.commands.predict_model import wants_model_path

        if wants_model_path(argv[1:]):
            predict_model(argv[1:])
            return
    from mvtec_ad.commands.lightning import run_lightning_cli

    run_lightning_cli(None if from_sys else argv)
