"""Users' own few-shot tasks: train/val/test as ImageFolder trees or CSV lists, one class list."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ClipimoError
from .benchmarks import SPLITS, DatasetSplits, load_dataset
from .generic import read_csv_list, read_image_folder, refuse_numeric_aliases
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

    train and test are required, val is optional. Class names are the train classes, sorted
    (numerically when all are integers); val/test may lack some of them but not add new ones.
    ``classnames`` maps folder names to the readable names the prompts use (labels keep the
    folder order); ``templates`` default to "a photo of a {}.".
    """
    root = Path(root).resolve()
    parts: dict[str, tuple[list[LabelledImage], list[str]]] = {}
    sources: dict[str, Path] = {}
    for split in SPLITS:
        folder, csv_path = root / split, root / f"{split}.csv"
        if folder.is_dir() and csv_path.is_file():
            raise ClipimoError(f"{root}: the {split} split is given twice, as the folder {folder} and as the CSV "
                               f"{csv_path}; keep one of them")
        if folder.is_dir():
            parts[split], sources[split] = read_image_folder(folder), folder
        elif csv_path.is_file():
            parts[split], sources[split] = read_csv_list(csv_path, allow_gaps=True), csv_path
        elif split != "val":
            raise ClipimoError(f"{root}: no {split}/ folder (<class>/<images>) or {split}.csv "
                               "(path,label) found")
    folders = _label_space(parts, sources)
    label_of = {cname: label for label, cname in enumerate(folders)}
    splits = {split: [LabelledImage(item.path, label_of[names[item.label]]) for item in items]
              for split, (items, names) in parts.items()}
    if classnames:
        unknown = sorted(set(classnames) - set(folders))
        if unknown:
            raise ClipimoError(f"{root}: the class names list names folder(s) {unknown[:5]} that no split has; "
                               f"classes: {folders[:10]}")
    return DatasetSplits(
        name=name or root.name, root=str(root), classnames=[(classnames or {}).get(c, c) for c in folders],
        templates=list(templates or DEFAULT_TEMPLATES),
        train=splits["train"], val=splits.get("val", []), test=splits["test"],
    )


def _label_space(parts: dict[str, tuple[list[LabelledImage], list[str]]], sources: dict[str, Path]) -> list[str]:
    """The task's class names, refusing label spaces that cannot mean what the user intended:
    integer labels in one split and names in another, integer labels with gaps (empty classes),
    and val/test classes without train images."""
    numeric = {split: all(c.isdigit() for c in names) for split, (_, names) in parts.items()}
    if len(set(numeric.values())) > 1:
        kinds = "; ".join(f"{sources[s]}: {'integers' if numeric[s] else 'class names, e.g. ' + repr(parts[s][1][0])}"
                          for s in parts)
        raise ClipimoError(f"labels mix integers and class names across splits ({kinds}); use one kind in every split")
    union = {cname for _, names in parts.values() for cname in names}
    if all(numeric.values()):
        refuse_numeric_aliases(sorted(union), str(sources["train"].parent))  # "1" in train, "01" in test
        union = {str(int(c)) for c in union}
        gaps = sorted(set(range(max(map(int, union)) + 1)) - set(map(int, union)))
        if gaps:
            raise ClipimoError(f"{sources['train'].parent}: integer labels have no images for {', '.join(map(str, gaps[:10]))}"
                               f"{' ...' if len(gaps) > 10 else ''} in any split (empty classes); number the "
                               "classes 0..N-1 without gaps or use class names")
        canon = {split: [str(int(c)) for c in names] for split, (_, names) in parts.items()}
        for split, (items, _) in list(parts.items()):
            parts[split] = (items, canon[split])
    in_train = set(parts["train"][1])
    for split in ("val", "test"):
        if split in parts:
            absent = sorted(set(parts[split][1]) - in_train)
            if absent:
                raise ClipimoError(
                    f"{sources[split]}: class(es) {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''} "
                    f"have no train images in {sources['train']}, so no method can predict them; add train "
                    f"images for them or drop them from {split}")
    return sorted(union, key=lambda c: (int(c), c) if all(numeric.values()) else (0, c))


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
