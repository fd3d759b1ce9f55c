"""Training safety (issue 11): resume checks the data, tolerates a cut-off metrics line, falls back
from a damaged checkpoint, checkpoints on SIGTERM, and reports unreadable images in workers plainly."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_images
from test_train_utils import tiny_config, write_csv
from torch.utils.data import DataLoader

import clipimo
from clipimo.cli.app import main
from clipimo.errors import ClipimoError
from clipimo.train import SupervisedTrainer, read_metrics, train_supervised
from clipimo.train.checkpoints import latest_checkpoint
from clipimo.train.data import ImageDataset
from clipimo.utils import log

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRC = str(Path(clipimo.__file__).parent.parent)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("loop"), n=24, n_classes=3)


def _stopped_run(data, out, **kw):
    result = train_supervised(tiny_config("supervised", data, out, max_steps=2, checkpoint_every=1, **kw))
    assert result.status == "stopped" and result.step == 2
    return out


def test_resume_refuses_other_classes_and_other_images(data, tmp_path):
    out = _stopped_run(data, tmp_path / "run")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(data.read_text().replace(",c2\n", ",zebra\n"))
    with pytest.raises(ClipimoError, match=r"cannot resume from .*step_00000002.* trained on classes \[c0, c1, c2\], "
                                           r"--data .*renamed\.csv has \[c0, c1, zebra\]"):
        SupervisedTrainer(tiny_config("supervised", renamed, out, max_steps=3)).run()
    # same classes and image count, another (path, label) list: formerly resumed silently
    lines = data.read_text().splitlines()
    swapped = tmp_path / "swapped.csv"
    first, second = lines[1].split(","), lines[2].split(",")
    relabelled = [lines[0], f"{first[0]},{second[1]}", f"{second[0]},{first[1]}", *lines[3:]]
    swapped.write_text("\n".join(relabelled) + "\n")
    with pytest.raises(ClipimoError, match=r"the \(path, label\) list of --data .*swapped\.csv differs from the one it "
                                           r"was trained on \(24 images then, 24 now\)"):
        SupervisedTrainer(tiny_config("supervised", swapped, out, max_steps=3)).run()


def test_partial_last_metrics_line_and_damaged_latest_checkpoint(data, tmp_path, capsys):
    log.configure()  # as clipimo.cli.app does: messages to this test's stderr
    out = _stopped_run(data, tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # cut off by a crash or a full disk
    latest = out / "checkpoints" / "step_00000002.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # damaged
    assert latest_checkpoint(out).name == "step_00000001.safetensors"
    result = SupervisedTrainer(tiny_config("supervised", data, out, max_steps=3)).run()
    err = capsys.readouterr().err
    assert "step_00000002.safetensors is not a readable safetensors file" in err
    assert "falling back to step_00000001.safetensors" in err
    assert "metrics.jsonl:3: dropping a partial last line" in err
    assert result.step == 3
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo\n{"step": 5}\n')
    with pytest.raises(ClipimoError, match=r"metrics\.jsonl:4: not a JSON object"):
        read_metrics(out / "metrics.jsonl")


def test_sigterm_writes_a_checkpoint_then_exits(data, tmp_path, monkeypatch, capsys):
    from clipimo.errors import Terminated

    step = SupervisedTrainer.train_step

    def step_then_sigterm(self, batch, epoch, values):
        out = step(self, batch, epoch, values)
        if self.step == 0:  # the loop counts the step after train_step returns
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SupervisedTrainer, "train_step", step_then_sigterm)
    cfg = tiny_config("supervised", data, tmp_path / "api")
    with pytest.raises(Terminated, match="terminated .*at step 1/3; checkpoint written"):
        SupervisedTrainer(cfg).run()
    assert latest_checkpoint(tmp_path / "api").name == "step_00000001.safetensors"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    out = tmp_path / "cli"
    rc = main(["train", "supervised", "--data", str(data), "--out", str(out), "--model", "clipimo-tiny-vit",
               "--device", "cpu", "--batch-size", "8", "--no-progress"])
    assert rc == 143 and "rerun the same command to resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "step_00000001.safetensors").is_file()


def test_worker_errors_name_the_image_not_a_traceback(tmp_path):
    from clipimo.train.data import ImageReadError

    items = make_images(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    items[1] = items[1]._replace(path=str(bad))
    loader = DataLoader(ImageDataset(items, lambda im: im), batch_sampler=[[(1, 7)]], num_workers=1,
                        collate_fn=lambda b: b)
    with pytest.raises(ImageReadError) as err:
        next(iter(loader))
    text = str(err.value)
    assert text.startswith(f"cannot read training image {bad}: ") and "Traceback" not in text and "\n" not in text


def test_piped_train_keeps_stdout_for_results_and_quiet_drops_info(data, tmp_path, capsys):
    """`clipimo train` through pipes (as in `clipimo train ... > out.txt 2> log.txt`): messages and
    the banner on stderr, no progress bar there, nothing but a result path on stdout; -q keeps the
    warnings and drops the info lines; --progress forces the bar off a terminal."""
    out = tmp_path / "piped"
    flags = ["--data", str(data), "--model", "clipimo-tiny-vit", "--device", "cpu", "--batch-size", "12",
             "--checkpoint-every", "0"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipimo", "train", "supervised", *flags, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    adapter = out / "adapter.safetensors"
    assert adapter.is_file()
    assert proc.stdout == f"{adapter}\n"  # the exported adapter is the only result
    assert f"wrote {adapter} (supervised, 2 steps)" in proc.stderr
    assert proc.stderr.count("RANDOM-INIT BACKBONE") == 1
    assert "%|" not in proc.stderr and "step/s" not in proc.stderr  # no bar in a pipe
    # but one log line per logging window, with the loss metrics.jsonl holds and the time left
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    line = re.search(r"^train supervised: step 2/2: epoch 0, loss (\S+), .* images/s \(elapsed .*, ETA 0s\)$",
                     proc.stderr, re.MULTILINE)
    assert line and line.group(1).rstrip(",") == f"{last['loss']:.4g}"

    # -q: the same run resumed at its last step writes the adapter again, silently but for warnings
    assert main(["-q", "train", "supervised", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "resuming from" not in printed.err and "wrote" not in printed.err
    assert printed.err.count("WARNING: RANDOM-INIT BACKBONE") == 1
    assert printed.out == f"{adapter}\n"
    # without -q the same command says what it did (the control for the assertions above)
    assert main(["train", "supervised", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"resuming from {out / 'checkpoints' / 'step_00000002.safetensors'} (step 2/2)" in printed.err
    assert f"wrote {adapter}" in printed.err and "wrote" not in printed.out

    assert main(["train", "supervised", *flags, "--out", str(tmp_path / "bar"), "--progress"]) == 0
    printed = capsys.readouterr()
    assert "train supervised: 100%" in printed.err and "train supervised" not in printed.out
