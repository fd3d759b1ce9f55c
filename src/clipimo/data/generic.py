"""User-supplied labelled image sets: ImageFolder-style trees and ``path,label`` CSV lists."""
from __future__ import annotations

import csv
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


def read_csv_list(path: str | os.PathLike,
                  verify_files: bool = True) -> tuple[list[LabelledImage], list[str]]:
    """A CSV with header ``path,label``; relative paths are resolved against the CSV's folder.

    Labels are either all integers (class names are then "0".."max") or class-name strings
    (classes sorted by name, labels index that order).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ClipimoError(f"{path}: CSV list not found (expected header 'path,label')")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise ClipimoError(f"{path}: expected a header with columns 'path,label', "
                               f"got {reader.fieldnames}")
        rows = [(row["path"], (row["label"] or "").strip()) for row in reader]
    if not rows:
        raise ClipimoError(f"{path}: no rows below the 'path,label' header")
    empty = [i for i, (file, label) in enumerate(rows, start=2) if not file or not label]
    if empty:
        raise ClipimoError(f"{path}: empty path or label on line(s) {empty[:5]}")

    if all(label.isdigit() for _, label in rows):
        labels = [int(label) for _, label in rows]
        classnames = [str(i) for i in range(max(labels) + 1)]
    else:
        classnames = sorted({label for _, label in rows})
        label_of = {name: i for i, name in enumerate(classnames)}
        labels = [label_of[label] for _, label in rows]
    items = [LabelledImage(os.path.abspath(os.path.join(path.parent, file)), label)
             for (file, _), label in zip(rows, labels)]
    if verify_files:
        missing = [item.path for item in items if not os.path.isfile(item.path)]
        if missing:
            raise ClipimoError(f"{path}: {len(missing)} listed image(s) do not exist, "
                               f"e.g. {missing[:3]}")
    return items, classnames
