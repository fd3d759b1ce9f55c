"""`train dino` with fewer epochs than its warm-ups says what the run will never reach."""
import pytest

from clipimo.cli.app import main
from clipimo.train import make_config
from clipimo.train.dino import teacher_temp_schedule
from clipimo.utils import log


def test_dino_shorter_than_its_warmups_warns(capsys):
    log.configure()
    make_config("dino", epochs=1)  # defaults: lr warm-up 2 epochs, teacher temperature 0.04 -> 0.07 over 3
    err = capsys.readouterr().err
    assert ("--epochs 1 is shorter than the learning-rate warm-up (--warmup-epochs 2): the learning rate rises "
            "for the whole run and ends at about 50% of its peak") in err
    assert ("--epochs 1 is shorter than the teacher-temperature warm-up (--warmup-teacher-temp-epochs 3): the "
            "teacher temperature ends at 0.04, not --teacher-temp 0.07") in err
    make_config("dino", epochs=2, warmup_teacher_temp_epochs=5, warmup_epochs=1)
    err = capsys.readouterr().err
    assert "learning-rate warm-up" not in err
    assert "ends at 0.0475, not --teacher-temp 0.07" in err  # 0.04 + 0.03 * 1/4
    assert float(teacher_temp_schedule(0.04, 0.07, 5, 2)[-1]) == pytest.approx(0.0475)


@pytest.mark.parametrize("method,argv", [("dino", ["--epochs", "3"]), ("supervised", ["--epochs", "1"])])
def test_runs_as_long_as_their_warmups_say_nothing(method, argv, capsys):
    log.configure()
    assert main(["train", method, "--data", "x.csv", "--out", "o", *argv, "--print-config"]) == 0
    assert "warm-up" not in capsys.readouterr().err


def test_the_warning_reaches_the_command_line(capsys):
    assert main(["train", "dino", "--data", "x.csv", "--out", "o", "--epochs", "1", "--print-config"]) == 0
    printed = capsys.readouterr()
    assert "shorter than the learning-rate warm-up" in printed.err and "warm-up" not in printed.out
