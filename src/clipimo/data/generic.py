"""User-supplied labelled image sets: ImageFolder-style trees and ``path,label`` CSV lists."""
from __future__ import annotations

import csv
import functools
import io
import os
from collections import Counter
from pathlib import Path

from ..errors import ClipimoError
from ..utils.fileio import read_text_file
from ..utils.log import logger
from .items import LabelledImage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file extension of a format PIL can decode here (placeholders for formats it cannot read,
    such as HDF5 or GRIB stubs, left out), with the common ones even if a plugin is missing."""
    from PIL import Image, ImageFile

    Image.init()
    readable = {fmt for fmt, (factory, _) in Image.OPEN.items()
                if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    readable -= {"MPEG", "EPS"}  # MPEG is identified, never decoded; EPS needs Ghostscript
    return IMAGE_EXTENSIONS | {ext for ext, fmt in Image.registered_extensions().items() if fmt in readable}


def is_image_file(name: str) -> bool:
    """True for non-hidden files with an extension of a format PIL decodes (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_extensions()


def utf8_path(path: str) -> str:
    """``path`` when it is UTF-8 text; a file name that is not (read back by Python as surrogate
    escapes) is a ClipimoError naming it, since paths are recorded as UTF-8 text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ClipimoError(f"file name {os.fsencode(path)!r} is not UTF-8 text; rename it "
                           "(clipimo records every path as UTF-8)") from None
    return path


def image_files(folder: str | os.PathLike) -> tuple[list[str], Counter]:
    """The image files below ``folder`` (a class folder), sorted, and a count of the other files by extension.
    Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are ignored at any depth."""
    paths, others = [], Counter()
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if is_image_file(name):
                paths.append(utf8_path(os.path.join(parent, name)))
            else:
                others[os.path.splitext(name)[1].lower() or "(no extension)"] += 1
    return sorted(paths), others


def read_image_folder(root: str | os.PathLike) -> tuple[list[LabelledImage], list[str]]:
    """``root/<class>/**/<image>``: classes are the sorted sub-folder names; images sorted by path.
    Files PIL cannot decode are skipped with one warning that counts them by extension."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ClipimoError(f"{root}: not a folder (expected <root>/<class name>/<image files>)")
    classnames = sorted(utf8_path(entry.name) for entry in os.scandir(root)
                        if entry.is_dir() and not entry.name.startswith("."))
    refuse_numeric_aliases(classnames, str(root))
    items: list[LabelledImage] = []
    skipped: Counter = Counter()
    for label, classname in enumerate(classnames):
        paths, others = image_files(root / classname)
        skipped += others
        if not paths:
            raise ClipimoError(f"{root / classname}: class folder holds no image files")
        items.extend(LabelledImage(path, label) for path in paths)
    if not classnames:
        raise ClipimoError(f"{root}: no class sub-folders (expected <root>/<class name>/<images>)")
    if skipped:
        kinds = ", ".join(f"{ext}: {n}" for ext, n in sorted(skipped.items()))
        logger.warning(f"{root}: skipped {sum(skipped.values())} file(s) that are not images PIL can read ({kinds})")
    return items, classnames


def refuse_numeric_aliases(names: list[str], where: str) -> None:
    """Integer class names are read as class numbers, so ``1`` and ``01`` would be one class: an error
    naming both."""
    seen: dict[int, str] = {}
    for name in names:
        if name.isdigit():
            other = seen.setdefault(int(name), name)
            if other != name:
                raise ClipimoError(f"{where}: classes {other!r} and {name!r} are both class number {int(name)}; "
                                   "rename one (integer class names are read as class numbers)")


def read_csv_list(path: str | os.PathLike, verify_files: bool = True,
                  allow_gaps: bool = False) -> tuple[list[LabelledImage], list[str]]:
    """A CSV with header ``path,label`` (UTF-8, a byte-order mark is fine); relative paths are
    resolved against the CSV's folder.

    Labels are either all integers 0..N-1 (class names are then "0".."N-1"; a gap would be an
    empty class and is an error unless ``allow_gaps``, when the names are the integers present) or
    class-name strings (classes sorted by name, labels index that order). A file listed twice is
    an error that lists the lines.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ClipimoError(f"{path}: CSV list not found (expected header 'path,label')")
    text = read_text_file(path, "CSV list")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
        raise ClipimoError(f"{path}: expected a header with columns 'path,label', "
                           f"got {reader.fieldnames}")
    rows = [(reader.line_num, row["path"] or "", (row["label"] or "").strip()) for row in reader]
    if not rows:
        raise ClipimoError(f"{path}: no rows below the 'path,label' header")
    empty = [line for line, file, label in rows if not file or not label]
    if empty:
        raise ClipimoError(f"{path}: empty path or label on line(s) {empty[:5]}")
    _check_repeats(path, rows)

    numeric = all(label.isdigit() for _, _, label in rows)
    if numeric:
        refuse_numeric_aliases(sorted({label for _, _, label in rows}), str(path))
        present = sorted({int(label) for _, _, label in rows})
        gaps = sorted(set(range(present[-1] + 1)) - set(present))
        if gaps and not allow_gaps:
            raise ClipimoError(
                f"{path}: integer labels 0..{present[-1]} have no rows for {_listed(gaps)}, which would be "
                "empty classes; number the classes 0..N-1 without gaps or use class names")
        names = present if allow_gaps else range(present[-1] + 1)
        classnames = [str(i) for i in names]
    else:
        classnames = sorted({label for _, _, label in rows})
    label_of = {name: i for i, name in enumerate(classnames)}
    items = [LabelledImage(os.path.abspath(os.path.join(path.parent, file)),
                           label_of[str(int(label)) if numeric else label])
             for _, file, label in rows]
    if verify_files:
        missing = [item.path for item in items if not os.path.isfile(item.path)]
        if missing:
            raise ClipimoError(f"{path}: {len(missing)} listed image(s) do not exist, "
                               f"e.g. {missing[:3]}")
    return items, classnames


def _listed(values: list, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _check_repeats(path: Path, rows: list[tuple[int, str, str]]) -> None:
    """A file listed twice: the same row (it would count twice) or two labels (which one is true?)."""
    seen: dict[str, list[tuple[int, str]]] = {}
    for line, file, label in rows:
        seen.setdefault(os.path.abspath(os.path.join(path.parent, file)), []).append((line, label))
    repeats = {f: hits for f, hits in seen.items() if len(hits) > 1}
    if not repeats:
        return
    clashes = [f"{f} (lines {', '.join(str(n) for n, _ in hits)}: labels {', '.join(sorted({l for _, l in hits}))})"
               for f, hits in repeats.items() if len({l for _, l in hits}) > 1]
    dupes = [f"{f} (lines {', '.join(str(n) for n, _ in hits)})"
             for f, hits in repeats.items() if len({l for _, l in hits}) == 1]
    parts = []
    if clashes:
        parts.append(f"{len(clashes)} path(s) listed with two labels:\n  " + "\n  ".join(clashes[:20]))
    if dupes:
        parts.append(f"{len(dupes)} duplicate row(s):\n  " + "\n  ".join(dupes[:20]))
    raise ClipimoError(f"{path}: " + "\n".join(parts) + "\nlist each image once")
