"""Run folders no two runs share, and checkpoints that a full disk or a kill never leaves broken."""

import errno
import os
import subprocess
import sys
import time
from io import FileIO
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mvtec_ad.report import files
from mvtec_ad.report.files import DiskFullError
from mvtec_ad.runs import AtomicCheckpointIO, RunLogger
from tests.helpers import REPO, tiny_args


def test_two_loggers_that_count_the_same_version_claim_different_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(TensorBoardLogger, "_get_next_version", lambda self: 0)  # both saw no folder yet
    first, second = RunLogger(save_dir=tmp_path), RunLogger(save_dir=tmp_path)
    assert (first.version, second.version) == (0, 1)
    assert {p.name for p in (tmp_path / "lightning_logs").iterdir()} == {"version_0", "version_1"}


def test_two_runs_started_at_once_in_one_folder_keep_their_own_results(tiny_root, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mvtec_ad",
        "train",
        *tiny_args("configs/demo/knn.yaml", tiny_root, tmp_path),
    ]
    runs = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read().decode()[-2000:]
    versions = sorted((tmp_path / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    for version in versions:
        assert (version / "metrics.json").is_file() and (version / "checkpoints" / "model.ckpt").is_file()


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_where(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(DiskFullError, match=rf"No space left on the device to write '{path}'.*unchanged"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous one, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_atomic_writes_replace_whole_files_and_leave_nothing_else(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"a": 1})
    files.write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n' and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"
    ]
    with pytest.raises(ZeroDivisionError):
        files.write_atomically(target, lambda f: 1 / 0)  # a writer that fails halfway
    assert target.read_text() == '{\n  "a": 2\n}\n' and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"
    ]


def test_the_default_trainer_uses_both(tmp_path):
    from mvtec_ad.commands.lightning import AnomalyTrainer

    trainer = AnomalyTrainer(default_root_dir=tmp_path)
    assert isinstance(trainer.logger, RunLogger) and Path(trainer.logger.save_dir) == tmp_path
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_get_the_mode_the_umask_gives_any_new_file(tmp_path, umask_022):
    metrics = files.write_json(tmp_path / "metrics.json", {"a": 1})
    picture = files.save_png(tmp_path / "report" / "a.png", np.zeros((4, 4, 3), np.uint8))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, checkpoint)
    for path in (metrics, picture, checkpoint):
        assert path.stat().st_mode & 0o777 == 0o644, path  # mkstemp's would be 0o600


class DiskFullAfter1000Bytes(FileIO):
    """A file on a disk with 1000 bytes left: the write that would pass them fails with ENOSPC."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_disk_that_fills_inside_torch_save_is_the_one_line_error(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: DiskFullAfter1000Bytes(fd, mode))
    with pytest.raises(
        DiskFullError, match=rf"No space left on the device to write '{path}'.*{path.parent}"
    ) as e:
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(100_000)}}, path)
    assert "unexpected pos" in str(e.value.__cause__)  # torch's zip writer's RuntimeError, not an OSError
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the half-written file is gone


def test_a_later_save_or_load_removes_what_a_killed_checkpoint_write_left(tmp_path):
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, folder / "best.ckpt")
    killed = folder / ".last.ckpt.k2x_9q0a.tmp"  # what a SIGKILL during torch.save leaves: 0 bytes
    killed.touch()
    fd, writing = files.create_temporary(folder / "last.ckpt")  # a writer alive in another run
    theirs = [folder / ".last.ckpt.tmp", folder / "last.ckpt.12345678.tmp", folder / "notes.tmp"]
    for path in theirs:
        path.touch()
    old = time.time() - 2 * files.STALE_AFTER_S
    for path in [killed, writing, *theirs]:
        os.utime(path, (old, old))
    try:
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, folder / "best.ckpt")
        assert not killed.exists() and writing.exists()  # only the one no process holds
        assert all(path.exists() for path in theirs)  # and only names write_atomically gives
    finally:
        os.close(fd)
    young = folder / ".last.ckpt.abcdefgh.tmp"  # maybe just made by a writer that has not locked it yet
    young.touch()
    os.utime(writing, (old, old))
    io.load_checkpoint(folder / "best.ckpt")  # a resume or a test from this folder
    assert not writing.exists() and young.exists()
