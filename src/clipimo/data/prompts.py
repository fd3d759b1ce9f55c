"""Prompt files for users' own tasks: templates (one per line) and readable class names."""
from __future__ import annotations

import os

from ..errors import ClipimoError
from ..utils.fileio import read_text_file


def _lines(path: str | os.PathLike, what: str) -> list[tuple[int, str]]:
    text = read_text_file(path, f"{what} file")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_templates(path: str | os.PathLike) -> list[str]:
    """One prompt template per line, each with one ``{}`` for the class name (every other brace is
    literal text, see :func:`clipimo.data.templates.fill_template`); ``#`` lines are comments."""
    lines = _lines(path, "templates")
    bad = [n for n, line in lines if line.count("{}") != 1]
    if bad:
        raise ClipimoError(f"templates file {path}: line(s) {bad[:5]} need exactly one '{{}}' where the class "
                           "name goes, e.g. 'a photo of a {}.'")
    if not lines:
        raise ClipimoError(f"templates file {path} holds no templates (one per line, e.g. 'a photo of a {{}}.')")
    return [line for _, line in lines]


def read_classnames(path: str | os.PathLike) -> dict[str, str]:
    """``folder_name: readable name`` per line (split at the first ':'); ``#`` lines are comments."""
    names: dict[str, str] = {}
    for n, line in _lines(path, "class names"):
        folder, sep, readable = line.partition(":")
        if not sep or not folder.strip() or not readable.strip():
            raise ClipimoError(f"class names file {path}, line {n}: expected 'folder_name: readable name', got {line!r}")
        if folder.strip() in names:
            raise ClipimoError(f"class names file {path}, line {n}: {folder.strip()!r} is named twice")
        names[folder.strip()] = readable.strip()
    if not names:
        raise ClipimoError(f"class names file {path} holds no 'folder_name: readable name' lines")
    return names
