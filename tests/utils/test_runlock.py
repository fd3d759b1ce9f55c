"""One run per output folder: a live owner blocks at once, a dead one's lock is taken over (issue 11)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from clipimo.errors import ClipimoError
from clipimo.utils import log
from clipimo.utils.lock import LOCK_NAME, folder_lock


def test_second_holder_fails_at_once_and_the_lock_is_released(tmp_path):
    with folder_lock(tmp_path / "out") as path:
        owner = json.loads(path.read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
        with pytest.raises(ClipimoError, match=rf"out is in use by another clipimo run \(process {os.getpid()} on "):
            with folder_lock(tmp_path / "out"):
                pass
        assert path.is_file()  # the failed attempt did not remove the owner's lock
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    log.configure()  # as clipimo.cli.app does: messages to this test's stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with folder_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"taking over a stale lock of process {dead.pid}" in capsys.readouterr().err


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": "x"}))
    with pytest.raises(ClipimoError, match="process 1 on elsewhere.example, since x"):
        with folder_lock(tmp_path):
            pass
