"""Why a checkpoint or weights file cannot be read: not a PyTorch file (or damaged), or objects that could run code.

Random bytes, text, a web page or a cut-short file are simply not a torch file: the message says
so and what to do. Only a real torch file whose pickle holds objects beyond tensors and plain values
is refused for the code loading it could run (issue 29, item 10).
"""

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from mvtec_ad.checkpoints import NOT_TORCH, RUNS_CODE, is_torch_file, read_checkpoint, unreadable_reason
from mvtec_ad.errors import BackboneError, CheckpointError
from mvtec_ad.features.weights import read_state_dict

WEIGHTS_NOT_TORCH = (
    f"cannot be read: {NOT_TORCH}. Download it again, or point --model.weights at the right "
    f".pth/.safetensors file."
)


class Gadget:
    """An object a pickle can hold: rebuilding it would run os.system (never done: weights only)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def torch_file(path: Path, content, legacy: bool = False) -> Path:
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def not_torch_files(folder: Path) -> dict[str, Path]:
    """Files that are no torch file at all, or a torch file cut short or corrupted."""
    folder.mkdir(exist_ok=True)
    state = {"conv.weight": torch.arange(600.0).view(6, 100)}
    zipped = torch_file(folder / "state.pth", state).read_bytes()
    legacy = torch_file(folder / "legacy_state.pth", state, legacy=True).read_bytes()
    contents = {
        "empty": b"",
        "random": bytes(range(256)) * 40,
        "random_from_a_global_opcode": b"c" + bytes(range(256)) * 4,  # 'c' is pickle's GLOBAL
        "text": b"hello world\n" * 10,
        "web_page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "git_lfs_pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 123\n",
        "plain_python_pickle": pickle.dumps({"conv.weight": [1.0, 2.0]}),
        "truncated_zip": zipped[: len(zipped) // 2],
        "truncated_legacy": legacy[: len(legacy) // 2],
        "fake_zip_header": b"PK\x03\x04 not really a zip",
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(data)
    # a whole zip archive whose pickle was overwritten with random bytes
    corrupted = folder / "corrupted_pickle.pth"
    with zipfile.ZipFile(folder / "state.pth") as source, zipfile.ZipFile(corrupted, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, bytes(range(256)) * 4 if item.filename.endswith("data.pkl") else data)
    paths["corrupted_pickle"] = corrupted
    return paths


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain Python pickle
def test_a_weights_file_of_random_bytes_is_not_a_torch_file_not_code(tmp_path):
    for name, path in not_torch_files(tmp_path / "bad").items():
        with pytest.raises(BackboneError) as error:
            read_state_dict(path)
        message = str(error.value)
        assert message == f"Weights file '{path}' {WEIGHTS_NOT_TORCH}", name
        assert "could run code" not in message and "weights_only" not in message, name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain Python pickle
def test_a_checkpoint_of_random_bytes_or_damaged_is_not_a_torch_file_not_code(tmp_path):
    for name, path in not_torch_files(tmp_path / "bad").items():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        message = str(error.value)
        assert message.startswith(f"Checkpoint '{path}' cannot be read: {NOT_TORCH}"), name
        assert message.endswith(
            "Copy it again if it was cut short, or pass the right file with --ckpt_path."
        ), name
        assert "could run code" not in message and "\n" not in message, name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_torch_file_holding_objects_is_refused_for_the_code_it_could_run(legacy, tmp_path):
    marker = tmp_path / "pwned"
    path = torch_file(
        tmp_path / "objects.pth", {"conv.weight": torch.zeros(2), "extra": Gadget(marker)}, legacy
    )
    assert is_torch_file(path)
    with pytest.raises(BackboneError) as error:
        read_state_dict(path)
    assert str(error.value) == (
        f"Weights file '{path}' cannot be read: {RUNS_CODE}. Pass a plain state dict "
        f"(torch.save(model.state_dict(), path)) or a .safetensors file with --model.weights."
    )
    if not legacy:  # checkpoints are zip archives: a legacy file is refused before torch.load
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        assert str(error.value) == (
            f"Checkpoint '{path}' cannot be read: {RUNS_CODE}. Checkpoints mvtec_ad writes hold only tensors "
            f"and plain values: pass one with --ckpt_path."
        )
    assert not marker.exists()


def test_plain_torch_files_of_both_formats_still_load(tmp_path):
    state = {"conv.weight": torch.ones(2, 3)}
    for legacy in (False, True):
        path = torch_file(tmp_path / f"state_{legacy}.pth", state, legacy)
        assert is_torch_file(path) and torch.equal(read_state_dict(path)["conv.weight"], state["conv.weight"])


def test_the_reason_from_the_error_alone_when_the_file_cannot_be_looked_at():
    damaged = [
        EOFError(),
        pickle.UnpicklingError("Weights only load failed. ... weights_only ... Unsupported operand 0"),
        RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"),
        RuntimeError("Invalid magic number; corrupt file?"),
    ]
    for error in damaged:
        assert unreadable_reason(error) == NOT_TORCH, error
    objects = pickle.UnpicklingError(
        "Weights only load failed. ... Unsupported global: GLOBAL mymodule.Gadget was not an allowed global"
    )
    assert unreadable_reason(objects) == RUNS_CODE
    assert (
        unreadable_reason(PermissionError(13, "Permission denied"))
        == "PermissionError: [Errno 13] Permission denied"
    )
    assert is_torch_file("/nonexistent/weights.pth") is None
