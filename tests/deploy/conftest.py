"""Detectors fitted once for all deploy tests (tiny set, the export tests' short fits), and their exports."""

from pathlib import Path

import pytest

from tests.helpers import main_in_process, tiny_args

# the deploy cases: every exportable detector at the tiny square size (its export test's short fit),
# and patchcore keep_aspect on a non-square canvas with constant padding
DETECTORS = ("knn", "patchcore", "dfr", "feature_ae", "pixel_ae", "favae")
KEEP_ASPECT = ("--model.image_size", "[48, 80]", "--model.resize", "keep_aspect", "--model.pad", "constant")
CASES = {name: (name, ()) for name in DETECTORS} | {"patchcore-keep_aspect": ("patchcore", KEEP_ASPECT)}


@pytest.fixture(scope="package")
def checkpoint(tiny_root, tmp_path_factory):
    """case -> its checkpoint, each fitted on first use."""
    pytest.importorskip("onnx", reason="the deploy tests export with the `onnx` package")
    from tests.commands.test_export import (
        DETECTORS as FIT_OPTIONS,
    )  # imported here: it skips without onnxruntime
    from tests.commands.test_export import fit

    fitted: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in fitted:
            name, geometry = CASES[case]
            out = tmp_path_factory.mktemp(case)
            if not geometry:
                fitted[case] = fit(name, tiny_root, out)
            else:
                args = tiny_args(f"configs/demo/{name}.yaml", tiny_root, out, "--trainer.logger", "false")
                main_in_process(["fit", *args, *FIT_OPTIONS[name][1], *geometry])
                fitted[case] = out / "checkpoints" / "model.ckpt"
        return fitted[case]

    return get


@pytest.fixture(scope="package")
def exported(checkpoint, tmp_path_factory):
    """(case, fmt) -> the exported file, fmt one of onnx, openvino, fp16, int8 (written on first use)."""
    from mvtec_ad.commands.export import main as export_main

    files: dict[tuple[str, str], Path] = {}

    def get(case: str, fmt: str) -> Path:
        if (case, fmt) not in files:
            name = CASES[case][0]
            folder = tmp_path_factory.mktemp(f"{case}-{fmt}")
            out = folder / ("model.onnx" if fmt == "onnx" else "model.xml")
            args = [
                "--config",
                f"configs/demo/{name}.yaml",
                "--ckpt_path",
                str(checkpoint(case)),
                "--out",
                str(out),
            ]
            if fmt != "onnx":
                args += ["--format", "openvino"]
            if fmt in ("fp16", "int8"):
                args += [f"--{fmt}", "--subset_size", "6"]
            export_main(args)
            files[case, fmt] = out
        return files[case, fmt]

    return get
