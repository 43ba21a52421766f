"""Run folders no two runs share, and checkpoints that a full disk or a kill never leaves broken."""

import errno
import subprocess
import sys
from pathlib import Path

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
