"""Users' own few-shot tasks: train/val/test as ImageFolder trees or CSV lists, one class list."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ClipimoError
from .benchmarks import SPLITS, DatasetSplits, load_dataset
from .generic import read_csv_list, read_image_folder
from .items import LabelledImage
from .registry import get_spec
from .templates import DEFAULT_TEMPLATES


def is_task_folder(path: str | os.PathLike) -> bool:
    """A folder with ``train`` and ``test`` splits (sub-folders or CSV lists): a custom few-shot task."""
    path = Path(path)
    return all((path / split).is_dir() or (path / f"{split}.csv").is_file() for split in ("train", "test"))


def load_custom_dataset(root: str | os.PathLike, name: str | None = None,
                        templates: Sequence[str] | None = None,
                        classnames: Mapping[str, str] | None = None) -> DatasetSplits:
    """``root/{train,val,test}/<class>/<image>`` or ``root/{train,val,test}.csv``.

    train and test are required, val is optional. Class names are the union over the splits,
    sorted (numerically when all are integers), so a class missing from one split keeps its label.
    ``classnames`` maps folder names to the readable names the prompts use (labels keep the
    folder order); ``templates`` default to "a photo of a {}.".
    """
    root = Path(root).resolve()
    parts: dict[str, tuple[list[LabelledImage], list[str]]] = {}
    for split in SPLITS:
        folder, csv_path = root / split, root / f"{split}.csv"
        if folder.is_dir():
            parts[split] = read_image_folder(folder)
        elif csv_path.is_file():
            parts[split] = read_csv_list(csv_path)
        elif split != "val":
            raise ClipimoError(f"{root}: no {split}/ folder (<class>/<images>) or {split}.csv "
                               "(path,label) found")
    union = {cname for _, names in parts.values() for cname in names}
    numeric = all(cname.isdigit() for cname in union)
    folders = sorted(union, key=lambda c: (int(c), c) if numeric else (0, c))
    label_of = {cname: label for label, cname in enumerate(folders)}
    splits = {split: [LabelledImage(item.path, label_of[names[item.label]]) for item in items]
              for split, (items, names) in parts.items()}
    if classnames:
        unknown = sorted(set(classnames) - union)
        if unknown:
            raise ClipimoError(f"{root}: the class names list names folder(s) {unknown[:5]} that no split has; "
                               f"classes: {folders[:10]}")
    return DatasetSplits(
        name=name or root.name, root=str(root), classnames=[(classnames or {}).get(c, c) for c in folders],
        templates=list(templates or DEFAULT_TEMPLATES),
        train=splits["train"], val=splits.get("val", []), test=splits["test"],
    )


def open_dataset(name: str, root: str | os.PathLike = ".", templates: Sequence[str] | None = None,
                 classnames: Mapping[str, str] | None = None) -> DatasetSplits:
    """A benchmark by name (under ``root``), or a custom task folder given by its path; custom
    tasks take their own ``templates`` and readable ``classnames`` (see :func:`load_custom_dataset`)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return load_custom_dataset(path, templates=templates, classnames=classnames)
    get_spec(name)  # a clear error for an unknown name
    if templates or classnames:
        raise ClipimoError(f"{name}: --templates and --classnames apply to custom task folders; a benchmark "
                           "keeps the protocol's prompts")
    return load_dataset(name, root)
