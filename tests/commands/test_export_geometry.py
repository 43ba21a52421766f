"""Non-square, keep_aspect and tiled detectors, fitted through the CLI, forward and export alike.

Every torch detector is fitted at a non-square keep_aspect canvas; patchcore and dfr also tiled.
onnxruntime's scores and maps must equal the checkpoint's, padding must stay out of the maps,
and test runs must write the geometry into metrics.json.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mvtec_ad.commands.export import export_onnx
from mvtec_ad.data.dataset import AnomalyDataset, collate_batch
from mvtec_ad.data.samples import Sample
from mvtec_ad.data.sources.mvtec import scan_category
from tests.commands.test_export import ATOL, DETECTORS, RTOL, detector_class
from tests.helpers import main_in_process, tiny_args

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

KEEP_ASPECT = ("--model.image_size", "[48, 80]", "--model.resize", "keep_aspect", "--model.pad", "constant")
TILED = ("--model.image_size", "[64, 96]", "--model.tile_size", "48", "--model.tile_stride", "[32, 24]")
CASES = {f"{name}-keep_aspect": (name, KEEP_ASPECT) for name in DETECTORS} | {
    "patchcore-tiled": ("patchcore", TILED),
    "dfr-tiled": ("dfr", TILED),
}


def fit_and_test(name: str, geometry: tuple[str, ...], root: Path, out: Path) -> tuple[Path, dict]:
    config = f"configs/demo/{name}.yaml"
    args = tiny_args(config, root, out, "--trainer.logger", "false", *DETECTORS[name][1], *geometry)
    main_in_process(["fit", *args])
    checkpoints = {p.name: p for p in (out / "checkpoints").glob("*.ckpt")}
    checkpoint = checkpoints.get("best.ckpt") or checkpoints["model.ckpt"]
    test_args = [a for a in tiny_args(config, root, out / "test", *geometry)]
    main_in_process(["test", *test_args, "--ckpt_path", str(checkpoint)])
    metrics = json.loads(next((out / "test").rglob("metrics.json")).read_text())
    return checkpoint, metrics


@pytest.mark.parametrize("case", list(CASES))
def test_geometry_through_fit_test_and_export(case, tiny_root, tmp_path):
    name, geometry = CASES[case]
    checkpoint, metrics = fit_and_test(name, geometry, tiny_root, tmp_path / "run")
    module = detector_class(name).load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert module.geometry.size == ((48, 80) if geometry is KEEP_ASPECT else (64, 96))
    expected_geometry = (
        {"image_size": [48, 80], "resize": "keep_aspect", "pad": "constant"}
        if geometry is KEEP_ASPECT
        else {
            "image_size": [64, 96],
            "resize": "squash",
            "tile_size": 48,
            "tile_stride": [32, 24],
            "tiles": 6,
        }
    )
    assert metrics.items() >= expected_geometry.items()
    assert metrics["pixel_resolution"] == "original" and 0.0 <= metrics["pixel_auroc"] <= 1.0

    samples = scan_category(tiny_root, "washer").test
    dataset = AnomalyDataset([samples[0], samples[-1]], module.geometry)
    batch = collate_batch([dataset[0], dataset[1]])
    content = batch.content.clone()
    if geometry is KEEP_ASPECT:
        assert content.tolist() == [[48, 48], [48, 48]]  # square 64 px images on a 48 x 80 canvas
        content[1] = torch.tensor([30, 80])  # another aspect, as a caller may have
    with torch.no_grad():
        expected = module(batch.image, content)
    assert expected.map.shape == (2, 1, *module.geometry.size)
    if geometry is KEEP_ASPECT:  # the padding holds the image's lowest value, never more
        assert torch.all(expected.map[0, :, :, 48:] == expected.map[0, :, :, :48].min())
        assert torch.all(expected.map[1, :, 30:] == expected.map[1, :, :30].min())

    path = export_onnx(module, tmp_path / f"{case}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": batch.image.numpy()}
    if geometry is KEEP_ASPECT:
        assert [i.name for i in session.get_inputs()] == ["image", "content"]
        feeds["content"] = content.numpy()
    score, amap = session.run(["score", "map"], feeds)
    assert np.isfinite(score).all()
    torch.testing.assert_close(torch.from_numpy(score), expected.score, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.from_numpy(amap), expected.map, atol=ATOL, rtol=RTOL)

    if case == "patchcore-keep_aspect":  # predict on a wide image: scored on the canvas, padding cut off
        wide = tmp_path / "new" / "wide.png"
        wide.parent.mkdir()
        cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(samples[-1].path)), (120, 40)))
        config = "configs/demo/patchcore.yaml"
        main_in_process(
            ["predict", "--config", config, "--ckpt_path", str(checkpoint), "--data.path", str(wide),
             "--trainer.default_root_dir", str(tmp_path / "predict"), "--trainer.logger", "false"]
        )  # fmt: skip
        row = json.loads((tmp_path / "predict" / "predictions.json").read_text())[0]
        heatmap = cv2.imread(str(tmp_path / "predict" / row["heatmap"]))
        assert heatmap.shape[:2] == (27, 80)  # 40 x 120 scaled by 80 / 120 onto the 48 x 80 canvas
        placed = AnomalyDataset([Sample(wide, -1, "unknown")], module.geometry)[0]
        with torch.no_grad():
            score = module(placed["image"][None], torch.tensor([placed["content"]])).score
        assert row["score"] == pytest.approx(float(score), rel=1e-5)
