"""Damaged or unexpected files give one error naming the file, never a traceback or a stuck folder (issue 11)."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from clipimo.errors import ClipimoError
from clipimo.model.adapter import read_adapter_file
from clipimo.train.checkpoints import latest_checkpoint
from clipimo.utils import fileio as _io
from clipimo.utils import lock as runlock
from clipimo.utils.lock import LOCK_NAME, folder_lock


def _safetensors_with_meta(path, key: str, raw: str) -> None:
    save_file({"w": torch.zeros(2)}, str(path), metadata={key: raw})


@pytest.mark.parametrize("raw, message", [("{not json", "is not valid JSON"),
                                          ("[1]", "must hold a JSON object, got list")])
def test_adapter_metadata_that_is_not_a_json_object_names_the_file(tmp_path, raw, message):
    path = tmp_path / "bad.safetensors"
    _safetensors_with_meta(path, "clipimo", raw)
    with pytest.raises(ClipimoError, match=rf"adapter file .*bad\.safetensors: its 'clipimo' metadata {message}"):
        read_adapter_file(path)


def test_a_folder_where_a_file_is_expected_is_called_a_folder(tmp_path):
    folder = tmp_path / "adapter.safetensors"
    folder.mkdir()
    with pytest.raises(ClipimoError, match=r"adapter file .*adapter\.safetensors is a folder; expected a file"):
        read_adapter_file(folder)
    with pytest.raises(ClipimoError, match=r"config file .* is a folder; expected a file"):
        _io.read_yaml_mapping(folder)


@pytest.mark.parametrize("text", ["[1]", '"run"', "3"])
def test_json_files_must_hold_an_object(tmp_path, text):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(ClipimoError, match=r"run record file .*run\.json must hold a JSON object"):
        _io.read_json(path, "run record")


def test_checkpoint_with_damaged_metadata_falls_back_to_the_previous_one(tmp_path, caplog, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    older, newer = folder / "step_00000001.safetensors", folder / "step_00000002.safetensors"
    from clipimo.train.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    _io.write_safetensors(older, {"w": torch.zeros(2)}, "clipimo_checkpoint",
                          {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION})
    for raw in ("{bad", "[1]"):
        _safetensors_with_meta(newer, "clipimo_checkpoint", raw)
        assert latest_checkpoint(tmp_path) == older
        said = capsys.readouterr().err + caplog.text
        assert "step_00000002.safetensors: its 'clipimo_checkpoint' metadata" in said
        assert "falling back to step_00000001.safetensors" in said


def test_a_lock_that_cannot_be_written_is_removed_and_named(tmp_path, monkeypatch):
    def full_disk(obj, fh):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlock.json, "dump", full_disk)
    with pytest.raises(ClipimoError, match=rf"cannot write the lock file .*{LOCK_NAME}: No space left on device"):
        with folder_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_NAME).exists()  # a rerun is not blocked by a half-written lock
    monkeypatch.undo()
    with folder_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_lock_file_holding_no_object_is_an_unknown_owner(tmp_path):
    (tmp_path / LOCK_NAME).write_text("[1]")
    with pytest.raises(ClipimoError, match=r"in use by another clipimo run \(an unknown process\)"):
        with folder_lock(tmp_path):
            pass


def test_an_output_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(ClipimoError, match=r"output folder .*out is a file; expected a folder"):
        with folder_lock(tmp_path / "out"):
            pass
