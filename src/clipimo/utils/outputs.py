"""Where a command may write: never over one of its own inputs, never into a folder it did not
make, never inside a data folder, and only under a name with the suffix of what it writes.

Every check compares resolved paths (and ``os.path.samefile`` where both exist), so a symlink,
a ``./`` or a hard link to an input is caught like the input's own name.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..errors import ClipimoError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file or folder (a link or a second name counts)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(Path(a).expanduser(), Path(b).expanduser())
    except OSError:  # one of them does not exist (yet)
        return False


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it."""
    path, folder = _resolved(path), _resolved(folder)
    return path == folder or folder in path.parents


def refuse_input_overwrite(outputs: Iterable[tuple[str, str | os.PathLike]],
                           inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """A ClipimoError when an output (``(flag, path)`` pairs) names one of the input files."""
    inputs = list(inputs)
    for out_flag, out in outputs:
        for in_flag, source in inputs:
            if Path(source).expanduser().is_file() and same_path(out, source):
                raise ClipimoError(f"{out_flag} {out} is also the {in_flag} input: writing it would destroy the "
                                   "input; choose another output path")


def require_suffix(path: str | os.PathLike, suffixes: Iterable[str], flag: str, what: str) -> None:
    """A ClipimoError unless ``path`` ends in one of ``suffixes`` (case-insensitive): a file is
    never written under a name that says it is something else (``features --out x.png``)."""
    suffixes = tuple(suffixes)
    if Path(path).suffix.lower() not in suffixes:
        raise ClipimoError(f"{flag} {path}: {what} is written as {' or '.join(suffixes)}; give a path ending in "
                           f"{' or '.join(suffixes)}")


def refuse_inside(out: str | os.PathLike, flag: str, folders: Mapping[str, str | os.PathLike]) -> None:
    """A ClipimoError when ``out`` lies inside one of the data ``folders`` (``{description: path}``):
    what is written there would become part of the data."""
    for what, folder in folders.items():
        if is_within(out, folder):
            raise ClipimoError(f"{flag} {out} is inside {what} {folder}: what is written there would become part "
                               "of the data; choose a folder outside it")


def refuse_foreign_files(folder: str | os.PathLike, names: Iterable[str], is_ours: Callable[[Path], bool],
                         what: str) -> None:
    """Refuse to write the files ``names`` into ``folder`` when some exist there and ``is_ours(folder)``
    does not recognise them by their own record (for commands that share a folder with other files)."""
    folder = Path(folder)
    present = [name for name in names if (folder / name).exists()]
    if present and not is_ours(folder):
        raise ClipimoError(f"{folder} already holds {', '.join(present)}, not written by {what}: writing there would "
                           "replace them; choose another --out folder")


def claim_folder(folder: str | os.PathLike, is_ours: Callable[[Path], bool], what: str,
                 ignore: Iterable[str] = ()) -> None:
    """Refuse an existing, non-empty ``folder`` unless ``is_ours(folder)`` recognises it by its own
    record (never by file names alone): a run's outputs must not replace a user's files of the same
    names. ``ignore``: names that may be there (e.g. the command's own lock file)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    skip = set(ignore)
    others = sorted(p.name for p in folder.iterdir() if p.name not in skip)
    if others and not is_ours(folder):
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise ClipimoError(f"{folder} is not {what} and already holds {shown}; writing there would replace "
                           "files clipimo did not write: choose a new or empty folder")
