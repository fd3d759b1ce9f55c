"""The progress lines a log file shows (one per unit of work, with elapsed time and ETA)."""
import pytest

from clipimo.utils import log


@pytest.mark.parametrize(("seconds", "text"), [(4.24, "4.2s"), (59.94, "59.9s"), (185, "3m05s"), (3725, "1h02m")])
def test_duration_reads_as_people_write_it(seconds, text):
    assert log.duration(seconds) == text


def test_progress_eta_uses_the_pace_of_the_units_this_process_ran(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(log.time, "perf_counter", lambda: clock[0])
    log.configure()
    steps = log.Progress("train x: step", total=100, done=40)  # resumed at step 40
    clock[0] += 30.0
    steps.update("loss 1", units=10)  # 10 steps in 30 s: 50 steps left take 150 s
    clock[0] += 30.0
    steps.update("loss 0.5", units=50)
    assert capsys.readouterr().err.splitlines() == [
        "train x: step 50/100: loss 1 (elapsed 30.0s, ETA 2m30s)",
        "train x: step 100/100: loss 0.5 (elapsed 1m00s, ETA 0s)",
    ]
