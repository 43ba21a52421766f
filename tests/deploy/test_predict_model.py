"""`predict --model_path`: an exported model's predict writes what the checkpoint's predict writes.

(A CLI test kept beside the Inferencer's: it shares their fitted checkpoints and exports.)

patchcore on a keep_aspect 48 x 80 canvas (tests/deploy/conftest.py) predicts a folder of test images
of the tiny set plus images of other sizes, once from its checkpoint (LightningCLI) and once from
each exported file (mvtec_ad.deploy.Inferencer); tables, PNG names, masks and the page must agree.
"""

import importlib.util
import json

import cv2
import pytest

from mvtec_ad.data.sources.mvtec import scan_category
from tests.helpers import main_in_process

CASE = "patchcore-keep_aspect"
CONFIG = "configs/demo/patchcore.yaml"


@pytest.fixture(scope="module")
def images(tiny_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    samples = scan_category(tiny_root, "washer").test
    for sample in (samples[0], samples[-1], samples[-3]):
        (folder / f"{sample.defect}_{sample.path.name}").write_bytes(sample.path.read_bytes())
    source = cv2.imread(str(samples[-1].path))
    cv2.imwrite(str(folder / "wide.png"), cv2.resize(source, (120, 40)))
    cv2.imwrite(str(folder / "tall_gray.png"), cv2.cvtColor(cv2.resize(source, (30, 90)), cv2.COLOR_BGR2GRAY))
    return folder


@pytest.fixture(scope="module")
def from_checkpoint(checkpoint, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-ckpt")
    main_in_process(
        ["predict", "--config", CONFIG, "--ckpt_path", str(checkpoint(CASE)), "--data.path", str(images),
         "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    return out


def rows_of(folder):
    return json.loads((folder / "predictions.json").read_text())


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_predict_from_an_exported_model_equals_predict_from_the_checkpoint(
    fmt, exported, from_checkpoint, images, tmp_path
):
    if importlib.util.find_spec("onnxruntime" if fmt == "onnx" else "openvino") is None:
        pytest.skip(f"the {fmt} runtime is not installed (pip install -e '.[deploy]')")
    model = exported(CASE, fmt)
    main_in_process(
        ["predict", "--model_path", str(model), "--data.path", str(images),
         "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    (run,) = (tmp_path / "lightning_logs").iterdir()  # a version folder, as a checkpoint's predict takes
    assert run.name == "version_0"
    expected, got = rows_of(from_checkpoint), rows_of(run)
    assert [r["path"] for r in got] == [r["path"] for r in expected] and len(got) == 5
    assert list(got[0]) == list(expected[0])  # the same columns, in order
    assert (run / "predictions.csv").read_text().splitlines()[0] == (
        (from_checkpoint / "predictions.csv").read_text().splitlines()[0]
    )
    for a, b in zip(got, expected, strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)
        assert a["label"] == b["label"] and a["threshold"] == b["threshold"]
        assert a["pixel_threshold"] == b["pixel_threshold"] is not None
        assert a["anomalous_share"] == pytest.approx(b["anomalous_share"], abs=0.01)
        for key in ("heatmap", "overlay", "mask"):
            assert a[key] == b[key]
            mine, theirs = (cv2.imread(str(f / a[key]), cv2.IMREAD_UNCHANGED) for f in (run, from_checkpoint))
            assert mine.shape == theirs.shape  # the model's input size, padding cut off
            if key == "mask":
                assert (mine != theirs).mean() < 0.01
    wide = next(r for r in got if r["path"].endswith("wide.png"))
    assert cv2.imread(str(run / wide["heatmap"])).shape[:2] == (27, 80)
    page = (run / "report" / "index.html").read_text()
    assert f"{model} (exported model)" in page and all(
        f"full/{n}" in page for n in ("wide.png", "tall_gray.png")
    )
    assert (run / "plots" / "predict_histogram.png").is_file()
    assert not list((run / "report").glob(".staging-*"))


def test_model_path_errors_exit_2_in_one_line(checkpoint, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(["predict", "--model_path", str(tmp_path / "gone.onnx"), "--data.path", str(images)])
    assert exit_info.value.code == 2
    assert f"Model file '{tmp_path / 'gone.onnx'}' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(
            ["predict", "--model_path", "m.onnx", "--ckpt_path", "c.ckpt", "--data.path", str(images)]
        )
    assert exit_info.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(["export", "--config", CONFIG, "--ckpt_path", str(checkpoint(CASE)), "--int8"])
    assert exit_info.value.code == 2 and "--int8 is for --format openvino" in capsys.readouterr().err
