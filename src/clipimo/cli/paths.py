"""One check of every command's output paths before it runs (see :mod:`clipimo.utils.outputs`):
each output (an option typed :class:`~clipimo.cli.config.OutPath`) has its format's suffix, names
none of the command's input files and lies in no data folder: a task or image folder it reads, or
a benchmark's folder under its ``--root``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.registry import DATASETS
from ..utils.outputs import refuse_input_overwrite, refuse_inside, require_suffix
from .config import OutPath, _name, path_arg, settings_actions, source_arg

# Options whose folders are data: a task folder's splits, or an image tree read class by class.
DATA_SOURCES = ("dataset", "task", "images", "data", "imagepca_images")
_SPLITS = ("train", "val", "test")


def _values(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in values if v not in (None, "", "-") and not str(v).startswith("hf-hub:")]


def _data_folders(flag: str, value: str) -> dict[str, Path]:
    """The folders of a data source whose files are read as data: a task folder's split folders,
    or an image folder itself."""
    path = Path(value).expanduser()
    if not path.is_dir():
        return {}
    splits = {f"the {s} split of {flag}": path / s for s in _SPLITS if (path / s).is_dir()}
    return splits or {f"the data folder {flag}": path}


def _benchmark_folders(root: str | None) -> dict[str, Path]:
    """Every benchmark folder present under the data root: some benchmarks list their images by
    walking their folders, and results written into any of them would mix with the data."""
    folder = Path(root).expanduser() if root else None
    if folder is None or not folder.is_dir():
        return {}
    found = ((name, spec.find_dir(folder)) for name, spec in DATASETS.items())
    return {f"the {name} folder under --root": folder for name, folder in found if folder is not None}


def check_paths(args: argparse.Namespace) -> None:
    """A ClipimoError (one line) for an output that would destroy an input, sit inside a data folder,
    or carry the wrong suffix."""
    outputs: list[tuple[str, str]] = []
    inputs: list[tuple[str, str]] = [("--config", args.config)] if getattr(args, "config", None) else []
    data: dict[str, Path] = _benchmark_folders(getattr(args, "root", None))
    for action in settings_actions(args.command_parser):
        kind = getattr(action, "item", None) or action.type
        flag = _name(action)
        for value in _values(getattr(args, action.dest, None)):
            if isinstance(kind, OutPath):
                if kind.suffixes:
                    require_suffix(value, kind.suffixes, flag, kind.what)
                outputs.append((flag, value))
            elif kind in (path_arg, source_arg):
                inputs.append((flag, value))
                if action.dest in DATA_SOURCES:
                    data.update(_data_folders(flag, value))
    for flag, out in outputs:
        refuse_input_overwrite([(flag, out)], inputs)
        refuse_inside(out, flag, {what: str(folder) for what, folder in data.items()})
