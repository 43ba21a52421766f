"""A test run's pictures through the CLI: charts and chosen overlays as PNGs and TensorBoard images."""

import json

import cv2

from mvtec_ad.evaluation.selection import GROUPS
from mvtec_ad.report.charts import DPI, FIGURE_SIZE
from mvtec_ad.report.overlays import MIN_PANEL_SIZE
from tests.helpers import TEST_IMAGE_SIZE, cli, events, tiny_args


def test_knn_train_writes_charts_and_overlays_to_disk_and_tensorboard(tiny_root, tmp_path):
    cli("train", *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path, "--model.num_overlays", "2"))
    (run_dir,) = tmp_path.glob("lightning_logs/version_*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_test"] == 12 and metrics["threshold"] is not None

    chart_shape = (int(FIGURE_SIZE[1] * DPI), int(FIGURE_SIZE[0] * DPI), 3)
    for name in ("roc", "pro", "histogram", "confusion"):
        chart = cv2.imread(str(run_dir / "plots" / f"{name}.png"))
        assert chart is not None and chart.shape == chart_shape, name
        assert chart.std() > 10, name  # something is drawn

    # 4 good and 8 defective test images, 2 per group
    overlays = sorted(p.name for p in (run_dir / "overlays").iterdir())
    assert len(overlays) == 6
    for group in GROUPS:
        names = [n for n in overlays if n.startswith(f"{group}_")]
        assert [n.split("_")[2] for n in names] == ["00", "01"], group
        assert all(("_good_" in n) == (group == "worst_normal") for n in names), names
    shown = TEST_IMAGE_SIZE * -(-MIN_PANEL_SIZE // TEST_IMAGE_SIZE)  # small images are enlarged
    panel = cv2.imread(str(run_dir / "overlays" / overlays[0]))
    assert panel.shape[1] == 4 * shown and panel.shape[0] > shown  # image | heatmap | predicted | truth

    images = set(events(run_dir).Tags()["images"])
    assert {"test/roc", "test/pro", "test/histogram", "test/confusion"} <= images
    assert {f"test_overlays/{g}_{r:02d}" for g in GROUPS for r in (0, 1)} <= images


def test_two_process_test_run_writes_the_pictures_once(tiny_root, tmp_path):
    ddp = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    extra = ("--data.eval_batch_size", "4", "--model.num_overlays", "1", *ddp)
    cli("train", *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path, *extra))
    (run_dir,) = tmp_path.glob("lightning_logs/version_*")  # rank 0 alone writes, into one version
    assert json.loads((run_dir / "metrics.json").read_text())["n_test"] == 12
    assert {p.name for p in (run_dir / "plots").iterdir()} == {
        "roc.png",
        "pro.png",
        "histogram.png",
        "confusion.png",
    }
    # rank 0 picks among its own images: one per group
    names = [p.name for p in (run_dir / "overlays").iterdir()]
    assert sorted(n[: n.index("_00_")] for n in names) == sorted(GROUPS)
    # the report page holds every test image once, each process having drawn its own
    page = (run_dir / "report" / "index.html").read_text()
    assert page.count('<figure class="card"') == 12
    assert len(list((run_dir / "report" / "thumbs").iterdir())) == 12
    assert len(list((run_dir / "report" / "full").glob("*_truth.jpg"))) == 12
    assert not list((run_dir / "report").glob(".staging-*"))  # staging removed on both processes
