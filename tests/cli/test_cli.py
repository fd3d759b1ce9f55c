"""The command line's start-up (no heavy imports for help), its logging and its progress bars."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import clipimo
from clipimo.cli.app import COMMAND_MODULES, build_parser, main
from clipimo.features.file import feature_arrays, synthetic_features
from clipimo.methods.names import METHOD_NAMES
from clipimo.methods.registry import METHODS
from clipimo.utils.log import RANDOM_INIT_WARNING

SRC = str(Path(clipimo.__file__).parent.parent)
HEAVY = ("torch", "open_clip", "matplotlib")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def _commands() -> list[list[str]]:
    """Every command and sub-command path, e.g. ["train", "dino"]."""
    out = []

    def walk(parser, path):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if path:
            out.append(path)
        for action in subs:
            for name, child in action.choices.items():
                walk(child, path + [name])

    walk(build_parser(), [])
    return out


def test_help_of_every_command_imports_neither_torch_nor_open_clip():
    commands = _commands()
    assert ["predict"] in commands and ["train", "dino"] in commands and len(commands) >= len(COMMAND_MODULES)
    script = (
        "import sys\nfrom clipimo.cli.app import main\n"
        f"for argv in {[c + ['--help'] for c in commands] + [['--help'], ['--version']]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    proc = _python("-c", script)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    assert "usage: clipimo predict" in proc.stdout and "usage: clipimo train dino" in proc.stdout


def test_python_m_clipimo_help_with_importtime_and_version():
    proc = _python("-X", "importtime", "-m", "clipimo", "--help")
    assert proc.returncode == 0 and "usage: clipimo" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "clipimo.cli.app" in imported  # the import-time listing is what this test reads
    assert not {m for m in imported if m.split(".")[0] in ("torch", "open_clip")}
    version = _python("-m", "clipimo", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"clipimo {clipimo.__version__}"


def test_method_names_for_help_match_the_methods():
    assert tuple(METHODS) == METHOD_NAMES


def _features_file(tmp_path, random_init=True):
    arrays = feature_arrays(synthetic_features(num_classes=4, shots=2, n_val=12, n_test=12, dim=16))
    meta = {"random_init": random_init, "backbone": {"model": "m", "weights": "w", "random_init": random_init}}
    path = tmp_path / "f.npz"
    np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
    return path


def test_markdown_stdout_carries_only_the_table(tmp_path, capsys):
    path = _features_file(tmp_path)
    assert main(["evaluate", "--features", str(path), "--methods", "zs,tip", "--markdown"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("| method |") and len(lines) == 4 and all(line.startswith("|") for line in lines)
    assert printed.err.count(RANDOM_INIT_WARNING) == 1 and printed.err.startswith("WARNING: RANDOM-INIT")
    assert "methods" not in printed.err  # not a terminal: no progress bar


def test_progress_flag_forces_bars_and_quiet_hides_messages(tmp_path, capsys):
    path = _features_file(tmp_path)
    clf = tmp_path / "clf.safetensors"
    assert main(["evaluate", "--features", str(path), "--methods", "zs", "--progress", "--save-classifier", str(clf)]) == 0
    err = capsys.readouterr().err
    assert "methods: 100%" in err and f"wrote {clf}" in err
    assert main(["-q", "evaluate", "--features", str(path), "--methods", "zs", "--save-classifier", str(clf)]) == 0
    err = capsys.readouterr().err
    assert f"wrote {clf}" not in err and RANDOM_INIT_WARNING in err  # -q keeps warnings only
