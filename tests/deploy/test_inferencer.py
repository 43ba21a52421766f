"""mvtec_ad.deploy.Inferencer: exported files score as their checkpoint, at any image size, and refuse foreign files.

Every exportable detector is fitted on the tiny set (tests/deploy/conftest.py), exported to ONNX and
OpenVINO FP32 where the runtime is installed, and its Inferencer's scores, labels and maps are held
against the checkpoint's module, run on the images as the test loop places them.
"""

import importlib.util
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from mvtec_ad.data.dataset import AnomalyDataset
from mvtec_ad.data.samples import Sample
from mvtec_ad.data.sources.mvtec import scan_category
from mvtec_ad.deploy import Inferencer
from mvtec_ad.errors import CheckpointError, DataError
from mvtec_ad.models.components.pre_processor import PreProcessor
from tests.deploy.conftest import CASES
from tests.helpers import REPO

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
RTOL, ATOL = 1e-4, 1e-4  # the target: FP32 runtimes within 1e-4 (relative) of the checkpoint


def need(fmt: str) -> None:
    """Skip, saying why, where the runtime of `fmt` (onnx, openvino, fp16, int8) is not installed."""
    package = RUNTIMES.get(fmt, "openvino")
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install -e '.[deploy]')")
    if fmt == "int8" and importlib.util.find_spec("nncf") is None:
        pytest.skip("nncf is not installed (pip install -e '.[deploy]')")


def module_of(checkpoint):
    from mvtec_ad.deploy.runtimes import CheckpointRuntime

    return CheckpointRuntime(checkpoint).module


def sample_paths(tiny_root) -> list[str]:
    samples = scan_category(tiny_root, "washer").test
    return [str(s.path) for s in (samples[0], samples[3], samples[-4], samples[-1])]


def expected(module, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint module's scores and canvas maps of `paths`, placed as the test loop places them."""
    dataset = AnomalyDataset([Sample(p, -1, "unknown") for p in paths], module.geometry)
    items = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        out = module(torch.stack([i["image"] for i in items]), torch.tensor([i["content"] for i in items]))
    return out.score, out.map


# patchcore (squash and keep_aspect) in every run; the other detectors' fits take a minute on 2 cores: -m slow
PARITY_CASES = [
    case if case.startswith("patchcore") else pytest.param(case, marks=pytest.mark.slow) for case in CASES
]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("case", PARITY_CASES)
def test_exported_models_score_as_their_checkpoint(case, fmt, checkpoint, exported, tiny_root):
    need(fmt)
    path = exported(case, fmt)
    module = module_of(checkpoint(case))
    paths = sample_paths(tiny_root)
    score, canvas_map = expected(module, paths)
    inferencer = Inferencer(path, threads=1)
    assert inferencer.geometry == module.geometry and inferencer.detector == module.detector_name
    assert inferencer.threshold == float(module.threshold) and math.isfinite(inferencer.threshold)
    assert inferencer.pixel_threshold == float(module.pixel_threshold)

    results = inferencer(paths)
    scores = np.array([r.score for r in results])
    np.testing.assert_allclose(scores, score.numpy(), rtol=RTOL, atol=ATOL * float(score.abs().max()))
    assert [r.label for r in results] == [int(s >= float(module.threshold)) for s in score.tolist()]
    for i, result in enumerate(results):
        original = cv2.imread(paths[i]).shape[:2]
        restored = module.model.pre_processor.restore(canvas_map[i : i + 1], original)[0, 0].numpy()
        assert result.map.shape == original
        np.testing.assert_allclose(result.map, restored, rtol=RTOL, atol=ATOL * float(np.abs(restored).max()))
        assert result.mask is not None and (result.mask == (result.map >= inferencer.pixel_threshold)).all()

    # the checkpoint through the same Inferencer gives the same numbers
    from_checkpoint = Inferencer(checkpoint(case))(paths)
    np.testing.assert_allclose([r.score for r in from_checkpoint], score.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_images_of_other_sizes_and_aspects_get_maps_at_their_own_size(
    fmt, checkpoint, exported, tiny_root, tmp_path
):
    need(fmt)
    case = "patchcore-keep_aspect"  # a 48 x 80 canvas, aspect kept, constant padding
    module = module_of(checkpoint(case))
    inferencer = Inferencer(exported(case, fmt))
    source = cv2.imread(str(scan_category(tiny_root, "washer").test[-1].path))
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), cv2.resize(source, (120, 40)))  # 40 x 120: content 27 x 80
    tall_rgb = cv2.cvtColor(cv2.resize(source, (30, 90)), cv2.COLOR_BGR2RGB)  # an RGB array, 90 x 30
    gray16 = cv2.cvtColor(tall_rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257  # 16-bit gray array
    results = inferencer([wide, tall_rgb, gray16])
    assert [r.map.shape for r in results] == [(40, 120), (90, 30), (90, 30)]
    assert [r.mask.shape for r in results] == [(40, 120), (90, 30), (90, 30)]

    for result, image in zip(
        results[:2], [cv2.cvtColor(cv2.imread(str(wide)), cv2.COLOR_BGR2RGB), tall_rgb], strict=True
    ):
        canvas, content = module.geometry.place_image(image)
        assert content in ((27, 80), (48, 16))
        with torch.no_grad():
            out = module(
                torch.from_numpy(canvas.transpose(2, 0, 1).copy()).float()[None] / 255.0,
                torch.tensor([content]),
            )
        assert result.score == pytest.approx(float(out.score), rel=RTOL)
        expected_map = module.model.pre_processor.restore(out.map, image.shape[:2])[0, 0].numpy()
        np.testing.assert_allclose(
            result.map, expected_map, rtol=RTOL, atol=ATOL * float(np.abs(expected_map).max())
        )
    # the same pixels as a file, as an RGB array and as a one-image call agree
    single = inferencer(wide)
    assert single.score == pytest.approx(results[0].score, rel=1e-6)
    with pytest.raises(DataError, match="must be \\[h, w\\] gray"):
        inferencer(np.zeros((4, 4, 2), np.uint8))


def test_restore_map_is_the_pre_processors_restore():
    """One geometry: the numpy map restore of the Inferencer equals the torch one of the model (submit)."""
    generator = torch.Generator().manual_seed(0)
    for options in ({"image_size": [48, 80], "resize": "keep_aspect"}, {"image_size": 64}):
        pre = PreProcessor(**options)
        amap = torch.rand(1, 1, *pre.geometry.size, generator=generator) * 50
        for size in ((40, 120), (300, 97), (20, 30), (64, 64), (7, 200)):
            torch_map = pre.restore(amap, size)[0, 0].numpy()
            np.testing.assert_allclose(
                pre.geometry.restore_map(amap[0, 0].numpy(), *size), torch_map, atol=5e-4
            )


def foreign_onnx(path):
    """An ONNX model another tool might have written: image in, score and map out, no mvtec_ad metadata."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["score"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("ReduceMean", ["image"], ["map"], axes=[1], keepdims=1)],
        "other",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 64, 64])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("map", TensorProto.FLOAT, ["B", 1, 64, 64])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def assert_refused(path, match: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        Inferencer(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "python -m mvtec_ad export" in message
    assert match in message


def test_files_without_metadata_are_refused_in_one_line(exported, tmp_path):
    need("onnx")
    other = foreign_onnx(tmp_path / "other.onnx")
    assert_refused(other, "holds no metadata")

    import onnx

    stripped = onnx.load(str(exported("knn", "onnx")))  # ours, with a key removed (an older export)
    kept = [p for p in stripped.metadata_props if p.key != "mvtec_ad_version"]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(kept)
    onnx.save(stripped, str(tmp_path / "old.onnx"))
    assert_refused(tmp_path / "old.onnx", "older mvtec_ad and lacks mvtec_ad_version")

    if importlib.util.find_spec("openvino") is not None:  # the foreign graph as OpenVINO IR
        import openvino as ov

        ov.save_model(ov.convert_model(str(other)), str(tmp_path / "other.xml"))
        assert_refused(tmp_path / "other.xml", "holds no metadata")

    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    with pytest.raises(CheckpointError, match="is not a model file the Inferencer reads"):
        Inferencer(notes)
    with pytest.raises(CheckpointError, match="does not exist"):
        Inferencer(tmp_path / "gone.onnx")


LIGHT_RUN = """
import sys, time
start = time.perf_counter()
from mvtec_ad.deploy import Inferencer
result = Inferencer(sys.argv[1])(sys.argv[2])
print(result.score, time.perf_counter() - start, [m for m in ("lightning", "torch") if m in sys.modules])
"""


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_exported_model_runs_without_lightning_or_torch(fmt, exported, tiny_root):
    need(fmt)
    path = exported("patchcore", fmt)
    image = sample_paths(tiny_root)[0]
    run = subprocess.run(
        [sys.executable, "-c", LIGHT_RUN, str(path), image],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    score, seconds, imported = run.stdout.split(maxsplit=2)
    assert imported.strip() == "[]", f"the Inferencer of {fmt} imported {imported}"
    assert math.isfinite(float(score))
    print(f"{fmt}: cold start to first score {float(seconds):.2f} s")


def test_fp16_and_int8_keep_metadata_and_quantise_the_backbone_only(checkpoint, exported, tiny_root):
    need("int8")
    import openvino as ov

    module = module_of(checkpoint("patchcore"))
    paths = sample_paths(tiny_root)
    score, _ = expected(module, paths)
    fp16 = Inferencer(exported("patchcore", "fp16"))
    assert fp16.metadata["precision"] == "fp16" and fp16.threshold == float(module.threshold)
    # weights in half precision: scores move by about float16's step, far less than the score spread
    np.testing.assert_allclose([r.score for r in fp16(paths)], score.numpy(), rtol=5e-3)

    path = exported("patchcore", "int8")
    int8 = Inferencer(path)
    assert int8.metadata["precision"] == "int8" and int8.metadata["calibration_images"] == "6"
    assert int8.metadata["quantised"].startswith("the pretrained feature extractor")
    model = ov.Core().read_model(str(path))
    quantised = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    consumers = {
        t.get_node().get_friendly_name() for op in quantised for t in op.output(0).get_target_inputs()
    }
    assert quantised and all(name.startswith("/detector/extractor/") for name in consumers), sorted(
        consumers
    )[:5]
    # the first convolution (the stem, which sees the image) and the last one (the deepest features)
    # stay FP32: no FakeQuantize feeds them, neither their input nor their weights
    convolutions = [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
        and op.get_friendly_name().startswith("/detector/extractor/")
    ]
    for kept in (convolutions[0], convolutions[-1]):
        sources = {i.get_source_output().get_node().get_type_name() for i in kept.inputs()}
        assert "FakeQuantize" not in sources, kept.get_friendly_name()
    assert "conv_stem" in convolutions[0].get_friendly_name()
    assert "but its first and last convolution" in int8.metadata["quantised"]
    scores = np.array([r.score for r in int8(paths)])
    assert np.isfinite(scores).all()
    assert (
        np.corrcoef(scores, score.numpy())[0, 1] > 0.8
    )  # the ranking survives 8 bits on a 1-image-epoch model
    assert json.loads(int8.metadata["image_size"]) == 64


def test_int8_pixel_ae_keeps_its_residual_and_head_fp32(exported):
    """Without a pretrained extractor the encoder and decoder are quantised, but not their first (and last)
    convolution nor what follows the decoder: image - reconstruction, its square and mean (nodes at /detector/'s top
    level) and the head's blur (the output `map`); quantising those cost 0.02 image AUROC on magnetic_tile."""
    need("int8")
    import openvino as ov

    model = ov.Core().read_model(str(exported("pixel_ae", "int8")))
    quantised = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    consumers = {
        t.get_node().get_friendly_name() for op in quantised for t in op.output(0).get_target_inputs()
    }
    assert quantised and all(
        name.startswith(("/detector/encoder/", "/detector/decoder/")) for name in consumers
    ), sorted(consumers)
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    assert first.get_friendly_name().startswith("/detector/encoder/")
    assert "FakeQuantize" not in {i.get_source_output().get_node().get_type_name() for i in first.inputs()}
    assert "FakeQuantize" not in {
        i.get_source_output().get_node().get_type_name()
        for op in model.get_ordered_ops()
        if op.get_friendly_name() in ("/detector/Sub", "map")
        for i in op.inputs()
    }
