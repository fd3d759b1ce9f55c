"""User-supplied labelled image sets: ImageFolder-style trees and ``path,label`` CSV lists."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import ClipimoError
from .items import LabelledImage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(name: str) -> bool:
    """True for non-hidden files with a common image extension (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image_folder(root: str | os.PathLike) -> tuple[list[LabelledImage], list[str]]:
    """``root/<class>/**/<image>``: classes are the sorted sub-folder names; images sorted by path."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ClipimoError(f"{root}: not a folder (expected <root>/<class name>/<image files>)")
    classnames = sorted(entry.name for entry in os.scandir(root)
                        if entry.is_dir() and not entry.name.startswith("."))
    items: list[LabelledImage] = []
    for label, classname in enumerate(classnames):
        paths = sorted(
            os.path.join(folder, name)
            for folder, dirs, files in os.walk(root / classname)
            for name in files if is_image_file(name)
        )
        if not paths:
            raise ClipimoError(f"{root / classname}: class folder holds no image files")
        items.extend(LabelledImage(path, label) for path in paths)
    if not classnames:
        raise ClipimoError(f"{root}: no class sub-folders (expected <root>/<class name>/<images>)")
    return items, classnames


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
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ClipimoError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); "
                           "save the CSV as UTF-8") from None
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
