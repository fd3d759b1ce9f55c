"""Issue 22, item 2: two trainings into one folder cannot both run (the folder lock of `clipimo run`)."""
from __future__ import annotations

import json
import os
import socket

import pytest
from test_train_utils import tiny_config, write_csv

from clipimo.errors import ClipimoError
from clipimo.train import train_supervised

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_training_into_a_folder_another_live_training_holds_is_refused(tmp_path):
    data = write_csv(tmp_path / "data", n=6, n_classes=2)
    out = tmp_path / "run"
    out.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}  # a live process
    (out / ".clipimo.lock").write_text(json.dumps(holder))
    with pytest.raises(ClipimoError, match=f"{out} is in use by another clipimo run .process {os.getpid()}"):
        train_supervised(tiny_config("supervised", data, out, epochs=1, batch_size=4))
    assert not (out / "adapter.safetensors").exists() and not (out / "checkpoints").exists()
    (out / ".clipimo.lock").unlink()
    result = train_supervised(tiny_config("supervised", data, out, epochs=1, batch_size=4))
    assert result.status == "finished" and (out / "adapter.safetensors").is_file()
    assert not (out / ".clipimo.lock").exists()  # released at the end


def test_a_training_into_a_folder_of_other_files_is_refused_and_its_own_folder_resumed(tmp_path):
    data = write_csv(tmp_path / "data", n=6, n_classes=2)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: settings\n")
    with pytest.raises(ClipimoError, match=f"{out} is not a clipimo training folder .* already holds config.yaml"):
        train_supervised(tiny_config("supervised", data, out, epochs=1, batch_size=4))
    assert (out / "config.yaml").read_text() == "my: settings\n"
    run = tmp_path / "run"
    part = train_supervised(tiny_config("supervised", data, run, epochs=2, batch_size=4, max_steps=1))
    assert part.status == "stopped"
    again = train_supervised(tiny_config("supervised", data, run, epochs=2, batch_size=4))  # its own folder
    assert again.status == "finished" and again.step == again.total_steps == 2 and part.step == 1
